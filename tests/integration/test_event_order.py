"""Our callback must not break the Trainer's normal event sequence (hook misuse shows up here first)."""

from __future__ import annotations

import pytest
from tinylib import ClockTicker, EventRecorder

from aegis_ckpt import AegisCheckpointCallback
from aegis_ckpt.options import AsyncOptions
from aegis_ckpt.storage.store import CheckpointStore

pytestmark = pytest.mark.slow


def _expected_events(max_steps: int, steps_per_epoch: int, grad_accum: int, save_steps: set[int]):
    """The sequence a plain Trainer produces for this setup (no eval, logging "no")."""
    events = [("on_init_end", 0), ("on_train_begin", 0)]
    step = 0
    while step < max_steps:
        events.append(("on_epoch_begin", step))
        for _ in range(steps_per_epoch):
            events.append(("on_step_begin", step))
            events += [("on_substep_end", step)] * (grad_accum - 1)
            events += [("on_pre_optimizer_step", step), ("on_optimizer_step", step)]
            step += 1
            events.append(("on_step_end", step))
            if step in save_steps:
                events.append(("on_save", step))
            if step == max_steps:
                break
        events.append(("on_epoch_end", step))
    events += [("on_log", step), ("on_train_end", step)]
    return events


@pytest.mark.parametrize("async_save", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("grad_accum", [1, 2])
def test_event_sequence_with_aegis_equals_plain_trainer_plus_our_saves(
    tmp_path, make_trainer, fake_clock, grad_accum, async_save
):
    max_steps = 12
    steps_per_epoch = 10 // grad_accum
    args = dict(max_steps=max_steps, gradient_accumulation_steps=grad_accum)

    plain = EventRecorder()
    make_trainer(tmp_path / "plain", callbacks=[plain], **args).train()
    assert plain.events == _expected_events(max_steps, steps_per_epoch, grad_accum, set())

    ours = EventRecorder()
    # when_busy="wait": with a fake clock, save steps must not depend on how fast the background writer is.
    cb = AegisCheckpointCallback(
        save_interval_sec=3.5,
        clock=fake_clock,
        async_options=AsyncOptions(enabled=async_save, when_busy="wait"),
    )
    make_trainer(tmp_path / "aegis", callbacks=[ClockTicker(fake_clock, 1.0), cb, ours], **args).train()
    # Saves at 4, 8 (interval) and 12 (final); nothing else moves. Asynchronous interval saves do not go through
    # the Trainer at all: only the final save shows as an event.
    trainer_saves = {12} if async_save else {4, 8, 12}
    assert ours.events == _expected_events(max_steps, steps_per_epoch, grad_accum, trainer_saves)
    # Every save that shows as an event was written by the direct writer inside the Trainer's _save_checkpoint
    # (trainer.directsave), and the Trainer still told every callback with on_save, in its usual place.
    assert cb._sync.direct.saves == len(trainer_saves)
    assert [s for e, s in ours.events if e == "on_save"] == sorted(trainer_saves)
    assert sorted(e.step for e in CheckpointStore(tmp_path / "aegis").committed())[-3:] == [4, 8, 12]
    assert [e for e in ours.events if e[0] != "on_save"] == plain.events
