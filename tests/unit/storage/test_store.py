"""CheckpointStore: listing, quarantine (guarantee: nothing is deleted unreported) and retention
(guarantee 5: keep the newest ``max_keep`` committed, never an uncommitted or protected one)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from transformers.trainer_utils import get_last_checkpoint

from aegis_ckpt.storage.commit import Manifest, atomic_write_json, read_manifest
from aegis_ckpt.storage.layout import MANIFEST_NAME, QUARANTINE_RECORD
from aegis_ckpt.storage.store import CheckpointStore


def _top_level_checkpoints(output_dir: Path) -> list[str]:
    return sorted(p.name for p in output_dir.iterdir() if p.name.startswith("checkpoint-"))


def _steps(entries) -> list[int]:
    return [e.step for e in entries]


def test_listing_sorts_by_step_and_ignores_lookalikes(tmp_path, committed_checkpoint, plain_checkpoint):
    for step in (9, 10, 100):
        committed_checkpoint(tmp_path, step)
    plain_checkpoint(tmp_path, 50)  # uncommitted
    (tmp_path / "checkpoint-abc").mkdir()
    (tmp_path / "tmp-checkpoint-7").mkdir()
    (tmp_path / "checkpoint-8").write_text("a file, not a folder")
    store = CheckpointStore(tmp_path)
    assert _steps(store.checkpoints()) == [9, 10, 50, 100]
    assert _steps(store.committed()) == [9, 10, 100]
    assert CheckpointStore(tmp_path / "missing").checkpoints() == []


def test_managed_marker(tmp_path):
    store = CheckpointStore(tmp_path)
    assert not store.is_managed()
    store.mark_managed()
    store.mark_managed()  # idempotent
    assert store.is_managed()
    assert json.loads((tmp_path / ".aegis" / "store.json").read_text())["format"] == "aegis-ckpt-store"


def test_quarantine_moves_aside_with_reason_and_hides_from_trainer(tmp_path, plain_checkpoint):
    store = CheckpointStore(tmp_path)
    folder = plain_checkpoint(tmp_path, 40)
    files_before = sorted(p.name for p in folder.iterdir())

    target = store.quarantine(folder, "uncommitted: test reason")

    assert target is not None and target.parent == tmp_path / ".aegis" / "quarantine"
    assert not folder.exists() and _top_level_checkpoints(tmp_path) == []
    assert get_last_checkpoint(str(tmp_path)) is None, "the Trainer must not find a quarantined folder"
    record = json.loads((target / QUARANTINE_RECORD).read_text())
    assert record["reason"] == "uncommitted: test reason" and record["original_path"] == str(folder)
    assert sorted(p.name for p in target.iterdir() if p.name != QUARANTINE_RECORD) == files_before
    assert [r["reason"] for r in store.quarantined()] == ["uncommitted: test reason"]
    assert store.quarantine(folder, "gone") is None  # vanished meanwhile: nothing to do


def test_quarantining_the_same_name_twice_keeps_both(tmp_path, plain_checkpoint):
    store = CheckpointStore(tmp_path)
    first = store.quarantine(plain_checkpoint(tmp_path, 5), "first")
    second = store.quarantine(plain_checkpoint(tmp_path, 5), "second")
    assert first != second and first.exists() and second.exists()
    assert sorted(r["reason"] for r in store.quarantined()) == ["first", "second"]
    assert not any(p.name.startswith("checkpoint-") for p in (tmp_path / ".aegis" / "quarantine").iterdir())


def test_prune_keeps_exactly_max_keep_committed(tmp_path, committed_checkpoint):
    for step in range(10, 70, 10):
        committed_checkpoint(tmp_path, step)
    store = CheckpointStore(tmp_path)
    removed = store.prune(3)
    assert sorted(p.name for p in removed) == ["checkpoint-10", "checkpoint-20", "checkpoint-30"]
    assert _steps(store.committed()) == [40, 50, 60]
    assert not (tmp_path / ".aegis" / "trash").exists() or not any((tmp_path / ".aegis" / "trash").iterdir())
    assert store.prune(3) == []


def test_prune_never_touches_uncommitted_folders(tmp_path, committed_checkpoint, plain_checkpoint):
    plain_checkpoint(tmp_path, 5)  # older than everything
    for step in (10, 20, 30):
        committed_checkpoint(tmp_path, step)
    plain_checkpoint(tmp_path, 40)  # an interrupted save, newer than everything
    store = CheckpointStore(tmp_path)
    store.prune(1)
    assert _steps(store.checkpoints()) == [5, 30, 40]
    assert _steps(store.committed()) == [30]


def test_prune_keeps_protected_on_top_of_max_keep(tmp_path, committed_checkpoint):
    folders = {step: committed_checkpoint(tmp_path, step) for step in (10, 20, 30, 40)}
    store = CheckpointStore(tmp_path)
    store.prune(2, protect={folders[10]})
    assert _steps(store.committed()) == [10, 30, 40]


def _set_commit_time(folder: Path, unix: float) -> None:
    m = read_manifest(folder)
    m.committed_unix = unix
    atomic_write_json(folder / MANIFEST_NAME, m.to_json_dict())


def test_prune_keeps_the_first_checkpoint_of_each_milestone_window(tmp_path, committed_checkpoint):
    base = 1_700_000_000 // 3600 * 3600  # start of an hour
    # commit times (minutes): hour 0 -> steps 10, 20; hour 1 -> 30, 40; hour 2 -> 50, 60
    minutes = {10: 5, 20: 40, 30: 65, 40: 100, 50: 125, 60: 170}
    for step, minute in minutes.items():
        _set_commit_time(committed_checkpoint(tmp_path, step), base + minute * 60)
    store = CheckpointStore(tmp_path)
    store.prune(1, milestone_every_sec=3600)
    # milestones 10, 30, 50 (first of each hour) + newest 60
    assert _steps(store.committed()) == [10, 30, 50, 60]


def test_trash_left_by_a_crash_is_emptied(tmp_path, committed_checkpoint):
    committed_checkpoint(tmp_path, 10)
    store = CheckpointStore(tmp_path)
    # What a kill between the rename into trash and the deletion leaves behind:
    leftover = tmp_path / ".aegis" / "trash" / f"pruned-5-{time.time_ns()}"
    leftover.mkdir(parents=True)
    (leftover / "model.safetensors").write_bytes(b"x" * 100)
    store.prune(5)
    assert not any((tmp_path / ".aegis" / "trash").iterdir())
    assert _steps(store.committed()) == [10]


def test_manifest_helper_round_trips(tmp_path, committed_checkpoint):
    folder = committed_checkpoint(tmp_path, 1)
    m = read_manifest(folder)
    assert Manifest.from_json_dict(m.to_json_dict()).files == m.files
