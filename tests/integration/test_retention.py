"""Retention on a real Trainer (guarantee 5): exactly ``max_keep`` committed checkpoints remain; the Trainer's
own ``save_total_limit`` rotation (which deletes by mtime before anything is committed) is taken over."""

from __future__ import annotations

import errno
import logging

import pytest
import tinylib
from tinylib import ClockTicker, SaveRecorder

from aegis_ckpt import AegisCheckpointCallback, find_resume_checkpoint
from aegis_ckpt.storage import commit
from aegis_ckpt.storage.commit import verify_checkpoint
from aegis_ckpt.storage.store import CheckpointStore

pytestmark = pytest.mark.slow


def _committed_steps(output_dir) -> list[int]:
    return [e.step for e in CheckpointStore(output_dir).committed()]


def test_keeps_exactly_max_keep_committed(tmp_path, make_trainer, fake_clock):
    after = SaveRecorder()
    cb = AegisCheckpointCallback(async_save=False, save_interval_sec=2.5, max_keep=3, clock=fake_clock)
    trainer = make_trainer(tmp_path, callbacks=[ClockTicker(fake_clock, 1.0), cb, after], max_steps=20)
    trainer.train()
    assert after.steps == [3, 6, 9, 12, 15, 18, 20]
    for i, save in enumerate(after.saves):
        assert len(save["committed"]) == min(i + 1, 3), save
        assert save["present"] == save["committed"], "nothing uncommitted is left behind"
    assert _committed_steps(tmp_path) == [15, 18, 20]
    assert not any((tmp_path / ".aegis" / "trash").iterdir())
    for entry in CheckpointStore(tmp_path).committed():
        assert verify_checkpoint(entry.path).ok


def test_save_total_limit_is_taken_over_with_a_warning(tmp_path, make_trainer, fake_clock, caplog):
    """save_total_limit=1 would leave one folder after every save; with max_keep=3 three must remain, and the
    recorder placed before our callback sees every earlier committed checkpoint still there right after the
    Trainer's save (i.e. the Trainer's rotation deleted nothing)."""
    before, after = SaveRecorder(), SaveRecorder()
    cb = AegisCheckpointCallback(async_save=False, save_interval_sec=2.5, max_keep=3, clock=fake_clock)
    with caplog.at_level(logging.WARNING, logger="aegis_ckpt"):
        trainer = make_trainer(
            tmp_path,
            callbacks=[ClockTicker(fake_clock, 1.0), before, cb, after],
            max_steps=12,
            save_total_limit=1,
        )
    assert any(
        "save_total_limit=1 is handled by aegis-ckpt retention (max_keep=3)" in r.getMessage()
        for r in caplog.records
    )
    assert trainer.args.save_total_limit is None
    trainer.train()
    assert after.steps == [3, 6, 9, 12]
    previous: list[str] = []
    for b, a in zip(before.saves, after.saves, strict=True):
        assert set(previous) <= set(b["present"]), f"the Trainer deleted {set(previous) - set(b['present'])}"
        previous = a["committed"]
    assert _committed_steps(tmp_path) == [6, 9, 12]


def test_save_total_limit_becomes_max_keep_when_max_keep_is_not_given(
    tmp_path, make_trainer, fake_clock, caplog
):
    cb = AegisCheckpointCallback(async_save=False, save_interval_sec=2.5, clock=fake_clock)
    with caplog.at_level(logging.WARNING, logger="aegis_ckpt"):
        trainer = make_trainer(
            tmp_path, callbacks=[ClockTicker(fake_clock, 1.0), cb], max_steps=12, save_total_limit=2
        )
        trainer.train()
    assert cb.options.max_keep == 2
    assert sum("save_total_limit=2" in r.getMessage() for r in caplog.records) == 1, "warn once"
    assert _committed_steps(tmp_path) == [9, 12]


def test_failed_commit_keeps_older_checkpoints_and_training_goes_on(
    tmp_path, make_trainer, fake_clock, monkeypatch, caplog
):
    """An I/O error at the ``commit.fsync_file`` seam during the save at step 6: that save is not committed,
    nothing older is pruned because of it, training continues, and later saves commit normally."""
    real = commit.fsync_file
    failing_step = {"armed": False}

    class ArmAtStep6(SaveRecorder):
        def on_step_end(self, args, state, control, **kwargs):
            failing_step["armed"] = state.global_step == 6

    def flaky(path):
        if failing_step["armed"]:
            raise OSError(errno.EIO, "Input/output error", str(path))
        real(path)

    monkeypatch.setattr(commit, "fsync_file", flaky)
    after = SaveRecorder()
    cb = AegisCheckpointCallback(async_save=False, save_interval_sec=2.5, max_keep=2, clock=fake_clock)
    trainer = make_trainer(
        tmp_path, callbacks=[ClockTicker(fake_clock, 1.0), ArmAtStep6(), cb, after], max_steps=12
    )
    with caplog.at_level(logging.ERROR, logger="aegis_ckpt"):
        trainer.train()
    assert any("was NOT committed" in r.getMessage() for r in caplog.records)
    assert after.saves[1]["step"] == 6 and after.saves[1]["committed"] == ["checkpoint-3"]
    assert trainer.state.global_step == 12
    assert _committed_steps(tmp_path) == [9, 12]
    # The folder whose commit failed must not linger as a checkpoint-* folder that retention never removes.
    assert [e.step for e in CheckpointStore(tmp_path).checkpoints()] == [9, 12]
    [record] = CheckpointStore(tmp_path).quarantined()
    assert record["reason"].startswith("commit failed") and record["original_path"].endswith("checkpoint-6")
    assert find_resume_checkpoint(tmp_path) == str(tmp_path / "checkpoint-12")


def test_explicit_resume_from_an_older_checkpoint_sets_newer_ones_aside(
    tmp_path, make_trainer, reference_weights
):
    """Resuming from checkpoint-5 while 10 and 15 exist: 10 and 15 belong to an abandoned timeline. They are
    moved to quarantine at train begin, instead of being overwritten in place under their old manifests and
    counted as the newest by retention."""
    from tinylib import StopAfterSave

    first = make_trainer(
        tmp_path,
        callbacks=[AegisCheckpointCallback(async_save=False, save_interval_sec=1e6), StopAfterSave(15)],
        save_strategy="steps",
        save_steps=5,
    )
    first.train()
    assert _committed_steps(tmp_path) == [5, 10, 15]

    after = SaveRecorder()
    trainer = make_trainer(
        tmp_path,
        callbacks=[AegisCheckpointCallback(async_save=False, save_interval_sec=1e6, max_keep=2), after],
        save_strategy="steps",
        save_steps=5,
    )
    trainer.train(resume_from_checkpoint=str(tmp_path / "checkpoint-5"))
    assert after.saves[0]["step"] == 10 and sorted(after.saves[0]["committed"]) == [
        "checkpoint-10",
        "checkpoint-5",
    ]
    reasons = sorted(r["reason"].split(":")[0] for r in CheckpointStore(tmp_path).quarantined())
    assert reasons == ["superseded", "superseded"]
    assert _committed_steps(tmp_path) == [15, 20]
    assert tinylib.weight_mismatches(tinylib.weights(trainer.model), reference_weights(max_steps=20)) == []
