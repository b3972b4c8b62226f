"""Writing a snapshot in the Trainer's own checkpoint layout.

``write_snapshot`` produces the same files as ``Trainer._save_checkpoint`` (model through ``save_pretrained``,
``optimizer.pt``, ``scheduler.pt``, ``scaler.pt``, ``rng_state[_<rank>].pth``, ``trainer_state.json``,
``training_args.bin``, tokenizer files), so a plain Trainer resumes from it. ``write_snapshot_files`` leaves the
two large kinds of file to ``storage.directwrite`` (one copy, no page cache, hashed from memory).

The weights are split into shards of at most ``TrainerSnapshot.max_shard_bytes`` (``CheckpointOptions``) by
``save_pretrained`` itself, which also writes ``model.safetensors.index.json`` (the Trainer's index format). A
writer in this process writes each shard as soon as ``save_pretrained`` hands it over, so whatever a shard needs
beyond the snapshot (copies ``save_pretrained`` makes as it builds a shard, the CPU copy of a GPU shard) exists
for one shard at a time; for a writer process the shards are references into the shared snapshot.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...storage import fsio
from ...storage.directwrite import torch_save_file
from ...storage.layout import (
    OPTIMIZER_NAME,
    SCALER_NAME,
    SCHEDULER_NAME,
    TRAINER_STATE_NAME,
    TRAINING_ARGS_NAME,
)
from .snapshot import TrainerSnapshot


def write_rng_file(snap: TrainerSnapshot, folder: Path) -> None:
    torch_save_file(snap.rng_state, folder / snap.rng_file)


def write_snapshot(
    snap: TrainerSnapshot,
    folder: str | os.PathLike,
    *,
    defer_large: list | None = None,
    write_large: Callable[[LargeFile], None] | None = None,
) -> None:
    """Write the main process's files of a snapshot into ``folder`` (Trainer layout). No fsync: the commit
    protocol flushes every file afterwards.

    The two large kinds of file, the weight shards (exactly as ``save_pretrained`` would pass them to
    safetensors) and ``optimizer.pt``, go as ``LargeFile`` entries to ``write_large`` (called for each shard
    before ``save_pretrained`` builds the next one), or with ``defer_large`` (a list, for a writer process,
    whose entries refer to the snapshot's shared memory) are appended to it. Everything else is written here."""
    folder = Path(folder)
    fsio.mkdir(folder, parents=True, exist_ok=True)
    take = defer_large.append if defer_large is not None else write_large
    route = _route_safetensors_writes(take) if take is not None else contextlib.nullcontext()
    sharding = {} if snap.max_shard_bytes is None else {"max_shard_size": snap.max_shard_bytes}
    with route, _no_shard_progress_bar():
        snap.model.save_pretrained(
            str(folder), state_dict=dict(snap.model_state), safe_serialization=True, **sharding
        )
    if snap.processing_class is not None:
        snap.processing_class.save_pretrained(str(folder))
    torch_save_file(snap.args, folder / TRAINING_ARGS_NAME)
    if snap.optimizer_state is not None:
        if take is None:
            torch_save_file(snap.optimizer_state, folder / OPTIMIZER_NAME)
        else:
            take(LargeFile("torch", str(folder / OPTIMIZER_NAME), snap.optimizer_state))
    if snap.scheduler_state is not None:
        torch_save_file(snap.scheduler_state, folder / SCHEDULER_NAME)
    if snap.scaler_state is not None:
        torch_save_file(snap.scaler_state, folder / SCALER_NAME)
    write_rng_file(snap, folder)
    fsio.write_bytes(folder / TRAINER_STATE_NAME, snap.trainer_state_json.encode("utf-8"))


def write_snapshot_files(snap: TrainerSnapshot, folder: str | os.PathLike, *, buffer, sha256: bool = False):
    """``write_snapshot`` for a background writer: the small files as usual, each weight shard and
    ``optimizer.pt`` through ``directwrite`` with ``buffer`` (a reused ``AlignedBuffer``: one copy, no page
    cache, hashed from memory) as soon as it is handed over. Returns the digests of those large files by name
    relative to ``folder``, for ``commit_checkpoint(known=...)``."""
    from ...storage.directwrite import LargeFileWriter

    writer = LargeFileWriter(buffer, folder=folder, sha256=sha256)
    write_snapshot(snap, folder, write_large=writer)
    return writer.digests


@dataclass
class LargeFile:
    """A large file left for ``directwrite`` (on the writer thread, or in a writer process): ``kind`` is ``safetensors`` (``obj``: name -> tensor, with ``metadata``)
    or ``torch`` (``obj`` goes through ``torch.save``)."""

    kind: str
    path: str
    obj: Any
    metadata: dict | None = None


_routes_lock = threading.Lock()
_routes: dict[int, Callable[[LargeFile], None]] = {}  # thread id -> where its shards go
_unpatched: list = []  # safetensors' save_file while the patch is installed


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
def _route_safetensors_writes(take: Callable[[LargeFile], None]):
    """Let ``save_pretrained`` do all its own work (tied weights, weight-format conversion, sharding, config,
    index) but hand each shard to ``take`` instead of writing it. ``take`` runs inside ``save_pretrained``'s
    loop, which drops the shard and builds the next one only after it returns.

    The patch of ``modeling_utils.safe_save_file`` is module-wide, so it dispatches by thread: a
    ``save_pretrained`` on a thread without a route (the Trainer's own save while a background save runs) still
    writes its weights. The lock covers installing and removing the patch only, never a write: a synchronous
    direct save does not wait for a background save's shards to reach the disk."""
    from transformers import modeling_utils

    me = threading.get_ident()
    with _routes_lock:
        if not _routes:
            original = modeling_utils.safe_save_file

            def route(tensors, filename, metadata=None):
                target = _routes.get(threading.get_ident())
                if target is None:
                    return original(tensors, filename, metadata=metadata)
                target(LargeFile("safetensors", os.fspath(filename), dict(tensors), metadata))

            _unpatched.append(original)
            modeling_utils.safe_save_file = route
        _routes[me] = take
    try:
        yield
    finally:
        with _routes_lock:
            del _routes[me]
            if not _routes:
                modeling_utils.safe_save_file = _unpatched.pop()
