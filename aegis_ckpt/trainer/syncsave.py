"""The Trainer's synchronous saves, for the callback: commit the folder the Trainer wrote, unless its save ran
out of space.

``SyncSaveGuard`` (``savefaults``) catches a full disk inside the Trainer's ``_save_checkpoint``; whatever is
left of such a save must not be committed, so ``on_save`` and the emergency save both ask here first. A save
that completed is committed in place and ends in the save tail (``commits.commit_trainer_save``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from ..errors import DiskFullError
from ..runstate.saves import SaveTail
from .commits import commit_trainer_save
from .directsave import DirectSyncSave
from .runrecord import TrainerRunRecord
from .savefaults import SyncSaveGuard


class SyncSaves:
    """Commits the Trainer's synchronous saves (see the module docstring)."""

    def __init__(
        self,
        *,
        tail: Callable[[], SaveTail],
        run: TrainerRunRecord,
        metric: Callable[[object], dict | None],
        direct: bool = True,
    ) -> None:
        self._guard = SyncSaveGuard()
        self.max_shard_bytes: Callable[[], int | None] = lambda: None  # set by the save cycle (its options)
        self.direct = (
            DirectSyncSave(lambda: self._run.sha256, lambda: self.max_shard_bytes()) if direct else None
        )
        self._tail = tail
        self._run = run
        self._metric = metric

    def install(self, trainer) -> None:
        """Write the Trainer's saves through the direct writer where it can (``directsave``), and guard them,
        whoever writes, against a full disk (the guard wraps the direct save)."""
        if self.direct is not None:
            self.direct.install(trainer)
        self._guard.install(trainer)

    def commit_written(
        self, state, folder: Path, *, reason: str, write_sec: float, world_size: int, writes_files: bool
    ) -> tuple[int, BaseException | None]:
        """After the Trainer's save of ``folder``: the committed size (0: not committed) and the disk-full error
        of that save, if it ran out of space (then nothing is committed). Only the rank that writes files
        commits."""
        size_bytes = 0
        failure = self._guard.take_failure()  # the Trainer's save ran out of space: nothing to commit
        if failure is not None and writes_files:
            self._tail().failed(step=state.global_step, reason=reason, error=failure, leftover=folder)
        elif writes_files:
            size_bytes = self.commit(state, folder, reason=reason, write_sec=write_sec, world_size=world_size)
        return size_bytes, failure

    def commit(self, state, folder: Path, *, reason: str, write_sec: float, world_size: int) -> int:
        """Commit the folder the Trainer just wrote, then the save tail; the committed size (0: not committed)."""
        return commit_trainer_save(
            self._tail(),
            state,
            folder,
            reason=reason,
            write_sec=write_sec,
            world_size=world_size,
            sha256=self._run.sha256,
            metric=self._metric(state),
            known=self.direct.take_digests(folder) if self.direct is not None else None,
        )

    def save_now(self, trainer, folder: Path, reason: str) -> bool:
        """The emergency save of a single process: the Trainer writes ``folder`` now, then it is committed.
        Whether it was committed."""
        t0 = time.perf_counter()
        trainer._save_checkpoint(trainer.model, trial=None)
        failure = self._guard.take_failure()
        if failure is not None:
            step = trainer.state.global_step
            self._tail().failed(step=step, reason=reason, error=failure, leftover=folder)
            return False
        write_sec = time.perf_counter() - t0
        return bool(
            self.commit(trainer.state, folder, reason=reason or "trainer", write_sec=write_sec, world_size=1)
        )


def final_save_failed(step: int, failure: BaseException) -> DiskFullError:
    """The error that ends a run whose final checkpoint ran out of space while the Trainer wrote it."""
    return DiskFullError(
        f"The final checkpoint of step {step} ran out of space while it was written ({failure}); the previous "
        "committed checkpoint stays the resume point. Free space and start the run again to finish it."
    )
