"""What happens when training is stopped or fails: signal stops, peer loss, exceptions.

``EmergencyStop`` (owned by the Trainer callback) installs the signal watcher, exits with ``128 + signum``
after the emergency checkpoint is committed, exits when a peer rank is gone, and saves after an exception. It
reaches the callback only through ``EmergencyHost``, the few things an emergency needs from the save flow.

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
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn, Protocol

from .. import distributed
from ..cluster.slurm import Preemption
from ..errors import DiskFullError
from ..exitcodes import EXIT_REQUEUED, exit_code_for_signal
from ..options import EmergencyOptions
from ..rngstate import capture_rng_state, restore_rng_state
from ..storage.commit import is_committed
from ..storage.layout import checkpoint_dir_name
from ..system.platform import signal_name
from ..system.signals import SignalWatcher, exit_on_next_interrupt

logger = logging.getLogger(__name__)


class StepPhase:
    """Where the training loop is, as far as state consistency is concerned."""

    CONSISTENT = "consistent"
    """At a step boundary, or inside forward/backward: weights, optimizer and step counter agree."""
    UPDATING = "updating"
    """Between the optimizer step and the step end: weights changed, the step counter and scheduler not yet."""


ExceptionSaver = Callable[[BaseException], None]


class TrainGuard:
    """Wraps ``trainer.train`` of one Trainer instance so an escaping exception triggers ``save`` first.

    ``on_interrupt`` (when signals are ours to handle) is asked first about a ``KeyboardInterrupt``: a Ctrl+C
    while the signal watcher is not armed (before the first step, after the last) has nothing to save and must end
    the process like every other stop (exit 130, one line), not as a crash. It returns when the interrupt is
    something else (raised by code during the steps), which then takes the exception path."""

    def __init__(self, save: ExceptionSaver, on_interrupt: Callable[[KeyboardInterrupt], None] | None = None):
        self._save = save
        self._on_interrupt = on_interrupt
        self._trainer = None

    def install(self, trainer) -> None:
        if self._trainer is not None:
            return
        original = trainer.train
        save = self._save
        on_interrupt = self._on_interrupt

        @functools.wraps(original)
        def guarded_train(*args, **kwargs):
            try:
                return original(*args, **kwargs)
            except SystemExit:
                raise
            except BaseException as exc:
                if on_interrupt is not None and isinstance(exc, KeyboardInterrupt):
                    on_interrupt(exc)
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


class EmergencyHost(Protocol):
    """What an emergency needs from the callback's save flow, and nothing else."""

    last_saved_step: int | None
    """The step of the newest checkpoint this run saved (committed or handed to the background writer)."""

    @property
    def multi_process(self) -> bool:
        """Ranks agree on saves: one rank's exception leaves the others inside collectives."""

    def finish_background_save(self) -> None:
        """Wait for a background save in flight and publish it."""

    def save_now(self, trainer, folder: Path, reason: str) -> bool:
        """Write the Trainer's checkpoint of the current step synchronously and commit it; True if committed."""

    def record(
        self,
        event: str,
        *,
        step: int,
        signum: int = 0,
        error: BaseException | None = None,
        saved: bool = False,
    ) -> None:
        """Record ``"signal"`` or ``"exception"`` in the run's audit log."""

    def end_run(self, kind: str, step: int, detail: str = "") -> None:
        """Write the exit record and release the run lease."""

    def shut_down(self, *, agreement: bool) -> None:
        """Stop the background writer, and the rank agreement too when ``agreement`` (not after a peer loss or
        an exception on one rank: the other ranks are not there to close it with)."""


