"""Synchronous saves through the direct writer: the Trainer's checkpoint layout, written in one pass over the
bytes, so a durable save costs no more than the Trainer's own page-cache save.

Why: the Trainer's ``_save_checkpoint`` writes every file through the page cache, and making it durable then
meant reading every file back to hash it and flushing it. Here the same files (``asyncsave.hflayout``: what
``Trainer._save_checkpoint`` writes, byte-compatible for loaders) are written from the live state (no copy:
training waits for a synchronous save anyway) through ``storage.directwrite``: each byte of the weights and the
optimizer state is read once, hashed (xxh3, and sha256 when the audit asks for it) and handed to the disk with
``O_DIRECT``. The commit then only flushes and compares sizes (``commit_checkpoint(known=...)``).

This replaces the body of ``_save_checkpoint`` on the one Trainer instance the callback serves (an instance
attribute, like ``savefaults.SyncSaveGuard``, which wraps it in turn). The Trainer still calls its callbacks'
``on_save`` right after, exactly as for its own save. The Trainer's own save runs instead wherever it does more
than write these files, or writes state the snapshot cannot express: unsupported setups
(``compat.unsupported_reason``: DeepSpeed, FSDP, adapters, a subclass that overrides a save method, ...),
``push_to_hub``, ``save_total_limit`` (the Trainer's rotation), best-checkpoint tracking, hyperparameter search.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from pathlib import Path

from ..storage import fsio
from ..storage.commit import FileDigest
from ..storage.layout import checkpoint_dir_name
from .asyncsave.hflayout import write_rng_file, write_snapshot_files
from .asyncsave.snapshot import take_snapshot
from .compat import unsupported_reason

logger = logging.getLogger(__name__)


def direct_save_refusal(trainer, trial) -> str | None:
    """Why this save must be the Trainer's own (None: the direct writer can write it)."""
    if trial is not None or getattr(trainer, "hp_search_backend", None) is not None:
        return "hyperparameter search"
    args = trainer.args
    if args.push_to_hub:
        return "push_to_hub"
    if args.save_total_limit:
        return "save_total_limit (the Trainer's own rotation)"
    if str(getattr(args.save_strategy, "value", args.save_strategy)) in (
        "steps",
        "epoch",
        "best",
    ) and getattr(trainer.state, "best_global_step", None):
        return "best-checkpoint tracking"
    from transformers import Trainer

    for cls in type(trainer).__mro__:  # even one that only writes a model card beside the checkpoint
        if cls is Trainer:
            break
        if "_save_checkpoint" in vars(cls):
            return f"{cls.__qualname__}._save_checkpoint is overridden"
    return unsupported_reason(trainer)


class DirectSyncSave:
    """Installs the direct ``_save_checkpoint`` and hands the digests of its last save to the commit."""

    def __init__(
        self, sha256: Callable[[], bool], max_shard_bytes: Callable[[], int | None] = lambda: None
    ) -> None:
        self._sha256 = sha256
        self._max_shard_bytes = max_shard_bytes  # read at each save: CheckpointOptions.max_shard_bytes
        self._buffer = None  # storage.aligned.AlignedBuffer, made on the first direct save and kept
        self._trainer = None
        self._digests: tuple[Path, dict[str, FileDigest]] | None = None
        self.last_refusal: str | None = None
        self.saves = 0  # written here (the rest: by the Trainer's own save)

    def install(self, trainer) -> None:
        if trainer is None or self._trainer is not None:
            return
        original = trainer._save_checkpoint

        @functools.wraps(original)
        def direct_save_checkpoint(model, trial, *args, **kwargs):
            refusal = direct_save_refusal(trainer, trial)
            if refusal != self.last_refusal and refusal is not None:
                logger.info("Synchronous save by the Trainer's own writer: %s", refusal)
            self.last_refusal = refusal
            if refusal is not None or args or kwargs:
                return original(model, trial, *args, **kwargs)
            return self.save(trainer)

        trainer._save_checkpoint = direct_save_checkpoint
        self._trainer = trainer

    def save(self, trainer) -> None:
        """Write ``checkpoint-<step>`` from the live state (every rank: its RNG file; the main process: all)."""
        from ..storage.aligned import AlignedBuffer

        folder = Path(trainer.args.output_dir) / checkpoint_dir_name(trainer.state.global_step)
        self._digests = None
        snap = take_snapshot(trainer, None)
        snap.max_shard_bytes = self._max_shard_bytes()
        if not snap.is_main:
            fsio.mkdir(folder, parents=True, exist_ok=True)
            write_rng_file(snap, folder)
            return
        if self._buffer is None:
            self._buffer = AlignedBuffer()
        digests = write_snapshot_files(snap, folder, buffer=self._buffer, sha256=self._sha256())
        self._digests = (folder, digests)
        self.saves += 1

    def take_digests(self, folder: str | os.PathLike) -> dict[str, FileDigest] | None:
        """The digests the last direct save computed while writing ``folder``, once (None: read them back)."""
        found, self._digests = self._digests, None
        if found is None or Path(found[0]) != Path(folder):
            return None
        return found[1]
