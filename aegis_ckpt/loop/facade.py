"""What the Rolling and Enhanced managers share: building their ``LoopCheckpointer`` from the seed API's
arguments (``build_engine``) and the loop calls both expose (``LoopFacade``), in one place, so the two public
classes cannot drift apart."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..options import CheckpointOptions, RemoteOptions
from ..policy import SavePolicy
from ..runstate.start import RunStart
from .engine import LoopCheckpointer

DEFAULT_MAX_KEEP = 5
DEFAULT_INTERVAL_SEC = 180.0


def build_engine(
    base_dir: str | os.PathLike,
    *,
    max_keep: int,
    save_interval_sec: float,
    keep_tagged: bool,
    adaptive: bool,
    options: CheckpointOptions | None,
    policy: SavePolicy | None,
    clock: Callable[[], float],
    remote_url: str | None,
    remote_max_keep: int | None,
    remote_options: dict | None,
) -> LoopCheckpointer:
    """The checkpointer the seed API's arguments describe (``options`` or the three shorthands, not both)."""
    remote = RemoteOptions(url=remote_url, max_keep=remote_max_keep, options=remote_options or {})
    if options is None:
        options = CheckpointOptions(max_keep=max_keep, save_interval_sec=save_interval_sec, adaptive=adaptive)
    elif (max_keep, save_interval_sec, adaptive) != (DEFAULT_MAX_KEEP, DEFAULT_INTERVAL_SEC, False):
        raise TypeError("pass either options= or max_keep/save_interval_sec/adaptive, not both")
    return LoopCheckpointer(
        base_dir, options, keep_tagged=keep_tagged, policy=policy, clock=clock, remote=remote
    )


class LoopFacade:
    """The calls a loop makes on its manager, forwarded to the shared ``LoopCheckpointer`` (``_engine``).

    Under torch.distributed every rank makes the same calls at the same points: ``step()`` agrees with the other
    ranks, ``save_checkpoint()`` is a collective save (see ``docs/custom-loops.md``)."""

    _engine: LoopCheckpointer

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

    @property
    def global_step(self) -> int:
        return self._engine.global_step

    @property
    def last_checkpoint(self) -> Path | None:
        return self._engine.last_checkpoint

    @property
    def run_start(self) -> RunStart | None:
        """How the previous process on this directory ended (fresh, clean stop, crash, power loss, finished)."""
        return self._engine.run_start
