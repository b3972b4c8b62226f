"""``EmergencyCheckpointManager``: saves on stop signals and unhandled exceptions in a custom loop (a facade over
the ``engine.LoopCheckpointer`` of a ``RollingCheckpointManager``)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from ..system.signals import SignalWatcher, signal_numbers
from .engine import LoopCheckpointer
from .rolling import RollingCheckpointManager

logger = logging.getLogger(__name__)

LOOP_STOP_SIGNALS: tuple[str, ...] = ("SIGTERM", "SIGINT", "SIGHUP")
"""The signals a custom loop stops on by default (by name: those missing on this platform are skipped)."""


class EmergencyCheckpointManager:
    """Saves on stop signals and unhandled exceptions in a custom loop.

    A signal (SIGTERM, SIGINT, SIGHUP; Windows console events with the real ``signals`` module) only sets a flag;
    at the next safe point (``step()``, the end of ``unsafe()``) a checkpoint is committed and the process exits
    with ``128 + signum``. An unhandled exception inside ``protect()`` triggers a best-effort save when the state
    is known to be consistent (outside every ``unsafe()`` block), then the exception is re-raised; a failing save
    never hides it.

    Args:
        manager (`RollingCheckpointManager` or path):
            The manager whose checkpoints it saves (shared, not copied); a path creates one with defaults.
        signals (`tuple`, *optional*, defaults to SIGTERM, SIGINT, SIGHUP):
            Signal names or numbers to watch (those that do not exist on this platform are skipped).
        save_on_exception (`bool`, *optional*, defaults to `True`):
            Try the best-effort save on unhandled exceptions.

    Example:

    ```python
    emergency = EmergencyCheckpointManager(ckpt_manager)
    with emergency:                     # installs the handlers, protects the loop, restores the handlers
        for batch in loader:
            loss = model(**batch).loss
            loss.backward()
            with ckpt_manager.unsafe():
                optimizer.step(); scheduler.step(); optimizer.zero_grad()
            ckpt_manager.step()
    ```
    """

    def __init__(
        self,
        manager: RollingCheckpointManager | str | os.PathLike,
        *,
        signals=LOOP_STOP_SIGNALS,
        save_on_exception: bool = True,
    ):
        self.manager = (
            manager if isinstance(manager, RollingCheckpointManager) else RollingCheckpointManager(manager)
        )
        self._engine = self.manager._engine
        self.watcher = SignalWatcher(signals=signal_numbers(signals))
        self.save_on_exception = save_on_exception
        self._installed = False

    def install(self) -> EmergencyCheckpointManager:
        """Install the signal handlers (main thread only); the manager's safe points act on them."""
        if not self._installed:
            self.watcher.install()
            self._engine.watcher = self.watcher
            self._installed = True
        return self

    def uninstall(self) -> None:
        if self._installed:
            self.watcher.uninstall()
            if self._engine.watcher is self.watcher:
                self._engine.watcher = None
            self._installed = False

    @property
    def triggered(self) -> int | None:
        """The signal seen and not yet acted on, or None."""
        return self.watcher.triggered

    def check(self) -> None:
        """A safe point that does not count a step: act on a pending signal (save, then exit)."""
        self._engine.safe_point()

    @contextmanager
    def protect(self) -> Iterator[EmergencyCheckpointManager]:
        """Run a block with the exception behaviour above (signals need ``install()``)."""
        try:
            yield self
        except (SystemExit, GeneratorExit):
            raise
        except BaseException as e:
            if self.save_on_exception:
                save_after_exception(self._engine, e)
            else:
                self._engine.recorder.exception(e, step=self._engine.global_step, saved=False)
            self._engine.close("exception", detail=type(e).__name__)
            raise

    def __enter__(self) -> EmergencyCheckpointManager:
        self.install()
        self._block = ExitStack()
        self._block.callback(self.uninstall)  # last, after the protected block has closed
        self._block.enter_context(self.protect())
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        return self._block.__exit__(exc_type, exc, tb)


def save_after_exception(engine: LoopCheckpointer, error: BaseException) -> bool:
    """Best-effort save on an unhandled exception, if the state is consistent. Never raises: the caller
    re-raises ``error``. Returns whether a checkpoint was committed."""
    name = type(error).__name__
    ok, why = engine.state_is_consistent()
    saved = False
    if engine.model is None:
        logger.error("%s: no model registered, nothing to save", name)
    elif not ok:
        logger.error("%s at step %d: not saving, because %s", name, engine.global_step, why)
    elif engine.ranks.active:
        logger.error(
            "%s at step %d on rank %d of a multi-process run: no emergency checkpoint (the other ranks cannot "
            "join a save); the last committed checkpoint stays the resume point",
            name,
            engine.global_step,
            engine.ranks.rank,
        )
    else:
        try:
            path = engine.save_or_raise(tag=None, reason=f"exception:{name}", pinned=False)
            saved = True
            logger.error("%s at step %d: emergency checkpoint %s committed", name, engine.global_step, path)
        except BaseException as save_error:  # the original error matters more; report this one and go on
            logger.error(
                "%s at step %d: the emergency checkpoint failed too (%s: %s); the last committed checkpoint "
                "stays the resume point",
                name,
                engine.global_step,
                type(save_error).__name__,
                save_error,
            )
    engine.recorder.exception(error, step=engine.global_step, saved=saved)
    return saved