class EmergencyStop:
    """The stop and failure paths of ``AegisCheckpointCallback``, kept apart from its save flow.

    The callback forwards the Trainer's events (``attach`` at init, ``arm``/``disarm`` around training, the
    step phase hooks), asks ``pending_signal`` at each step end, hands the agreed signal to ``take_signal``, and
    calls ``exit_after_save`` once the emergency checkpoint is written.
    """

    def __init__(self, options: EmergencyOptions, host: EmergencyHost):
        self.options = options
        self.host = host
        self.watcher: SignalWatcher | None = None
        self.stop_signal: int | None = None
        self.phase = StepPhase.CONSISTENT
        self.train_begin_step: int | None = None
        self._trainer = None
        self._step_rng: dict | None = None
        self._guard = TrainGuard(
            self._save_after_exception, self._exit_after_interrupt if options.handle_signals else None
        )
        self.preemption = Preemption(options.preempt_signals)

    # ---- lifecycle -----------------------------------------------------------------------------------------
    def attach(self, trainer) -> None:
        """The callback found its Trainer: guard ``train()`` so an escaping exception saves first."""
        self._trainer = trainer
        if trainer is not None and self.options.save_on_exception:
            self._guard.install(trainer)

    def arm(self, args, *, step: int, needs_trainer: bool) -> None:
        """Training begins at ``step``: install the signal watcher (``needs_trainer``: features that only work
        when the callback reached the Trainer are asked for; warn if it did not)."""
        self.stop_signal = None
        self.train_begin_step = step
        self.phase = StepPhase.CONSISTENT
        if self.options.handle_signals:
            replace = ()
            if getattr(args, "enable_jit_checkpoint", False) and jit_sigterm_handler_installed():
                import signal

                replace = (signal.SIGTERM,)
                logger.warning(
                    "enable_jit_checkpoint=True: aegis-ckpt handles SIGTERM itself (a committed checkpoint at "
                    "the next step end); the Trainer's JIT handler is bypassed so the state is not saved twice."
                )
            self.watcher = SignalWatcher(
                grace_period_sec=self.options.grace_period_sec, notices=self.preemption.signals
            )
            self.watcher.install(replace=replace)
        if self._trainer is None and (self.options.save_on_exception or needs_trainer):
            logger.warning(
                "No emergency checkpoint on exceptions and no asynchronous saves: pass the callback to "
                "Trainer(callbacks=[...]) rather than add_callback(), so it can reach the Trainer."
            )

    def disarm(self) -> int | None:
        """Remove the signal handlers; returns the signal the watcher caught, if any."""
        caught = self.watcher.triggered if self.watcher is not None else None
        if self.watcher is not None:
            self.watcher.uninstall()
            self.watcher = None
        return caught

    # ---- step phases ---------------------------------------------------------------------------------------
    def step_begin(self) -> None:
        self.phase = StepPhase.CONSISTENT

    def optimizer_step(self) -> None:
        self.phase = StepPhase.UPDATING

    def step_end(self) -> None:
        self.phase = StepPhase.CONSISTENT
        if self._exception_saves_active:
            # An exception before the next step end should save the generators as they are now.
            self._step_rng = capture_rng_state(include_numpy=False)

    @property
    def _exception_saves_active(self) -> bool:
        return self._trainer is not None and self.options.save_on_exception and not self.host.multi_process

    # ---- signals -------------------------------------------------------------------------------------------
    @property
    def pending_signal(self) -> int:
        """The signal this rank caught and has not yet acted on (0: none)."""
        return (self.watcher.triggered or 0) if self.watcher is not None else 0

    def take_signal(self, signum: int) -> str:
        """All ranks agreed to stop for ``signum``: remember it and return the save reason."""
        if self.stop_signal is None:
            self.stop_signal = signum
            if self.watcher is not None and self.watcher.triggered is None:
                # Another rank got the signal: this rank saves with it and exits the same way.
                self.watcher.notify(signum, f"{signal_name(signum)} (on another rank)", quiet=True)
        return f"signal:{signal_name(self.stop_signal)}"

    def exit_after_save(self, state, folder: Path, *, committed: bool) -> NoReturn:
        signum = int(self.stop_signal or 0)
        code = exit_code_for_signal(signum)
        # A preemption notice under Slurm: the job is requeued and this exit must not count as a failure.
        if self.preemption.requeue_after(signum, step=state.global_step, committed=committed):
            code = EXIT_REQUEUED
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
        self.host.record("signal", step=state.global_step, signum=signum)
        self.host.end_run("signal", state.global_step, detail=signal_name(signum))
        if self.watcher is not None:
            self.watcher.mark_done()
        # A further Ctrl+C while this exit unwinds must not turn into a KeyboardInterrupt traceback: the exit
        # handler takes SIGINT over before the watcher lets go of it, so no Ctrl+C finds Python's default.
        exit_on_next_interrupt(
            code, previous=self.watcher.handler_before(signal.SIGINT) if self.watcher else None
        )
        self.disarm()
        self.host.shut_down(
            agreement=True
        )  # nothing is in flight any more: stop the writer process, free shared memory
        # SystemExit unwinds through trainer.train(): the user's code after it does not run as if training ended.
        raise SystemExit(code)

    def exit_after_peer_loss(self, error: Exception, local_signal: int) -> NoReturn:
        code = exit_code_for_signal(local_signal) if local_signal else 1
        logger.error(
            "%s. No collective save is possible; exiting with code %d. The last committed checkpoint stays the "
            "resume point.",
            error,
            code,
        )
        if self.watcher is not None:
            self.watcher.mark_done()
        self.disarm()
        self.host.end_run("exception", self.host.last_saved_step or 0, detail="a peer rank is gone")
        self.host.shut_down(
            agreement=False
        )  # a save in flight finishes in its staging folder; the next run publishes it
        raise SystemExit(code) from error

    def _exit_after_interrupt(self, exc: KeyboardInterrupt) -> None:
        """Ctrl+C outside the armed window (loading before the first step, or after the last): nothing to save,
        so record the stop and exit like every other stop, 130, with one line and no traceback. While the
        watcher is armed, a Ctrl+C never raises: such a ``KeyboardInterrupt`` was raised by code, and returns to
        the exception path (an emergency checkpoint, then the traceback)."""
        import signal

        if self.watcher is not None:
            return
        code = exit_code_for_signal(signal.SIGINT)
        step = self._trainer.state.global_step if self._trainer is not None else 0
        self.disarm()
        exit_on_next_interrupt(code)
        logger.warning(
            "Interrupted by SIGINT at step %d, outside the training steps: nothing to save (the last committed "
            "checkpoint stays the resume point); exiting with code %d",
            step,
            code,
        )
        self.host.record("signal", step=step, signum=int(signal.SIGINT))
        self.host.end_run("signal", step, detail="SIGINT")
        self.host.shut_down(agreement=False)
        raise SystemExit(code) from None

    # ---- exceptions ----------------------------------------------------------------------------------------
    def _save_after_exception(self, exc: BaseException) -> None:
        """Called by the train() guard once an exception escaped training; the exception is re-raised after."""
        saved = False
        try:
            saved = self._emergency_save_for(exc)
        finally:
            step = self._trainer.state.global_step if self._trainer is not None else 0
            self.host.record("exception", step=step, error=exc, saved=saved)
            self.host.end_run("exception", step, detail=type(exc).__name__)
            self.host.shut_down(agreement=False)

    def _emergency_save_for(self, exc: BaseException) -> bool:
        """Save the last completed step if that is possible and safe; True when a checkpoint was committed."""
        self.host.finish_background_save()
        if self.watcher is not None:
            self.watcher.mark_done()
        self.disarm()
        trainer = self._trainer
        name = type(exc).__name__
        if trainer is None or not getattr(trainer, "is_in_train", True):
            return False
        if self.host.multi_process:
            logger.error(
                "%s escaped training on rank %d of a multi-process run: no emergency checkpoint (the other ranks "
                "cannot join a save); the last committed checkpoint stays the resume point.",
                name,
                distributed.rank(),
            )
            return False
        step = trainer.state.global_step
        if isinstance(exc, DiskFullError):
            # The save that just failed for lack of space would fail the same way: never write it again.
            logger.error("%s at step %d: no emergency checkpoint (it would not fit either)", name, step)
            return False
        if self.phase != StepPhase.CONSISTENT:
            logger.error(
                "%s during the optimizer update of step %d: the weights are half-updated, so no emergency "
                "checkpoint is saved; the last committed checkpoint stays the resume point.",
                name,
                step + 1,
            )
            return False
        folder = Path(trainer.args.output_dir) / checkpoint_dir_name(step)
        if self.train_begin_step is None or step <= self.train_begin_step:
            logger.error("%s escaped training at step %d before a step completed in this run", name, step)
            return False
        if self.host.last_saved_step == step or is_committed(folder):
            # E.g. an error while pruning after the commit: saving again would rewrite a committed folder.
            logger.error("%s escaped training at step %d, which is already committed", name, step)
            return False
        logger.error("%s escaped training at step %d: saving an emergency checkpoint", name, step)
        if self._step_rng is not None:
            # Forward passes since the step end advanced the generators; save them as they were at that step.
            restore_rng_state(self._step_rng)
        return self.host.save_now(trainer, folder, f"exception:{name}")
