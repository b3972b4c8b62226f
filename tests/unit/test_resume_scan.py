"""Resume scan decisions: which folder ``find_resume_checkpoint`` returns and what it does with the others.

The rule under test: a folder is resumed from only if it is committed and matches its manifest (or, opted in
with ``allow_unverified``, passes structural checks); every newer folder that fails is set aside with its reason.
"""

from __future__ import annotations

import json

import pytest
from transformers.trainer_utils import get_last_checkpoint

from aegis_ckpt.errors import ConfigError
from aegis_ckpt.resume import find_resume_checkpoint, scan_checkpoints
from aegis_ckpt.storage.layout import JIT_INCOMPLETE_MARKER, MANIFEST_NAME
from aegis_ckpt.storage.store import CheckpointStore


def _statuses(report) -> dict[int, str]:
    return {c.step: c.status for c in report.candidates}


def test_nothing_to_resume_from(tmp_path):
    assert find_resume_checkpoint(tmp_path / "does-not-exist") is None
    assert find_resume_checkpoint(tmp_path) is None


def test_newest_committed_is_chosen_and_older_ones_are_not_examined(tmp_path, committed_checkpoint):
    for step in (10, 20, 30):
        committed_checkpoint(tmp_path, step)
    (
        tmp_path / "checkpoint-10" / "optimizer.pt"
    ).unlink()  # damage in an older folder is not our business now
    report = scan_checkpoints(tmp_path)
    assert report.chosen == str(tmp_path / "checkpoint-30")
    assert _statuses(report) == {30: "chosen", 20: "older", 10: "older"}
    assert (tmp_path / "checkpoint-10").exists()


def test_managed_dir_interrupted_save_is_quarantined(tmp_path, committed_checkpoint, plain_checkpoint):
    committed_checkpoint(tmp_path, 10)
    plain_checkpoint(tmp_path, 20)  # no manifest: a save that never committed
    assert find_resume_checkpoint(tmp_path) == str(tmp_path / "checkpoint-10")
    assert not (tmp_path / "checkpoint-20").exists()
    assert get_last_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-10")
    [record] = CheckpointStore(tmp_path).quarantined()
    assert record["reason"].startswith("uncommitted")


def test_unmanaged_dir_leaves_plain_trainer_checkpoints_alone(tmp_path, plain_checkpoint):
    plain_checkpoint(tmp_path, 10)
    plain_checkpoint(tmp_path, 20)
    report = scan_checkpoints(tmp_path)
    assert report.chosen is None
    assert _statuses(report) == {20: "ignored", 10: "ignored"}
    assert (tmp_path / "checkpoint-20").exists() and (tmp_path / "checkpoint-10").exists()
    assert find_resume_checkpoint(tmp_path) is None


def test_unmanaged_dir_with_allow_unverified_uses_structural_checks(tmp_path, plain_checkpoint):
    plain_checkpoint(tmp_path, 10)
    broken = plain_checkpoint(tmp_path, 20)
    (broken / "scheduler.pt").unlink()
    chosen = find_resume_checkpoint(tmp_path, allow_unverified=True)
    assert chosen == str(tmp_path / "checkpoint-10")
    [record] = CheckpointStore(tmp_path).quarantined()
    assert "missing scheduler.pt" in record["reason"]


def test_jit_incomplete_marker_is_never_resumed_from(tmp_path, committed_checkpoint, plain_checkpoint):
    committed_checkpoint(tmp_path, 10)
    jit = plain_checkpoint(tmp_path, 20)
    (jit / JIT_INCOMPLETE_MARKER).write_text("incomplete")
    assert find_resume_checkpoint(tmp_path, allow_unverified=True) == str(tmp_path / "checkpoint-10")
    [record] = CheckpointStore(tmp_path).quarantined()
    assert "JIT" in record["reason"]


def test_jit_marker_is_quarantined_in_an_unmanaged_dir_too(tmp_path, plain_checkpoint):
    plain_checkpoint(tmp_path, 10)
    (plain_checkpoint(tmp_path, 20) / JIT_INCOMPLETE_MARKER).write_text("incomplete")
    assert find_resume_checkpoint(tmp_path) is None
    assert not (tmp_path / "checkpoint-20").exists()
    assert (tmp_path / "checkpoint-10").exists(), "a plain checkpoint without opt-in is ignored, not moved"


@pytest.mark.parametrize("verify", ["full", "quick"])
def test_damaged_committed_checkpoint_is_quarantined_with_reason(tmp_path, committed_checkpoint, verify):
    committed_checkpoint(tmp_path, 10)
    newest = committed_checkpoint(tmp_path, 20)
    (newest / "optimizer.pt").unlink()
    assert find_resume_checkpoint(tmp_path, verify) == str(tmp_path / "checkpoint-10")
    [record] = CheckpointStore(tmp_path).quarantined()
    assert record["reason"].startswith("damaged") and "missing file optimizer.pt" in record["reason"]


def test_manifest_of_another_step_is_rejected(tmp_path, committed_checkpoint):
    committed_checkpoint(tmp_path, 10)
    folder = committed_checkpoint(tmp_path, 20)
    folder.rename(tmp_path / "checkpoint-30")  # e.g. a folder copied or renamed by hand
    assert find_resume_checkpoint(tmp_path) == str(tmp_path / "checkpoint-10")
    [record] = CheckpointStore(tmp_path).quarantined()
    assert "manifest is for step 20" in record["reason"]


def test_scan_without_quarantine_only_reports(tmp_path, committed_checkpoint, plain_checkpoint):
    committed_checkpoint(tmp_path, 10)
    plain_checkpoint(tmp_path, 20)
    report = scan_checkpoints(tmp_path, quarantine=False)
    assert report.chosen == str(tmp_path / "checkpoint-10")
    assert _statuses(report)[20] == "rejected"
    assert (tmp_path / "checkpoint-20").exists()


def test_unreadable_manifest_counts_as_damaged(tmp_path, committed_checkpoint):
    committed_checkpoint(tmp_path, 10)
    newest = committed_checkpoint(tmp_path, 20)
    body = json.loads((newest / MANIFEST_NAME).read_text())
    body["step"] = 21
    (newest / MANIFEST_NAME).write_text(json.dumps(body))
    assert find_resume_checkpoint(tmp_path) == str(tmp_path / "checkpoint-10")


def test_invalid_verify_mode_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="verify must be one of"):
        find_resume_checkpoint(tmp_path, verify="sometimes")
