"""A crash in the middle of pruning (guarantee 5): pruning renames an old checkpoint into ``.aegis/trash`` and
only then deletes it. A process dying between the two must leave the newest committed checkpoint as the resume
point, and the next run must empty the trash and still finish on the exact weights."""

from __future__ import annotations

import pytest
import tinylib
from tinylib import ClockTicker
from transformers.trainer_utils import get_last_checkpoint

from aegis_ckpt import AegisCheckpointCallback, find_resume_checkpoint
from aegis_ckpt.storage import commit
from aegis_ckpt.storage.commit import verify_checkpoint
from aegis_ckpt.storage.store import CheckpointStore

pytestmark = pytest.mark.slow


class SimulatedKill(BaseException):
    """Stands for SIGKILL: a BaseException, so no ``except Exception`` on the way can clean anything up."""


def test_kill_between_rename_into_trash_and_delete(
    tmp_path, make_trainer, fake_clock, monkeypatch, reference_weights
):
    trash = tmp_path / ".aegis" / "trash"
    real_fsync_dir = commit.fsync_dir
    hits = []

    def dying_fsync_dir(path):
        # The output-dir fsync that prune() makes after renaming folders into the trash and before emptying it.
        if str(path) == str(tmp_path) and trash.is_dir() and any(trash.iterdir()):
            hits.append(sorted(p.name for p in trash.iterdir()))
            raise SimulatedKill
        real_fsync_dir(path)

    monkeypatch.setattr(commit, "fsync_dir", dying_fsync_dir)
    cb = AegisCheckpointCallback(async_save=False, save_interval_sec=4.5, max_keep=1, clock=fake_clock)
    trainer = make_trainer(tmp_path, callbacks=[ClockTicker(fake_clock, 1.0), cb], max_steps=20)
    with pytest.raises(SimulatedKill):
        trainer.train()
    monkeypatch.undo()

    # Killed while pruning checkpoint-5 after checkpoint-10 committed.
    assert len(hits) == 1 and hits[0][0].startswith("pruned-5-")
    assert [e.step for e in CheckpointStore(tmp_path).checkpoints()] == [10]
    assert verify_checkpoint(tmp_path / "checkpoint-10").ok
    assert get_last_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-10")

    resume = find_resume_checkpoint(tmp_path)
    assert resume == str(tmp_path / "checkpoint-10")
    trainer = make_trainer(
        tmp_path, callbacks=[AegisCheckpointCallback(async_save=False, save_interval_sec=1e6)], max_steps=20
    )
    trainer.train(resume_from_checkpoint=resume)
    assert not any(trash.iterdir()), "the next run empties the trash"
    assert tinylib.weight_mismatches(tinylib.weights(trainer.model), reference_weights(max_steps=20)) == []
