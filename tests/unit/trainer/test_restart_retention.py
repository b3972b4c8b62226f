"""A run stopped between a commit and its retention, or whose restart publishes a save from staging, leaves more
than ``max_keep`` committed checkpoints; the restart applies retention once before training, so repeated crashes
never pile checkpoints up (seen in the SIGKILL chaos test: five committed with ``max_keep=2`` after five kills)."""

from __future__ import annotations

from aegis_ckpt.options import CheckpointOptions
from aegis_ckpt.runstate.saves import SaveTail
from aegis_ckpt.storage.store import CheckpointStore
from aegis_ckpt.trainer.trainbegin import tidy_output_dir


def _committed_steps(out) -> list[int]:
    return [e.step for e in CheckpointStore(out).committed()]


def test_a_restart_prunes_what_crashes_left_beyond_max_keep(tmp_path, committed_checkpoint):
    out = tmp_path / "out"
    for step in (10, 20, 30, 40, 50):
        committed_checkpoint(out, step)
    store = CheckpointStore(out)
    options = CheckpointOptions(max_keep=2)
    tidy_output_dir(store, SaveTail(store, options), 50, options)
    assert _committed_steps(out) == [40, 50]


def test_the_checkpoint_resumed_from_is_kept_even_when_newer_ones_were_set_aside(
    tmp_path, committed_checkpoint
):
    out = tmp_path / "out"
    for step in (10, 20, 30, 40):
        committed_checkpoint(out, step)
    store = CheckpointStore(out)
    options = CheckpointOptions(max_keep=2)
    tidy_output_dir(store, SaveTail(store, options), 20, options)  # 30 and 40: an abandoned timeline
    assert _committed_steps(out) == [10, 20]


def test_a_fresh_start_prunes_nothing(tmp_path, committed_checkpoint):
    out = tmp_path / "out"
    committed_checkpoint(out, 10)
    store = CheckpointStore(out)
    options = CheckpointOptions(max_keep=1)
    tidy_output_dir(store, SaveTail(store, options), 0, options)
    assert _committed_steps(out) == []  # set aside as a later timeline (quarantine), not pruned
    assert any((out / ".aegis" / "quarantine").iterdir())
