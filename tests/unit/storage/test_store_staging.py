"""Store additions for writers outside the Trainer: staging, publish, recovery after a crash, pinned checkpoints,
and the audit events of prune and quarantine."""

from __future__ import annotations

import pytest

from aegis_ckpt.errors import CommitError
from aegis_ckpt.storage.audit import read_audit
from aegis_ckpt.storage.commit import commit_checkpoint, is_committed, read_manifest
from aegis_ckpt.storage.store import CheckpointStore


def staged_save(store: CheckpointStore, step: int, *, content: bytes = b"weights", commit=True, pinned=False):
    folder = store.fresh_staging(step)
    (folder / "model.safetensors").write_bytes(content)
    if commit:
        commit_checkpoint(folder, step=step, reason="test", meta={"pinned": pinned})
    return folder


def events(store: CheckpointStore) -> list[str]:
    return [e["event"] for e in read_audit(store.audit.path).events]


def test_staging_is_invisible_until_published(tmp_path):
    store = CheckpointStore(tmp_path)
    folder = staged_save(store, 10, commit=False)
    assert not folder.name.startswith("checkpoint-")
    assert store.checkpoints() == []
    with pytest.raises(CommitError, match="not committed"):
        store.publish(folder, 10)
    commit_checkpoint(folder, step=10)
    final = store.publish(folder, 10)
    assert final == tmp_path / "checkpoint-10" and is_committed(final) and not folder.exists()
    assert [e.step for e in store.committed()] == [10]


def test_publishing_the_same_step_again_replaces_the_committed_folder(tmp_path):
    store = CheckpointStore(tmp_path)
    store.publish(staged_save(store, 5, content=b"first"), 5)
    store.publish(staged_save(store, 5, content=b"second", pinned=True), 5)
    assert (tmp_path / "checkpoint-5" / "model.safetensors").read_bytes() == b"second"
    assert read_manifest(tmp_path / "checkpoint-5").meta["pinned"] is True


def test_recovery_publishes_committed_staging_and_removes_the_rest(tmp_path):
    store = CheckpointStore(tmp_path)
    store.publish(staged_save(store, 1), 1)
    staged_save(store, 2)  # committed, then the process died before the rename
    staged_save(store, 3, commit=False)  # died while writing
    dup = staged_save(store, 1)  # died between commit and replacing checkpoint-1: the old one stays
    recovered = store.recover_staging()
    assert recovered == [tmp_path / "checkpoint-2"]
    assert [e.step for e in store.committed()] == [1, 2]
    assert not dup.exists() and list(store.staging_dir.iterdir()) == []
    assert events(store) == ["save_failed", "save_failed"]


def test_recovery_rejects_a_committed_staging_folder_whose_files_changed(tmp_path):
    store = CheckpointStore(tmp_path)
    folder = staged_save(store, 4)
    (folder / "model.safetensors").write_bytes(b"weightz")  # same size, other bytes
    assert store.recover_staging() == []
    assert store.checkpoints() == []


def test_pinned_checkpoints_stay_outside_the_rolling_window(tmp_path):
    store = CheckpointStore(tmp_path)
    for step in range(1, 7):
        store.publish(staged_save(store, step, pinned=step == 2), step)
    removed = store.prune(2)
    assert sorted(p.name for p in removed) == ["checkpoint-1", "checkpoint-3", "checkpoint-4"]
    assert [e.step for e in store.committed()] == [2, 5, 6]
    assert events(store) == ["prune"] * 3


def test_quarantine_is_audited(tmp_path):
    store = CheckpointStore(tmp_path)
    (tmp_path / "checkpoint-7").mkdir()
    store.quarantine(tmp_path / "checkpoint-7", "uncommitted: test")
    (event,) = read_audit(store.audit.path).events
    assert event["event"] == "quarantine" and event["step"] == 7 and event["reason"] == "uncommitted: test"
