"""What the callback does at an optimizer step end, as a pure function of what all ranks agreed.

The callback gathers the facts (the agreed ``StepFlags``, whether this is the last step, whether the Trainer saves
this step on its own) and acts on the answer; deciding has no side effects, so every branch is tested without a
Trainer. In order of precedence:

* ``SIGNAL``: a stop signal came on some rank: save the emergency checkpoint now (then exit);
* ``FINAL``: the last step, with ``save_on_train_end``: save it, so a finished run ends on a committed checkpoint;
* ``DUE``: the save interval is due and the Trainer does not save this step: save (asynchronously if possible);
* ``TRAINER``: the Trainer saves this step on its own (``save_strategy``); commit it, named after the interval
  when that was due as well;
* ``NONE``: nothing to save.

The agreement is pipelined and may lag one step: a "due" contributed at or before the last save's step was seen
before that save, so it is already served and counts as not due.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..distributed import StepFlags

SIGNAL = "signal"
FINAL = "final"
DUE = "due"
TRAINER = "trainer"
NONE = "none"


@dataclass(frozen=True)
class StepDecision:
    """The action at a step end, and the save reason recorded for it (empty for ``SIGNAL``, whose reason names
    the signal, and for ``NONE``)."""

    action: str
    reason: str = ""


def already_served(contributed_at: int | None, last_saved_step: int | None) -> bool:
    """Whether flags contributed at step ``contributed_at`` predate the save of ``last_saved_step``."""
    return contributed_at is not None and last_saved_step is not None and contributed_at <= last_saved_step


def decide_step(
    agreed: StepFlags,
    *,
    final: bool,
    save_on_train_end: bool,
    trainer_saves: bool,
    contributed_at: int | None = None,
    last_saved_step: int | None = None,
) -> StepDecision:
    """The step-end action for the flags all ranks agreed (see the module docstring).

    Args:
        agreed: the flags every rank agreed on for this step (or the previous one, when pipelined).
        final: this is the last optimizer step of training.
        save_on_train_end: the option that asks for a final checkpoint.
        trainer_saves: the Trainer already set ``control.should_save`` for this step.
        contributed_at, last_saved_step: the step the flags were contributed at and the step of the last save,
            to discount a "due" that the last save already served.
    """
    due = bool(agreed.save_due) and not already_served(contributed_at, last_saved_step)
    if agreed.signal:
        return StepDecision(SIGNAL)
    if final and save_on_train_end:
        return StepDecision(FINAL, "final")
    if due and not trainer_saves:
        return StepDecision(DUE, "interval")
    if trainer_saves:
        return StepDecision(TRAINER, "interval" if due else "trainer")
    return StepDecision(NONE)
