"""``RollingCheckpointManager``: time-based rolling checkpoints for a custom PyTorch loop (a facade over
``engine.LoopCheckpointer``)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..options import CheckpointOptions
from ..policy import SavePolicy
from .facade import DEFAULT_INTERVAL_SEC, DEFAULT_MAX_KEEP, LoopFacade, build_engine


class RollingCheckpointManager(LoopFacade):
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
        max_keep: int = DEFAULT_MAX_KEEP,
        save_interval_sec: float = DEFAULT_INTERVAL_SEC,
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
        self._engine = build_engine(
            base_dir,
            max_keep=max_keep,
            save_interval_sec=save_interval_sec,
            keep_tagged=keep_tagged,
            adaptive=adaptive,
            options=options,
            policy=policy,
            clock=clock,
            remote_url=remote_url,
            remote_max_keep=remote_max_keep,
            remote_options=remote_options,
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
    def state(self) -> dict[str, Any]:
        return self._engine.loop_state()

    @property
    def interval_sec(self) -> float:
        return self._engine.policy.interval_sec
