"""Full-disk behaviour of the pieces under a save, on a real 3 MiB tmpfs: free-space checks, the audit log's
append (never leaves a torn line of its own; the reader tolerates one torn by others), the background writer's
files (a full disk raises ``OSError`` and never aborts the process inside torch's zip writer), and the bound on
quarantine."""

from __future__ import annotations

import errno
import json
import os
import shutil

import pytest
import torch
from smallfs import fill, small_fs

from aegis_ckpt.errors import DiskFullError
from aegis_ckpt.storage import space
from aegis_ckpt.storage.audit import AuditLog, read_audit
from aegis_ckpt.storage.directwrite import AlignedBuffer, torch_save_file, write_torch
from aegis_ckpt.storage.quarantine import QUARANTINE_KEEP
from aegis_ckpt.storage.store import CheckpointStore


@pytest.fixture(scope="module")
def fs3(tmp_path_factory):
    with small_fs(tmp_path_factory.mktemp("fs") / "fs3", 3) as where:
        yield where


@pytest.fixture
def full(fs3):
    """The 3 MiB file system with only ~4 KiB left; the ballast is removed afterwards."""
    fill(fs3, 4096)
    yield fs3
    for p in fs3.iterdir():
        shutil.rmtree(p) if p.is_dir() else p.unlink()


def test_shortfall_names_free_and_needed_space(fs3):
    assert space.shortfall(fs3 / "not-yet" / "there", 100_000) is None  # the nearest existing parent counts
    problem = space.shortfall(fs3, 10 * 2**20)
    assert "free on" in problem and "needs ~10.4 MiB" in problem and "lower max_keep" in problem
    with pytest.raises(DiskFullError, match="step 7 does not fit"):
        space.ensure_space(fs3, 10 * 2**20, what="the checkpoint of step 7")


def test_disk_full_is_recognised_through_wrappers(fs3):
    inner = OSError(errno.ENOSPC, "No space left on device")
    try:
        try:
            raise inner
        except OSError as e:
            raise RuntimeError("writer failed") from e
    except RuntimeError as outer:
        assert space.is_disk_full(outer)
    assert space.is_disk_full(
        RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)")
    )
    assert not space.is_disk_full(RuntimeError("shape mismatch"), fs3)  # 3 MiB free: not a full disk


def test_audit_append_on_a_full_disk_leaves_no_torn_line(full):
    log = AuditLog.in_dir(full / ".aegis")
    log.append("start", step=0)
    fill(full, 0)
    log.append("commit", step=5, reason="interval", sha256={f"file-{i}.bin": "ab" * 32 for i in range(200)})
    (full / "ballast").unlink()
    log.append("resume", step=5)
    text = (full / ".aegis" / "audit.jsonl").read_text()
    result = read_audit(full / ".aegis" / "audit.jsonl")
    assert [e["event"] for e in result.events] == ["start", "resume"] and not result.problems, text


def test_audit_reader_tolerates_a_line_torn_by_a_full_disk(full):
    """Another writer (an older version, a killed process) left half a line when the disk filled."""
    path = full / ".aegis" / "audit.jsonl"
    AuditLog(path).append("start", step=0)
    with open(path, "ab") as f:
        f.write(b'{"event":"commit","step":3,"sha')
    result = read_audit(path)
    assert [e["event"] for e in result.events] == ["start"]
    assert result.problems == ["line 2: torn last line (crash during append)"]
    AuditLog(path).append("resume", step=0)  # repaired: the next event starts on a line of its own
    assert [e["event"] for e in read_audit(path).events] == ["start", "resume"]


def test_background_writer_files_raise_oserror_on_a_full_disk(full):
    """torch's zip writer never sees the failed write (it could abort the process when destroyed after one):
    ``write_torch`` raises the ``OSError`` once torch is done, ``torch_save_file`` before torch is involved."""
    state = {"state": {i: {"exp_avg": torch.zeros(40_000)} for i in range(4)}, "param_groups": []}
    with pytest.raises(OSError) as caught:
        write_torch(full / "optimizer.pt", state, AlignedBuffer())
    assert caught.value.errno == errno.ENOSPC
    with pytest.raises(OSError):
        torch_save_file(state, full / "scheduler.pt")
    assert not (full / "scheduler.pt").exists()
    (full / "optimizer.pt").unlink()
    assert len(json.dumps({"alive": True}))  # still here: no SIGABRT


def test_quarantine_keeps_only_the_newest_folders(tmp_path):
    store = CheckpointStore(tmp_path)
    for step in range(1, QUARANTINE_KEEP + 3):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(os.urandom(1000))
        store.quarantine(folder, f"damaged {step}")
    kept = [r["reason"] for r in store.quarantined()]
    assert kept == [f"damaged {step}" for step in range(3, QUARANTINE_KEEP + 3)]
    assert not list((tmp_path / ".aegis" / "trash").iterdir())
