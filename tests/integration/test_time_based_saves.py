"""Time-based saving on a real Trainer: saves follow wall-clock time, not the step count; they happen with
``save_strategy="no"``; the user's own step/epoch saves are committed too; a finished run ends on a committed
final checkpoint and writes ``.aegis/completed.json``."""

from __future__ import annotations

import json
import shutil

import pytest
from tinylib import ClockTicker, SaveRecorder, SleepPerStep, StopAfterSave
from transformers import TrainerCallback

from aegis_ckpt import AegisCheckpointCallback, find_resume_checkpoint
from aegis_ckpt.options import AsyncOptions
from aegis_ckpt.runstate.completion import read_completion
from aegis_ckpt.storage.commit import read_manifest, verify_checkpoint
from aegis_ckpt.storage.store import CheckpointStore

pytestmark = pytest.mark.slow


def _reasons(output_dir) -> dict[int, str]:
    return {e.step: read_manifest(e.path).reason for e in CheckpointStore(output_dir).committed()}


@pytest.mark.parametrize(
    "seconds_per_step, expected",
    [
        # 3 s a step, interval 10 s: due at t=12 (step 4); next due 22 -> step 8 (t=24); 34 -> step 12 ...
        # At step 20 the interval is due too, but the last step is always the (synchronous) final save.
        (lambda step: 3.0, {4: "interval", 8: "interval", 12: "interval", 16: "interval", 20: "final"}),
        # Same 20 steps, other clock: fast steps, one 30 s stall at step 6, fast again -> only step 6 + final.
        (lambda step: 30.0 if step == 6 else 0.1, {6: "interval", 20: "final"}),
    ],
    ids=["steady-3s-steps", "one-slow-step"],
)
@pytest.mark.parametrize("async_save", [True, False], ids=["async", "sync"])
def test_saves_follow_the_clock_not_the_step_count(
    tmp_path, make_trainer, fake_clock, seconds_per_step, expected, async_save
):
    recorder = SaveRecorder()
    # "wait": with a fake clock the background writer may still be busy at the next due step; waiting keeps the
    # save steps a pure function of the clock (the "skip" policy is tested separately below).
    cb = AegisCheckpointCallback(
        save_interval_sec=10,
        max_keep=100,
        clock=fake_clock,
        async_options=AsyncOptions(enabled=async_save, when_busy="wait"),
    )
    trainer = make_trainer(
        tmp_path, callbacks=[ClockTicker(fake_clock, seconds_per_step), cb, recorder], save_strategy="no"
    )
    trainer.train()
    # The Trainer itself saves everything in sync mode; in async mode only the final step goes through it.
    through_trainer = sorted(expected) if not async_save else [s for s, r in expected.items() if r == "final"]
    assert recorder.steps == through_trainer
    assert _reasons(tmp_path) == expected
    for entry in CheckpointStore(tmp_path).committed():
        assert verify_checkpoint(entry.path).ok


def test_real_wall_clock_triggers_saves_with_save_strategy_no(tmp_path, make_trainer):
    """Each step sleeps >= 0.06 s and the interval is 0.3 s, so after any save (or train begin) a new save must
    come within 6 steps, however slow the machine is (a lower bound on elapsed time, not a speed assert)."""
    # "wait": a save due while the previous one is still being written waits for it instead of being deferred,
    # so the gap bound holds whatever the writer's speed on a loaded machine.
    cb = AegisCheckpointCallback(
        save_interval_sec=0.3, max_keep=100, async_options=AsyncOptions(when_busy="wait")
    )
    trainer = make_trainer(tmp_path, callbacks=[SleepPerStep(0.06), cb], save_strategy="no", max_steps=24)
    trainer.train()
    steps = [e.step for e in CheckpointStore(tmp_path).committed()]
    gaps = [b - a for a, b in zip([0] + steps[:-1], steps, strict=True)]
    assert steps and max(gaps) <= 6, steps
    assert len(steps) >= 4
    assert "interval" in set(_reasons(tmp_path).values())


def test_user_save_steps_are_committed_too(tmp_path, make_trainer):
    recorder = SaveRecorder()
    cb = AegisCheckpointCallback(save_interval_sec=1e6, max_keep=100)
    trainer = make_trainer(
        tmp_path, callbacks=[cb, recorder], save_strategy="steps", save_steps=4, max_steps=12
    )
    trainer.train()
    assert recorder.steps == [4, 8, 12]
    assert _reasons(tmp_path) == {4: "trainer", 8: "trainer", 12: "final"}


def test_epoch_saves_are_committed_once(tmp_path, make_trainer):
    """save_strategy="epoch": the last step saves at step end ("final") and the epoch-end save of the same
    step is skipped instead of rewriting a committed folder in place."""
    recorder = SaveRecorder()
    cb = AegisCheckpointCallback(save_interval_sec=1e6, max_keep=100)
    trainer = make_trainer(tmp_path, callbacks=[cb, recorder], save_strategy="epoch", max_steps=20)
    trainer.train()
    assert recorder.steps == [10, 20]
    assert _reasons(tmp_path) == {10: "trainer", 20: "final"}


