"""Damaged newest checkpoint (guarantee 1: no silent loss): ``find_resume_checkpoint`` sets the damaged folder
aside and returns the previous committed one, including for the damage the Trainer itself resumes from silently
(missing optimizer/scheduler/RNG file: fresh state, no error)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import tinylib
from tinylib import StopAfterSave
from transformers.trainer_utils import get_last_checkpoint

from aegis_ckpt import AegisCheckpointCallback, find_resume_checkpoint
from aegis_ckpt.storage.layout import MANIFEST_NAME
from aegis_ckpt.storage.store import CheckpointStore

pytestmark = pytest.mark.slow

MAX_STEPS = 20
STOP_AT = 15


@pytest.fixture(scope="module")
def source_run(tmp_path_factory) -> Path:
    """A run with our callback, committed at steps 5, 10 and 15, then stopped (as if interrupted)."""
    out = tmp_path_factory.mktemp("source") / "out"
    trainer = tinylib.make_trainer(
        out,
        [AegisCheckpointCallback(async_save=False, save_interval_sec=1e6), StopAfterSave(STOP_AT)],
        save_strategy="steps",
        save_steps=5,
        max_steps=MAX_STEPS,
    )
    trainer.train()
    assert [e.step for e in CheckpointStore(out).committed()] == [5, 10, 15]
    return out


def _truncate(folder: Path) -> None:
    path = folder / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flip_byte(folder: Path) -> None:
    path = folder / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-7] ^= 0x01  # inside the tensor data: the file still parses and loads
    path.write_bytes(bytes(data))


def _half_written_newer(folder: Path) -> Path:
    """A newer save killed mid-write: some files, no trainer_state.json, no manifest."""
    newer = folder.parent / "checkpoint-20"
    shutil.copytree(folder, newer)
    (newer / MANIFEST_NAME).unlink()
    (newer / "trainer_state.json").unlink()
    _truncate(newer)
    return newer


DAMAGE = {
    "truncated-safetensors": (_truncate, ("full", "quick")),
    "missing-optimizer": (lambda f: (f / "optimizer.pt").unlink(), ("full", "quick")),
    "missing-scheduler": (lambda f: (f / "scheduler.pt").unlink(), ("full", "quick")),
    "missing-rng-state": (lambda f: (f / "rng_state.pth").unlink(), ("full", "quick")),
    "manifest-removed": (lambda f: (f / MANIFEST_NAME).unlink(), ("full", "quick")),
    "flipped-byte": (_flip_byte, ("full",)),
}


@pytest.mark.parametrize("verify", ["full", "quick"])
@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_newest_is_set_aside(source_run, tmp_path, damage, verify):
    out = tmp_path / "out"
    shutil.copytree(source_run, out)
    newest = out / "checkpoint-15"
    damage_fn, detected_by = DAMAGE[damage]
    damage_fn(newest)

    chosen = find_resume_checkpoint(out, verify)

    if verify not in detected_by:
        # Documented limit: quick mode compares sizes only, so same-size corruption needs verify="full".
        assert chosen == str(newest)
        return
    assert chosen == str(out / "checkpoint-10")
    assert not newest.exists()
    [record] = CheckpointStore(out).quarantined()
    assert record["original_path"] == str(newest)
    assert get_last_checkpoint(str(out)) == chosen, "the plain Trainer would now pick the same folder"


@pytest.mark.parametrize("verify", ["full", "quick"])
def test_half_written_newer_folder_is_set_aside(source_run, tmp_path, verify):
    out = tmp_path / "out"
    shutil.copytree(source_run, out)
    newer = _half_written_newer(out / "checkpoint-15")
    assert find_resume_checkpoint(out, verify) == str(out / "checkpoint-15")
    assert not newer.exists()
    [record] = CheckpointStore(out).quarantined()
    assert record["reason"].startswith("uncommitted")


def test_resume_past_a_silently_damaged_checkpoint_is_exact(source_run, tmp_path, reference_weights):
    """End to end: optimizer.pt of the newest checkpoint is gone (the Trainer alone would go on with a fresh
    optimizer and end on different weights); we resume from step 10 instead and end bit-identical."""
    out = tmp_path / "out"
    shutil.copytree(source_run, out)
    os.remove(out / "checkpoint-15" / "optimizer.pt")

    resume = find_resume_checkpoint(out)
    assert resume == str(out / "checkpoint-10")
    trainer = tinylib.make_trainer(
        out, [AegisCheckpointCallback(async_save=False, save_interval_sec=1e6)], max_steps=MAX_STEPS
    )
    trainer.train(resume_from_checkpoint=resume)
    assert (
        tinylib.weight_mismatches(tinylib.weights(trainer.model), reference_weights(max_steps=MAX_STEPS))
        == []
    )
