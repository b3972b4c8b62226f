"""Best-effort checkpoints when an exception escapes training.

An exception that leaves ``trainer.train()`` skips every callback event, so the callback guards the call
itself: at ``on_init_end`` it wraps this Trainer instance's ``train`` method (the instance attribute only; the
class and other trainers are untouched). The guard runs the save function it is given while the model,
optimizer and trainer state are still alive, then re-raises the original exception unchanged; a failure of the
save is logged and never replaces it. ``SystemExit`` (our own exit after an emergency save) passes through.

Whether the state is still consistent is tracked by ``StepPhase``: it is, unless the exception came while the
optimizer was updating the weights (between ``on_pre_optimizer_step`` and ``on_step_end``).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

logger = logging.getLogger(__name__)


class StepPhase:
    """Where the training loop is, as far as state consistency is concerned."""

    CONSISTENT = "consistent"
    """At a step boundary, or inside forward/backward: weights, optimizer and step counter agree."""
    UPDATING = "updating"
    """Between the optimizer step and the step end: weights changed, the step counter and scheduler not yet."""


ExceptionSaver = Callable[[BaseException], None]


class TrainGuard:
    """Wraps ``trainer.train`` of one Trainer instance so an escaping exception triggers ``save`` first."""

    def __init__(self, save: ExceptionSaver):
        self._save = save
        self._trainer = None

    def install(self, trainer) -> None:
        if self._trainer is not None:
            return
        original = trainer.train
        save = self._save

        @functools.wraps(original)
        def guarded_train(*args, **kwargs):
            try:
                return original(*args, **kwargs)
            except SystemExit:
                raise
            except BaseException as exc:
                try:
                    save(exc)
                except BaseException as save_error:  # noqa: BLE001 - must never hide the original error
                    logger.error(
                        "The emergency checkpoint after %s failed (%s: %s); the last committed checkpoint stays "
                        "the resume point.",
                        type(exc).__name__,
                        type(save_error).__name__,
                        save_error,
                    )
                raise

        trainer.train = guarded_train
        self._trainer = trainer

    def uninstall(self) -> None:
        if self._trainer is not None and "train" in vars(self._trainer):
            del self._trainer.train
        self._trainer = None
