"""Saves that cannot fit, for the Trainer callback: refused before they start, and failures of the Trainer's own
synchronous save caught before they can take training down.

``SaveSpace`` answers "does the checkpoint this step is about to write fit?" from the size of the newest
committed checkpoint (its manifest), or before the first one from the bytes of the model and optimizer state.
The callback asks it whenever a save is decided; a periodic save that does not fit is skipped with one log line
and training goes on, a final or emergency save that does not fit ends the run with a clear error.

``SyncSaveGuard`` wraps ``_save_checkpoint`` of the one Trainer instance the callback serves (the instance
attribute only, as ``emergency.TrainGuard`` does with ``train``). When the disk fills while the Trainer writes,
the partial folder is deleted at once (it never promised anything, and kept it would hold the disk full), the
failure is remembered for ``on_save`` (which must then not commit what is there), and the Trainer goes on. Any
other error passes through unchanged.
"""

from __future__ import annotations

import functools
import logging
import shutil
from pathlib import Path

from ..storage.commit import is_committed, read_manifest
from ..storage.layout import checkpoint_dir_name
from ..storage.space import format_bytes, is_disk_full, shortfall
from ..storage.store import CheckpointStore

logger = logging.getLogger(__name__)


class SaveSpace:
    """The expected size of the next checkpoint and whether it fits."""

    def __init__(self) -> None:
        self._estimate: int | None = None

    def checkpoint_bytes(self, store: CheckpointStore, trainer) -> int:
        """The newest committed checkpoint's size, else the bytes of the state a save writes (cached)."""
        committed = store.committed()
        if committed:
            try:
                return read_manifest(committed[-1].path).total_bytes
            except (OSError, ValueError, KeyError, TypeError):
                pass
        if self._estimate is None:
            self._estimate = _state_bytes(trainer)
        return self._estimate

    def refusal(self, store: CheckpointStore, trainer) -> str | None:
        """None if the next checkpoint fits in the output dir; else why not (one sentence)."""
        return shortfall(store.output_dir, self.checkpoint_bytes(store, trainer))


def _state_bytes(trainer) -> int:
    if trainer is None:
        return 0
    from .asyncsave.saver import estimate_snapshot_bytes

    model = trainer.accelerator.unwrap_model(trainer.model, keep_torch_compile=False)
    return estimate_snapshot_bytes(model, trainer.optimizer)


class SyncSaveGuard:
    """Catches a full disk inside the Trainer's synchronous ``_save_checkpoint`` (see the module docstring)."""

    def __init__(self) -> None:
        self._trainer = None
        self.failure: BaseException | None = None

    def install(self, trainer) -> None:
        if trainer is None or self._trainer is not None:
            return
        original = trainer._save_checkpoint

        @functools.wraps(original)
        def guarded_save_checkpoint(*args, **kwargs):
            try:
                return original(*args, **kwargs)
            except Exception as e:
                folder = Path(trainer.args.output_dir) / checkpoint_dir_name(trainer.state.global_step)
                if not is_disk_full(e, trainer.args.output_dir):
                    raise
                self.failure = e
                if trainer.args.should_save and not is_committed(folder):
                    shutil.rmtree(folder, ignore_errors=True)
                logger.debug("the Trainer's save of %s ran out of space: %s", folder, e)
                return None

        trainer._save_checkpoint = guarded_save_checkpoint
        self._trainer = trainer

    def take_failure(self) -> BaseException | None:
        """The disk-full error of the last Trainer save, once (None if it succeeded)."""
        failure, self.failure = self.failure, None
        return failure


def skipped_line(step: int, reason: str, problem: str, *, checkpoint_bytes: int) -> str:
    """The one line logged for a periodic save that does not fit."""
    return (
        f"Skipped the {reason} checkpoint of step {step} (~{format_bytes(checkpoint_bytes)}): {problem}. "
        "Training goes on; the previous committed checkpoint stays the resume point."
    )
