"""Writing a snapshot in the Trainer's own checkpoint layout.

``write_snapshot`` produces the same files as ``Trainer._save_checkpoint`` (model through ``save_pretrained``,
``optimizer.pt``, ``scheduler.pt``, ``scaler.pt``, ``rng_state[_<rank>].pth``, ``trainer_state.json``,
``training_args.bin``, tokenizer files), so a plain Trainer resumes from it. ``write_snapshot_files`` leaves the
two large kinds of file to ``storage.directwrite`` (one copy, no page cache, hashed from memory).
"""

from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...storage.layout import (
    OPTIMIZER_NAME,
    SCALER_NAME,
    SCHEDULER_NAME,
    TRAINER_STATE_NAME,
    TRAINING_ARGS_NAME,
)
from .snapshot import TrainerSnapshot


def write_rng_file(snap: TrainerSnapshot, folder: Path) -> None:
    import torch

    torch.save(snap.rng_state, folder / snap.rng_file)


def write_snapshot(
    snap: TrainerSnapshot, folder: str | os.PathLike, *, defer_large: list | None = None
) -> None:
    """Write the main process's files of a snapshot into ``folder`` (Trainer layout). No fsync: the commit
    protocol flushes every file afterwards.

    With ``defer_large`` (a list), the two large kinds of file are not written but appended to it as
    ``LargeFile`` entries, for a writer process: the weight shards (exactly as ``save_pretrained`` would pass
    them to safetensors) and ``optimizer.pt``. Everything else is written here."""
    import torch

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    capture = (
        _capture_safetensors_writes(defer_large) if defer_large is not None else contextlib.nullcontext()
    )
    with capture, _no_shard_progress_bar():
        snap.model.save_pretrained(str(folder), state_dict=dict(snap.model_state), safe_serialization=True)
    if snap.processing_class is not None:
        snap.processing_class.save_pretrained(str(folder))
    torch.save(snap.args, folder / TRAINING_ARGS_NAME)
    if snap.optimizer_state is not None:
        if defer_large is None:
            torch.save(snap.optimizer_state, folder / OPTIMIZER_NAME)
        else:
            defer_large.append(LargeFile("torch", str(folder / OPTIMIZER_NAME), snap.optimizer_state))
    if snap.scheduler_state is not None:
        torch.save(snap.scheduler_state, folder / SCHEDULER_NAME)
    if snap.scaler_state is not None:
        torch.save(snap.scaler_state, folder / SCALER_NAME)
    write_rng_file(snap, folder)
    (folder / TRAINER_STATE_NAME).write_text(snap.trainer_state_json, encoding="utf-8")


def write_snapshot_files(snap: TrainerSnapshot, folder: str | os.PathLike, *, buffer, sha256: bool = False):
    """``write_snapshot`` for a background writer: the small files as usual, the weight shards and
    ``optimizer.pt`` through ``directwrite`` with ``buffer`` (a reused ``AlignedBuffer``: one copy, no page
    cache, hashed from memory). Returns the digests of those large files by name relative to ``folder``, for
    ``commit_checkpoint(known=...)``."""
    from ...storage.directwrite import write_large_files

    large: list[LargeFile] = []
    write_snapshot(snap, folder, defer_large=large)
    return write_large_files(large, buffer, folder=folder, sha256=sha256)


@dataclass
class LargeFile:
    """A large file left for ``directwrite`` (on the writer thread, or in a writer process): ``kind`` is ``safetensors`` (``obj``: name -> tensor, with ``metadata``)
    or ``torch`` (``obj`` goes through ``torch.save``)."""

    kind: str
    path: str
    obj: Any
    metadata: dict | None = None


_capture_lock = threading.Lock()


@contextlib.contextmanager
def _no_shard_progress_bar():
    """``save_pretrained`` draws a "Writing model shards" bar; from a background save it would break into the
    training progress bar on every checkpoint."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    if enabled:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


@contextlib.contextmanager
def _capture_safetensors_writes(into: list):
    """Let ``save_pretrained`` do all its own work (tied weights, weight-format conversion, sharding, config,
    index) but record each shard instead of writing it."""
    from transformers import modeling_utils

    capturing_thread = threading.get_ident()

    with _capture_lock:
        original = modeling_utils.safe_save_file

        def record(tensors, filename, metadata=None):
            # The patch is module-wide: a save_pretrained on another thread (the Trainer's own save while a
            # background save runs) must still write its weights.
            if threading.get_ident() != capturing_thread:
                return original(tensors, filename, metadata=metadata)
            into.append(LargeFile("safetensors", os.fspath(filename), dict(tensors), metadata))

        modeling_utils.safe_save_file = record
        try:
            yield
        finally:
            modeling_utils.safe_save_file = original
