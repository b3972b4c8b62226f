"""``EnhancedAutoCheckpointManager``: rolling and emergency checkpoints together, with resume on start and
power-loss detection (a facade over the managers in ``rolling`` and ``emergency``)."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

from ..options import CheckpointOptions
from ..policy import SavePolicy
from .emergency import LOOP_STOP_SIGNALS, EmergencyCheckpointManager
from .facade import DEFAULT_INTERVAL_SEC, DEFAULT_MAX_KEEP, LoopFacade
from .rolling import RollingCheckpointManager

logger = logging.getLogger(__name__)


class EnhancedAutoCheckpointManager(LoopFacade):
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
        max_keep: int = DEFAULT_MAX_KEEP,
        save_interval_sec: float = DEFAULT_INTERVAL_SEC,
        *,
        keep_tagged: bool = True,
        adaptive: bool = False,
        options: CheckpointOptions | None = None,
        policy: SavePolicy | None = None,
        signals=LOOP_STOP_SIGNALS,
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
    def is_finished(self) -> bool:
        """True when this run had already finished before this process started."""
        return self._engine.is_finished

    def finish(self) -> Path:
        self.emergency.uninstall()
        return self.rolling.finish()

    def close(self) -> None:
        self.emergency.uninstall()
        self.rolling.close()

    def __enter__(self) -> EnhancedAutoCheckpointManager:
        self._block = ExitStack()
        self._block.callback(self.close)  # last, after the protected block has closed
        self._block.enter_context(self.emergency.protect())
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        return self._block.__exit__(exc_type, exc, tb)
