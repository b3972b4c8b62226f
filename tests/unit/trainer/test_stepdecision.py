"""The step-end decision of the Trainer callback, branch by branch, without a Trainer."""

from __future__ import annotations

import pytest

from aegis_ckpt.distributed import StepFlags
from aegis_ckpt.trainer.stepdecision import (
    DUE,
    FINAL,
    NONE,
    SIGNAL,
    TRAINER,
    StepDecision,
    already_served,
    decide_step,
)


def decide(flags: StepFlags, *, final=False, save_on_train_end=True, trainer_saves=False, **served):
    return decide_step(
        flags, final=final, save_on_train_end=save_on_train_end, trainer_saves=trainer_saves, **served
    )


def test_a_signal_wins_over_everything():
    flags = StepFlags(save_due=1, signal=15)
    assert decide(flags, final=True, trainer_saves=True) == StepDecision(SIGNAL)


def test_the_last_step_is_saved_when_asked_for():
    assert decide(StepFlags(save_due=1), final=True, trainer_saves=True) == StepDecision(FINAL, "final")
    # Without save_on_train_end the last step is an ordinary step.
    assert decide(StepFlags(), final=True, save_on_train_end=False) == StepDecision(NONE)
    assert decide(StepFlags(save_due=1), final=True, save_on_train_end=False) == StepDecision(DUE, "interval")


def test_a_due_interval_saves_unless_the_trainer_saves_anyway():
    assert decide(StepFlags(save_due=1)) == StepDecision(DUE, "interval")
    assert decide(StepFlags(save_due=1), trainer_saves=True) == StepDecision(TRAINER, "interval")


def test_a_trainer_save_alone_is_named_after_the_trainer():
    assert decide(StepFlags(), trainer_saves=True) == StepDecision(TRAINER, "trainer")


def test_nothing_to_do():
    assert decide(StepFlags(writer_busy=1, sync_only=1)) == StepDecision(NONE)


@pytest.mark.parametrize(
    ("contributed_at", "last_saved_step", "served"),
    [(None, 5, False), (5, None, False), (4, 5, True), (5, 5, True), (6, 5, False)],
)
def test_a_due_seen_before_the_last_save_is_already_served(contributed_at, last_saved_step, served):
    assert already_served(contributed_at, last_saved_step) is served
    decision = decide(StepFlags(save_due=1), contributed_at=contributed_at, last_saved_step=last_saved_step)
    assert decision == (StepDecision(NONE) if served else StepDecision(DUE, "interval"))
    # A Trainer save of that step is still committed, named after the Trainer when the due was served.
    with_trainer = decide(
        StepFlags(save_due=1),
        trainer_saves=True,
        contributed_at=contributed_at,
        last_saved_step=last_saved_step,
    )
    assert with_trainer == StepDecision(TRAINER, "trainer" if served else "interval")
