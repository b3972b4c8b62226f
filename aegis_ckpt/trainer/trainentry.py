"""What ``trainer.train(...)`` resumes from, decided before the Trainer looks at the output dir.

Two Trainer behaviours would break our guarantees, and both happen inside ``Trainer.train`` before any callback
event could intervene:

* ``resume_from_checkpoint=True`` makes the Trainer call ``get_last_checkpoint``: the highest step number, with
  no integrity check, so a half-written folder is picked (and the run crashes on its safetensors header).
* Resumed from the final checkpoint (``global_step >= max_steps``) the Trainer still runs one more optimizer step
  when the run ended mid-epoch: its loop checks ``should_training_stop`` only after a step. Every rerun of a
  finished script would then train a step past the end, rewrite the final checkpoint and prune a real one.

So the callback wraps ``train`` of the one Trainer instance it serves (the instance attribute only, as
``emergency.TrainGuard`` does). ``True`` becomes ``find_resume_checkpoint(output_dir)``: the newest intact
checkpoint, damaged and half-written newer folders set aside. A checkpoint whose step already reaches
``max_steps`` is not trained from: its weights and state are loaded into the Trainer (code after ``train()`` sees
the finished model, as after an uninterrupted run), the completion record is written if a stop came before it,
and ``train`` returns without a step. Raising ``max_steps`` (``TrainingArguments(max_steps=...)``) or
``num_train_epochs`` continues a finished run from its final checkpoint: one log line says so ("continuing finished
run from step N to M") and the completion record is withdrawn until the new end (``runstate.continuation``).
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
from collections.abc import Callable

from ..runstate.continuation import last_step, read_trainer_state
from ..storage.layout import TRAINER_STATE_NAME
from .continuefinished import continue_finished_run

logger = logging.getLogger(__name__)


def checkpoint_step_and_target(checkpoint: str | os.PathLike, args) -> tuple[int, int] | None:
    """(the checkpoint's global step, the run's last step) from its ``trainer_state.json``; ``max_steps`` from
    the arguments when set (> 0), else the one the checkpoint was trained towards (an epoch-based run whose
    ``num_train_epochs`` is unchanged). None when the state cannot be read or the target is unknown."""
    state = read_trainer_state(checkpoint)
    try:
        step = int(state["global_step"])  # type: ignore[index]
    except (KeyError, TypeError, ValueError):
        return None
    target = last_step(
        state,
        max_steps=getattr(args, "max_steps", -1),
        num_train_epochs=getattr(args, "num_train_epochs", None),
    )
    return None if target is None else (step, target)


class TrainEntry:
    """Wraps ``trainer.train`` (see the module docstring). ``on_finished(trainer, checkpoint, step)`` runs when a
    finished checkpoint was loaded instead of training (the callback writes the completion record there)."""

    def __init__(self, on_finished: Callable[[object, str, int], None]):
        self._on_finished = on_finished
        self._trainer = None

    def install(self, trainer) -> None:
        if trainer is None or self._trainer is not None:
            return
        inner = trainer.train
        parameters = inspect.signature(inner).parameters
        entry = self

        @functools.wraps(inner)
        def train(*args, **kwargs):
            bound = inspect.signature(inner).bind_partial(*args, **kwargs)
            resume = bound.arguments.get("resume_from_checkpoint")
            if resume is True:
                resume = entry.resolve_latest(trainer) or True  # nothing intact: the Trainer's own error
            if isinstance(resume, (str, os.PathLike)):
                finished = entry.finished_output(trainer, resume)
                if finished is not None:
                    return finished
                continue_finished_run(trainer, resume, checkpoint_step_and_target(resume, trainer.args))
            if "resume_from_checkpoint" in parameters:
                bound.arguments["resume_from_checkpoint"] = resume
            return inner(*bound.args, **bound.kwargs)

        trainer.train = train
        self._trainer = trainer

    @staticmethod
    def resolve_latest(trainer) -> str | None:
        from ..resume import find_resume_checkpoint

        found = find_resume_checkpoint(trainer.args.output_dir)
        logger.info("resume_from_checkpoint=True: the newest intact checkpoint is %s", found or "none")
        return found

    def finished_output(self, trainer, checkpoint: str | os.PathLike):
        """When ``checkpoint`` already reaches the run's last step: load it, say so, and return what
        ``train()`` returns (``TrainOutput``); else None (train as usual)."""
        steps = checkpoint_step_and_target(checkpoint, trainer.args)
        if steps is None or steps[0] < steps[1]:
            return None
        step, target = steps
        from transformers.trainer_callback import TrainerState
        from transformers.trainer_utils import TrainOutput

        trainer._load_from_checkpoint(os.fspath(checkpoint))
        trainer.state = TrainerState.load_from_json(os.path.join(checkpoint, TRAINER_STATE_NAME))
        logger.warning(
            "Training already finished: %s is at step %d of max_steps=%d, so no step is trained and no checkpoint "
            "changes; the model holds its weights. Raise max_steps to train further.",
            checkpoint,
            step,
            target,
        )
        self._on_finished(trainer, os.fspath(checkpoint), step)
        loss = trainer.state.log_history[-1].get("train_loss", 0.0) if trainer.state.log_history else 0.0
        return TrainOutput(step, float(loss), {"already_finished": True})
