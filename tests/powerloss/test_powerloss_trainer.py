"""Power cuts during the saves of a real Trainer run (guarantees 1, 5 and 9).

Each test runs the tiny Trainer once, records every file-system operation of one save (the Trainer's own writes,
torch's and safetensors' native writes, the commit, retention, the run state and the audit log), then checks every
crash state a power cut after each operation could leave (``crashcheck``): the resume scan picks the new
checkpoint with exactly the saved bytes or the previous one, never a damaged one, and once the save reported
success always the new one.
"""

from __future__ import annotations

import os
import signal
import time

import pytest
from crashcheck import Expect, check_recording
from recorder import Recorder
from tinylib import ClockTicker
from transformers import TrainerCallback

from aegis_ckpt import AegisCheckpointCallback, AsyncOptions

pytestmark = pytest.mark.slow


class RecordFrom(TrainerCallback):
    """Starts recording at the end of ``step`` (before the save that step triggers); the save's own ``on_save``
    marks "done" when ``mark_on_save``. Must come after the aegis callback so that its ``on_save`` runs last,
    and before it when the save is written in the background (a writer thread starts writing at once, within the
    aegis callback's ``on_step_end``)."""

    def __init__(self, recorder: Recorder, step: int, *, mark_on_save: bool, before_step=None):
        self.recorder = recorder
        self.before_step = before_step  # at the end of the step before ``step``, ahead of the aegis callback
        self.step = step
        self.mark_on_save = mark_on_save
        self.active = False

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step + 1 == self.step and self.before_step is not None:
            self.before_step()
        if state.global_step == self.step and not self.active:
            self.recorder.__enter__()
            self.active = True

    def on_save(self, args, state, control, **kwargs):
        if self.active and self.mark_on_save and state.global_step == self.step:
            self.recorder.mark("done")

    def stop(self) -> None:
        if self.active:
            self.recorder.__exit__(None, None, None)
            self.active = False


def _record_run(
    tmp_path,
    make_trainer,
    fake_clock,
    cb,
    *,
    step,
    max_steps,
    mark_on_save,
    extra_callbacks=(),
    record_first=False,
):
    out = tmp_path / "out"
    out.mkdir()
    rec = Recorder(out)
    # Recording first: an earlier background save still being written (a loaded machine) is waited for at the
    # end of the step before, so that the aegis callback publishes it there, outside the recorded window.
    drain = _wait_for_writer(cb) if record_first else None
    window = RecordFrom(rec, step, mark_on_save=mark_on_save, before_step=drain)
    ordered = [window, cb] if record_first else [cb, window]
    trainer = make_trainer(
        out, callbacks=[ClockTicker(fake_clock, 1.0), *extra_callbacks, *ordered], max_steps=max_steps
    )
    try:
        trainer.train()
    except SystemExit:
        pass
    finally:
        window.stop()
    if not mark_on_save:
        rec.ops.append(type(rec.ops[0])("mark", "done"))
    return rec


def _wait_for_writer(cb: AegisCheckpointCallback):
    def wait() -> None:
        deadline = time.monotonic() + 300
        while cb._async.busy and time.monotonic() < deadline:
            time.sleep(0.01)

    return wait


def _assert_clean(report, minimum_states: int) -> None:
    print(report.summary())
    assert not report.problems, report.summary()
    assert report.distinct >= minimum_states, report.summary()


def test_power_cut_during_a_synchronous_trainer_save_and_its_pruning(
    tmp_path, make_trainer, fake_clock, scratch
):
    """Saves at steps 5 and 10 (save_interval 4.5 s, 1 s a step); the save of step 10 is recorded, with its
    commit and the pruning of checkpoint-5 (max_keep=1), up to the save's own ``on_save``."""
    cb = AegisCheckpointCallback(
        async_save=False, save_interval_sec=4.5, max_keep=1, save_on_train_end=False, clock=fake_clock
    )
    rec = _record_run(tmp_path, make_trainer, fake_clock, cb, step=10, max_steps=10, mark_on_save=True)
    kinds = {op.kind for op in rec.ops}
    assert {"write", "fsync", "rename", "rmtree"} <= kinds, kinds
    report = check_recording(rec, Expect(new_step=10, done_mark="done"), scratch)
    _assert_clean(report, 25)


def test_power_cut_during_an_asynchronous_save(tmp_path, make_trainer, fake_clock, scratch):
    """The save of step 10 written and committed by the background writer thread (direct writes of the large
    files, commit in staging, publish by rename), recorded until training ended (the writer drained)."""
    cb = AegisCheckpointCallback(
        save_interval_sec=4.5,
        max_keep=2,
        save_on_train_end=False,
        async_options=AsyncOptions(enabled=True, writer="thread", when_busy="wait"),
        clock=fake_clock,
    )
    rec = _record_run(
        tmp_path, make_trainer, fake_clock, cb, step=10, max_steps=11, mark_on_save=False, record_first=True
    )
    assert any(op.kind == "rename" and op.dst == "checkpoint-10" for op in rec.ops), "published by a rename"
    report = check_recording(rec, Expect(new_step=10, done_mark="done"), scratch)
    _assert_clean(report, 25)


class SigtermAt(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step + 1 == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


def test_power_cut_during_an_emergency_save_on_sigterm(tmp_path, make_trainer, fake_clock, scratch):
    """SIGTERM during step 8: the step finishes, the emergency checkpoint of step 8 is committed, the process
    exits 143. Recorded from the end of step 8 to the exit."""
    cb = AegisCheckpointCallback(save_interval_sec=4.5, max_keep=2, clock=fake_clock)
    rec = _record_run(
        tmp_path,
        make_trainer,
        fake_clock,
        cb,
        step=8,
        max_steps=20,
        mark_on_save=False,
        extra_callbacks=[SigtermAt(8)],
    )
    report = check_recording(rec, Expect(new_step=8, done_mark="done"), scratch)
    _assert_clean(report, 25)