def test_finished_run_ends_on_a_committed_final_checkpoint(tmp_path, make_trainer):
    cb = AegisCheckpointCallback(save_interval_sec=1e6)
    trainer = make_trainer(tmp_path, callbacks=[cb], max_steps=7)
    trainer.train()
    final = tmp_path / "checkpoint-7"
    assert verify_checkpoint(final).ok and read_manifest(final).reason == "final"
    record = read_completion(tmp_path)
    assert record is not None and record["step"] == 7 and record["checkpoint"] == str(final)
    assert json.loads((tmp_path / ".aegis" / "completed.json").read_text())["step"] == 7


def test_interrupted_run_writes_no_completion_record(tmp_path, make_trainer):
    cb = AegisCheckpointCallback(save_interval_sec=1e6)
    trainer = make_trainer(
        tmp_path, callbacks=[cb, StopAfterSave(5)], save_strategy="steps", save_steps=5, max_steps=20
    )
    trainer.train()
    assert trainer.state.global_step == 5
    assert read_completion(tmp_path) is None


def test_restart_after_the_final_commit_marks_the_run_completed(tmp_path, make_trainer):
    """A kill after the final checkpoint committed but before ``completed.json`` was written: the restart
    resumes from the final checkpoint, has no step left to run, and must still record completion (otherwise a
    supervisor waiting for the record restarts the run forever)."""
    trainer = make_trainer(tmp_path, callbacks=[AegisCheckpointCallback(save_interval_sec=1e6)], max_steps=20)
    trainer.train()
    (tmp_path / ".aegis" / "completed.json").unlink()  # the kill landed just before this write

    resume = find_resume_checkpoint(tmp_path)
    assert resume == str(tmp_path / "checkpoint-20")
    trainer = make_trainer(tmp_path, callbacks=[AegisCheckpointCallback(save_interval_sec=1e6)], max_steps=20)
    trainer.train(resume_from_checkpoint=resume)
    assert trainer.state.global_step == 20
    record = read_completion(tmp_path)
    assert record is not None and record["step"] == 20


def test_restart_into_a_copy_keeps_the_run_resumable(tmp_path, make_trainer):
    """Checkpoints stay valid when the output directory is moved (manifests hold relative paths only)."""
    trainer = make_trainer(
        tmp_path / "a",
        callbacks=[AegisCheckpointCallback(save_interval_sec=1e6)],
        save_strategy="steps",
        save_steps=5,
        max_steps=10,
    )
    trainer.train()
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    assert find_resume_checkpoint(tmp_path / "b") == str(tmp_path / "b" / "checkpoint-10")


def test_a_save_due_while_the_writer_is_busy_is_deferred_not_stacked(
    tmp_path, make_trainer, fake_clock, caplog
):
    """when_busy="skip": training goes on while the previous save is still being written; the due save is taken
    at the first step end after the writer is free, and at most one save is ever in flight."""
    import threading
    import time

    from aegis_ckpt.trainer.asyncsave.hflayout import write_snapshot
    from aegis_ckpt.trainer.asyncsave.saver import AsyncCheckpointWriter

    release = threading.Event()
    writes: list[tuple[int, float, float]] = []
    free_after_step: list[int] = []

    def slow_write(snapshot, folder, *, sha256):
        started = time.monotonic()
        if snapshot.step == 3:
            release.wait(30)  # a slow disk for the first save only
        write_snapshot(snapshot, folder)
        writes.append((snapshot.step, started, time.monotonic()))

    class SlowAfterRelease(TrainerCallback):
        """Releases the slow write at step 9, then gives the writer real time to finish (steps are ms long)."""

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 9:
                release.set()
            if state.global_step >= 9:
                time.sleep(0.05)
                if not cb._async.writer.busy and not free_after_step:
                    free_after_step.append(state.global_step)

    cb = AegisCheckpointCallback(save_interval_sec=2.5, max_keep=100, clock=fake_clock)
    cb._async.writer = AsyncCheckpointWriter(write=slow_write)  # the seam: a writer on a slow disk
    trainer = make_trainer(
        tmp_path,
        callbacks=[ClockTicker(fake_clock, 1.0), SlowAfterRelease(), cb],
        save_strategy="no",
        max_steps=30,
    )
    with caplog.at_level("INFO", logger="aegis_ckpt"):
        trainer.train()
    steps = sorted(_reasons(tmp_path))
    # Due at 3 (written slowly until after step 9), due again from step 6: deferred while busy, and taken at the
    # first step end that found the writer free (this callback runs just before ours at each step end).
    assert steps[0] == 3 and free_after_step and steps[1] == free_after_step[0], (steps, free_after_step)
    assert "Save due at step 6 deferred: the previous one is still being written" in caplog.text
    assert f"Deferred save taken at step {steps[1]}" in caplog.text
    # Never two writes at once.
    for (_, _, end_a), (_, start_b, _) in zip(writes, writes[1:], strict=False):
        assert start_b >= end_a
