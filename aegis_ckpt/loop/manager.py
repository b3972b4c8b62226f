"""The seed API for custom training loops: ``RollingCheckpointManager``, ``EmergencyCheckpointManager`` and
``EnhancedAutoCheckpointManager``.

All three are thin facades over one ``loop.LoopCheckpointer`` (which itself uses the same commit, store, resume,
policy and run-state parts as the Trainer callback); an Emergency or Enhanced manager built on a Rolling one
shares its instance, so there is one lease, one lock and one save path per directory. See
``docs/custom-loops.md``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..options import CheckpointOptions, RemoteOptions
from ..policy import SavePolicy
from ..runstate.start import RunStart
from ..system.signals import SignalWatcher
from .engine import LoopCheckpointer

logger = logging.getLogger(__name__)

DEFAULT_SIGNALS: tuple[str, ...] = ("SIGTERM", "SIGINT", "SIGHUP")


def _signal_numbers(signals) -> tuple[int, ...]:
    """Signal numbers from names or numbers; names this platform lacks (SIGHUP on Windows) are skipped."""
    import signal

    out = []
    for s in signals:
        if not isinstance(s, str):
            out.append(int(s))
        elif hasattr(signal, s):
            out.append(int(getattr(signal, s)))
    return tuple(out)


class RollingCheckpointManager:
    """Time-based rolling checkpoints for a custom PyTorch loop.

    Args:
        base_dir (`str` or `os.PathLike`):
            Output directory; ``checkpoint-<step>`` folders are committed into it. Created if needed. Only one
            live process may use it at a time (``RunLockedError``).
        max_keep (`int`, *optional*, defaults to 5):
            Committed rolling checkpoints to keep; older ones are deleted only after a newer one commits.
        save_interval_sec (`float`, *optional*, defaults to 180):
            Wall-clock seconds between automatic saves, taken at the next safe point once due.
        keep_tagged (`bool`, *optional*, defaults to `True`):
            Keep checkpoints saved with ``save_checkpoint(tag)`` outside the rolling window (never pruned).
        adaptive (`bool`, *optional*, defaults to `False`):
            Let the interval follow the measured save cost and failure history (``CheckpointOptions.adaptive``).
        options (`CheckpointOptions`, *optional*):
            Every option at once (verification, milestones, audit sha256, adaptive bounds, ...); when given,
            ``max_keep``, ``save_interval_sec`` and ``adaptive`` must be left at their defaults.
        policy (`SavePolicy`, *optional*):
            A custom save policy instead of the one the options describe.
        clock (`Callable[[], float]`, *optional*, defaults to `time.monotonic`):
            Time source of the policy; tests inject a fake one.
        remote_url (`str`, *optional*), remote_max_keep (`int`, *optional*), remote_options (`dict`, *optional*):
            Mirror every committed checkpoint to object storage in the background and resume from the newest
            verified remote copy when it is newer than the local ones (``RemoteOptions``, ``docs/remote.md``).

    Example:

    ```python
    ckpt_manager = RollingCheckpointManager("runs/aegis_v2", max_keep=5, save_interval_sec=180)
    ckpt_manager.register_model(model, tokenizer, optimizer=optimizer, scheduler=scheduler)
    state = ckpt_manager.resume()                  # None on a fresh start
    step = state["step"] if state else 0
    ckpt_manager.start_auto_save(model, tokenizer, "epoch")
    while step < total_steps:
        ...                                         # forward, backward, optimizer.step(), scheduler.step()
        step += 1
        ckpt_manager.step(step, epoch=epoch)        # safe point: saves here when one is due
    ckpt_manager.save_checkpoint("manual_save")    # tagged, kept outside the rolling window
    ckpt_manager.finish()                           # final checkpoint + completion marker
    ```
    """

    def __init__(
        self,
        base_dir: str | os.PathLike,
        max_keep: int = 5,
        save_interval_sec: float = 180.0,
        *,
        keep_tagged: bool = True,
        adaptive: bool = False,
        options: CheckpointOptions | None = None,
        policy: SavePolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
        remote_url: str | None = None,
        remote_max_keep: int | None = None,
        remote_options: dict | None = None,
    ):
        remote = RemoteOptions(url=remote_url, max_keep=remote_max_keep, options=remote_options or {})
        if options is None:
            options = CheckpointOptions(
                max_keep=max_keep, save_interval_sec=save_interval_sec, adaptive=adaptive
            )
        elif (max_keep, save_interval_sec, adaptive) != (5, 180.0, False):
            raise TypeError("pass either options= or max_keep/save_interval_sec/adaptive, not both")
        self._engine = LoopCheckpointer(
            base_dir, options, keep_tagged=keep_tagged, policy=policy, clock=clock, remote=remote
        )

    # ---- registration ----------------------------------------------------------------------------------------
    def register_model(self, model, tokenizer=None, optimizer=None, scheduler=None, **extra_state) -> None:
        """Register what every checkpoint holds. ``extra_state``: named objects with ``state_dict()`` /
        ``load_state_dict()`` (a GradScaler, an EMA model, a stateful sampler)."""
        self._engine.register(model, tokenizer, optimizer, scheduler, **extra_state)

    def register_state(self, name: str, obj) -> None:
        """Register one more named object with ``state_dict()`` / ``load_state_dict()``."""
        self._engine.register_state(name, obj)

    # ---- saving ------------------------------------------------------------------------------------------------
    def start_auto_save(self, model=None, tokenizer=None, tag: str = "auto") -> None:
        """Arm time-based saving: from now on a checkpoint is committed at the first safe point after each
        ``save_interval_sec``.

        ``model`` and ``tokenizer`` are the registered ones: passing them registers them when nothing is
        registered yet (so the seed's two-line form works), passing the same objects again is fine, and passing
        *different* objects raises ``ConfigError`` (one checkpoint must capture one consistent set; call
        ``register_model`` to switch). ``tag`` labels the automatic saves (manifest ``meta.tag``, audit log); they
        stay in the rolling window whatever the tag.
        """
        self._engine.arm(model, tokenizer, tag)

    def stop_auto_save(self) -> None:
        self._engine.disarm()

    def step(self, global_step: int | None = None, **values: Any) -> bool:
        """Call after each optimizer step: a safe point. ``global_step`` defaults to the previous one + 1;
        ``values`` (JSON: epoch, data position, ...) are saved with the checkpoints and returned by ``resume()``.
        Saves when one is due, and after a stop signal saves and exits. Returns True when it committed one."""
        return self._engine.step(global_step, **values)

    def update(self, **values: Any) -> None:
        """Set loop values saved with the checkpoints, without a safe point."""
        self._engine.update(**values)

    def unsafe(self):
        """Context manager around code that changes the state (``optimizer.step()``, counters): no save sees it
        half done, a save from another thread waits for it, and its end is a safe point."""
        return self._engine.unsafe()

    def save_checkpoint(self, tag: str = "manual", *, keep: bool | None = None) -> Path:
        """Save and commit now (call it where the state is consistent, e.g. after an epoch). A tagged save is kept
        outside the rolling window unless ``keep=False`` (or ``keep_tagged=False``). Returns the folder; raises
        ``CommitError`` if it could not be committed."""
        return self._engine.save_now(tag, keep=keep)

    # ---- resuming ----------------------------------------------------------------------------------------------
    def load_latest(self, *, restore_rng: bool = True) -> dict[str, Any] | None:
        """Restore the newest intact checkpoint (model, optimizer, scheduler, registered state, RNG) into the
        registered objects. Returns the loop state ``{"step": ..., **values}``, or None when there is none.
        Damaged or half-written newer folders are moved to ``.aegis/quarantine/``."""
        return self._engine.resume(restore_rng=restore_rng)

    resume = load_latest

    # ---- end ---------------------------------------------------------------------------------------------------
    def finish(self) -> Path:
        """Commit the final state, mark the run complete (``.aegis/completed.json``) and release the directory."""
        return self._engine.finish()

    def close(self) -> None:
        """Release the directory with a clean-exit record (also done at interpreter exit)."""
        self._engine.close("closed")

    def __enter__(self) -> RollingCheckpointManager:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is not None and not isinstance(exc, SystemExit):
            self._engine.close("exception", detail=exc_type.__name__)
        else:
            self._engine.close("closed")

    # ---- read-only views ---------------------------------------------------------------------------------------
    @property
    def base_dir(self) -> Path:
        return self._engine.output_dir

    @property
    def global_step(self) -> int:
        return self._engine.global_step

    @property
    def state(self) -> dict[str, Any]:
        return self._engine.loop_state()

    @property
    def last_checkpoint(self) -> Path | None:
        return self._engine.last_checkpoint

    @property
    def interval_sec(self) -> float:
        return self._engine.policy.interval_sec

    @property
    def run_start(self) -> RunStart | None:
        """How the previous process on this directory ended (fresh, clean stop, crash, power loss, finished)."""
        return self._engine.run_start


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
        signals=DEFAULT_SIGNALS,
        save_on_exception: bool = True,
    ):
        self.manager = (
            manager if isinstance(manager, RollingCheckpointManager) else RollingCheckpointManager(manager)
        )
        self._engine = self.manager._engine
        self.watcher = SignalWatcher(signals=_signal_numbers(signals))
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
                self._engine.handle_exception(e)
            else:
                self._engine.recorder.exception(e, step=self._engine.global_step, saved=False)
            self._engine.close("exception", detail=type(e).__name__)
            raise

    def __enter__(self) -> EmergencyCheckpointManager:
        self.install()
        self._protect = self.protect()
        self._protect.__enter__()
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            return bool(self._protect.__exit__(exc_type, exc, tb))
        finally:
            self.uninstall()


class EnhancedAutoCheckpointManager:
    """Rolling and emergency checkpoints together, with resume on start and power-loss detection: the
    walk-away API for a custom loop.

    Constructing it claims the directory and reports how the previous process ended (fresh start, clean stop,
    crash, power loss or reboot with the training time lost, already finished). ``start()`` registers the objects,
    restores the newest intact checkpoint, arms auto-save and installs the signal handlers. Used as a context
    manager it also protects the loop against exceptions and releases the directory at the end.

    Args:
        base_dir, max_keep, save_interval_sec, keep_tagged, adaptive, options, policy, clock, remote_url,
        remote_max_keep, remote_options:
            As for `RollingCheckpointManager`.
        signals, save_on_exception:
            As for `EmergencyCheckpointManager`.

    Example:

    ```python
    with EnhancedAutoCheckpointManager("runs/aegis_v2", save_interval_sec=180) as ckpt:
        state = ckpt.start(model, tokenizer, optimizer=optimizer, scheduler=scheduler)
        step = state["step"] if state else 0       # a finished run restores its last step: the loop is empty
        while step < total_steps:
            ...
            with ckpt.unsafe():
                optimizer.step(); scheduler.step(); optimizer.zero_grad()
            step += 1
            ckpt.step(step, epoch=epoch)
        ckpt.finish()
    ```
    """

    def __init__(
        self,
        base_dir: str | os.PathLike,
        max_keep: int = 5,
        save_interval_sec: float = 180.0,
        *,
        keep_tagged: bool = True,
        adaptive: bool = False,
        options: CheckpointOptions | None = None,
        policy: SavePolicy | None = None,
        signals=DEFAULT_SIGNALS,
        save_on_exception: bool = True,
        clock: Callable[[], float] = time.monotonic,
        remote_url: str | None = None,
        remote_max_keep: int | None = None,
        remote_options: dict | None = None,
    ):
        self.rolling = RollingCheckpointManager(
            base_dir,
            max_keep,
            save_interval_sec,
            keep_tagged=keep_tagged,
            adaptive=adaptive,
            options=options,
            policy=policy,
            clock=clock,
            remote_url=remote_url,
            remote_max_keep=remote_max_keep,
            remote_options=remote_options,
        )
        self.emergency = EmergencyCheckpointManager(
            self.rolling, signals=signals, save_on_exception=save_on_exception
        )
        self._engine = self.rolling._engine

    def start(
        self, model, tokenizer=None, optimizer=None, scheduler=None, *, tag: str = "auto", **extra_state
    ):
        """Register, resume (returns the loop state or None), arm auto-save and install the signal handlers.
        For an already finished run it restores the final checkpoint (so a loop up to the last step does
        nothing) and logs that there is nothing to do."""
        self.rolling.register_model(model, tokenizer, optimizer, scheduler, **extra_state)
        state = self.rolling.resume()
        if self.is_finished:
            logger.warning("Run state: %s", self._engine.run_start.message)
        self.rolling.start_auto_save(tag=tag)
        self.emergency.install()
        return state

    @property
    def run_start(self) -> RunStart | None:
        return self._engine.run_start

    @property
    def is_finished(self) -> bool:
        """True when this run had already finished before this process started."""
        return self._engine.is_finished

    def step(self, global_step: int | None = None, **values: Any) -> bool:
        return self.rolling.step(global_step, **values)

    def update(self, **values: Any) -> None:
        self.rolling.update(**values)

    def unsafe(self):
        return self.rolling.unsafe()

    def save_checkpoint(self, tag: str = "manual", *, keep: bool | None = None) -> Path:
        return self.rolling.save_checkpoint(tag, keep=keep)

    def finish(self) -> Path:
        self.emergency.uninstall()
        return self.rolling.finish()

    def close(self) -> None:
        self.emergency.uninstall()
        self.rolling.close()

    @property
    def global_step(self) -> int:
        return self.rolling.global_step

    @property
    def last_checkpoint(self) -> Path | None:
        return self.rolling.last_checkpoint

    def __enter__(self) -> EnhancedAutoCheckpointManager:
        self._protect = self.emergency.protect()
        self._protect.__enter__()
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            return bool(self._protect.__exit__(exc_type, exc, tb))
        finally:
            self.close()
