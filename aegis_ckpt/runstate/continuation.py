"""Is a finished run finished for the arguments it is started with now? Raising the last step continues it.

``.aegis/completed.json`` records the step a run finished at. The run is started again (a reboot, the
launcher, the user's script) with a last step that may have changed since: ``max_steps`` raised in the config
(``--set training.max_steps=M``) or in ``TrainingArguments``, or more ``num_train_epochs``. A last step above the
finished one means "continue from the final checkpoint to the new end"; equal or below means "already finished,
train no step". One rule for ``aegis-ckpt train``, its preflight and the callback, so that the launcher's
preflight never says "already finished" to a run the training would continue, or the other way round.

The last step is ``max_steps`` when it is set (> 0). An epoch-based run (``max_steps`` unset) keeps the last step
the final checkpoint was trained towards (its ``trainer_state.json``) while ``num_train_epochs`` is unchanged;
with another number of epochs the last step depends on the data, and only the Trainer can say
(``target is None`` here: the caller that has a Trainer asks it).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..storage.layout import TRAINER_STATE_NAME


def read_trainer_state(checkpoint: str | os.PathLike | None) -> dict[str, Any] | None:
    """A checkpoint's ``trainer_state.json``, or None when there is none or it cannot be read."""
    if not checkpoint:
        return None
    try:
        with open(Path(checkpoint) / TRAINER_STATE_NAME, encoding="utf-8") as f:
            state = json.load(f)
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def last_step(state: dict[str, Any] | None, *, max_steps: Any, num_train_epochs: Any) -> int | None:
    """The run's last step for these arguments, given the trainer state of one of its checkpoints (see the
    module docstring); None when only the Trainer can tell."""
    try:
        if max_steps is not None and int(max_steps) > 0:
            return int(max_steps)
    except (TypeError, ValueError):
        return None
    if state is None:
        return None
    saved = state.get("max_steps")
    try:
        same_epochs = float(state.get("num_train_epochs")) == float(num_train_epochs)
    except (TypeError, ValueError):
        return None
    return saved if isinstance(saved, int) and saved > 0 and same_epochs else None


@dataclass(frozen=True)
class FinishedRun:
    """A completion record weighed against the arguments of the new start."""

    step: int
    """The step the run finished at."""
    target: int | None
    """The new start's last step; None when it depends on the data (another ``num_train_epochs``)."""

    @property
    def finished(self) -> bool:
        """Nothing to train: the new last step is not above the finished one."""
        return self.target is not None and self.target <= self.step

    @property
    def continues(self) -> bool:
        """The new last step is above the finished one: continue from the final checkpoint."""
        return self.target is not None and self.target > self.step


def weigh_completion(record: dict[str, Any], *, max_steps: Any, num_train_epochs: Any) -> FinishedRun:
    """The completion record ``record`` (``read_completion``) against a new start's ``max_steps`` and
    ``num_train_epochs`` (as ``TrainingArguments`` or a config's ``training`` section has them)."""
    try:
        step = int(record.get("step") or 0)
    except (TypeError, ValueError):
        step = 0
    state = None if _positive(max_steps) else read_trainer_state(record.get("checkpoint"))
    return FinishedRun(step, last_step(state, max_steps=max_steps, num_train_epochs=num_train_epochs))


def _positive(value: Any) -> bool:
    try:
        return value is not None and int(value) > 0
    except (TypeError, ValueError):
        return False
