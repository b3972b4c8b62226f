"""What happens when training is stopped or fails: signal stops, peer loss, exceptions.

``EmergencyStops`` (mixed into the Trainer callback) installs the signal watcher, exits with ``128 + signum``
after the emergency checkpoint is committed, exits when a peer rank is gone, and saves after an exception.

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
import sys
import time
from collections.abc import Callable
from pathlib import Path

from .. import distributed
from ..distributed import StepFlags
from ..exitcodes import exit_code_for_signal
from ..rngstate import restore_rng_state
from ..storage.commit import is_committed
from ..storage.layout import checkpoint_dir_name
from ..system.platform import signal_name
from ..system.signals import SignalWatcher

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


def find_trainer():
    """The ``Trainer`` calling this callback, found on the call stack (callbacks are not given it). Needed only
    for exception-time saves, which must guard ``train()`` and call the Trainer's own writer."""
    from transformers import Trainer

    frame = sys._getframe(1)
    for _ in range(12):
        if frame is None:
            break
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, Trainer):
            return candidate
        frame = frame.f_back
    return None


def jit_sigterm_handler_installed() -> bool:
    import signal

    handler = signal.getsignal(signal.SIGTERM)
    owner = getattr(handler, "__self__", None)
    return type(owner).__module__.endswith("trainer_jit_checkpoint")


class EmergencyStops:
    """The stop and failure paths of ``AegisCheckpointCallback``, kept apart from its save flow: installing the
    signal watcher and the ``train()`` guard, the exit after an emergency checkpoint, the exit when a peer rank is
    gone, and the best-effort save after an exception.

    A mixin: the callback provides ``emergency`` (``EmergencyOptions``), ``watcher``, ``stop_signal``,
    ``_trainer``, ``_guard``, ``_agreement``, ``_phase``, ``_step_rng``, ``_train_begin_step``,
    ``last_saved_step``, ``_save_reason``, ``_async`` (an ``AsyncSaver``) and the methods ``_collect_async``,
    ``_commit_and_retain`` and
    ``_end_run_record`` / ``_recorder``.
    """

    def _install_emergency_handlers(self, args) -> None:
        if self.emergency.handle_signals:
            replace = ()
            if getattr(args, "enable_jit_checkpoint", False) and jit_sigterm_handler_installed():
                import signal

                replace = (signal.SIGTERM,)
                logger.warning(
                    "enable_jit_checkpoint=True: aegis-ckpt handles SIGTERM itself (a committed checkpoint at "
                    "the next step end); the Trainer's JIT handler is bypassed so the state is not saved twice."
                )
            self.watcher = SignalWatcher(grace_period_sec=self.emergency.grace_period_sec)
            self.watcher.install(replace=replace)
        if self._trainer is None and (self.emergency.save_on_exception or self.async_options.enabled):
            logger.warning(
                "No emergency checkpoint on exceptions and no asynchronous saves: pass the callback to "
                "Trainer(callbacks=[...]) rather than add_callback(), so it can reach the Trainer."
            )

    def _remove_emergency_handlers(self) -> None:
        if self.watcher is not None:
            self.watcher.uninstall()
            self.watcher = None

    # ---- emergency exits -----------------------------------------------------------------------------------
    def _exit_after_emergency_save(self, state, folder: Path, *, committed: bool) -> None:
        signum = int(self.stop_signal or 0)
        code = exit_code_for_signal(signum)
        since = self.watcher.triggered_at if self.watcher is not None else None
        took = (
            f"{time.monotonic() - since:.1f} s after the signal" if since is not None else "after the signal"
        )
        if committed:
            logger.warning(
                "Stopped by %s: emergency checkpoint %s committed at step %d (%s); exiting with code %d",
                signal_name(signum),
                folder,
                state.global_step,
                took,
                code,
            )
        else:
            logger.error(
                "Stopped by %s: the emergency checkpoint at step %d could not be committed; exiting with code %d "
                "(the last committed checkpoint stays the resume point)",
                signal_name(signum),
                state.global_step,
                code,
            )
        if self._recorder is not None:
            self._recorder.signal(signum, step=state.global_step)
        self._end_run_record("signal", state.global_step, detail=signal_name(signum))
        if self.watcher is not None:
            self.watcher.mark_done()
        self._agreement.close()
        self._remove_emergency_handlers()
        self._async.close()  # nothing is in flight any more: stop the writer process, free shared memory
        # SystemExit unwinds through trainer.train(): the user's code after it does not run as if training ended.
        raise SystemExit(code)

    def _exit_after_peer_loss(self, error: Exception, local: StepFlags):
        code = exit_code_for_signal(local.signal) if local.signal else 1
        logger.error(
            "%s. No collective save is possible; exiting with code %d. The last committed checkpoint stays the "
            "resume point.",
            error,
            code,
        )
        if self.watcher is not None:
            self.watcher.mark_done()
        self._remove_emergency_handlers()
        self._end_run_record("exception", self.last_saved_step or 0, detail="a peer rank is gone")
        self._async.close()  # a save in flight finishes in its staging folder; the next run publishes it
        raise SystemExit(code) from error

    def _save_after_exception(self, exc: BaseException) -> None:
        """Called by the train() guard once an exception escaped training; the exception is re-raised after."""
        saved = False
        try:
            saved = self._emergency_save_for(exc)
        finally:
            step = self._trainer.state.global_step if self._trainer is not None else 0
            if self._recorder is not None:
                self._recorder.exception(exc, step=step, saved=saved)
            self._end_run_record("exception", step, detail=type(exc).__name__)
            self._async.close()

    def _emergency_save_for(self, exc: BaseException) -> bool:
        """Save the last completed step if that is possible and safe; True when a checkpoint was committed."""
        self._collect_async(wait=True)
        if self.watcher is not None:
            self.watcher.mark_done()
        self._remove_emergency_handlers()
        trainer = self._trainer
        exc_type = type(exc)
        if trainer is None or not getattr(trainer, "is_in_train", True):
            return False
        if self._agreement.active:
            logger.error(
                "%s escaped training on rank %d of a multi-process run: no emergency checkpoint (the other ranks "
                "cannot join a save); the last committed checkpoint stays the resume point.",
                exc_type.__name__,
                distributed.rank(),
            )
            return False
        state = trainer.state
        step = state.global_step
        if self._phase != StepPhase.CONSISTENT:
            logger.error(
                "%s during the optimizer update of step %d: the weights are half-updated, so no emergency "
                "checkpoint is saved; the last committed checkpoint stays the resume point.",
                exc_type.__name__,
                step + 1,
            )
            return False
        folder = Path(trainer.args.output_dir) / checkpoint_dir_name(step)
        if self._train_begin_step is None or step <= self._train_begin_step:
            logger.error(
                "%s escaped training at step %d before a step completed in this run", exc_type.__name__, step
            )
            return False
        if self.last_saved_step == step or is_committed(folder):
            # E.g. an error while pruning after the commit: saving again would rewrite a committed folder.
            logger.error(
                "%s escaped training at step %d, which is already committed", exc_type.__name__, step
            )
            return False
        logger.error(
            "%s escaped training at step %d: saving an emergency checkpoint", exc_type.__name__, step
        )
        if self._step_rng is not None:
            # Forward passes since the step end advanced the generators; save them as they were at that step.
            restore_rng_state(self._step_rng)
        self._save_reason = f"exception:{exc_type.__name__}"
        t0 = time.perf_counter()
        trainer._save_checkpoint(trainer.model, trial=None)
        if self._commit_and_retain(state, folder, time.perf_counter() - t0, world_size=1):
            self.last_saved_step = step
            return True
        return False
