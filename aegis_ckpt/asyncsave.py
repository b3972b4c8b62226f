"""Two-phase saves: a snapshot on the training thread, then persist + commit on a background thread.

::

    training thread (step end)          background thread                 training thread (a later step end)
    ---------------------------         -----------------------------     ----------------------------------
    take_snapshot()  <- only stall  ->  write_snapshot(.aegis/staging/     publish(): rename the committed
    submit(job)                         step-N), commit_checkpoint()       staging folder to checkpoint-N,
                                        (fsync + manifest inside staging)  fsync, prune

The staging folder is complete and committed (it carries its manifest) before the rename makes it visible as
``checkpoint-N`` in one atomic step, so the commit protocol's guarantee holds unchanged. Publishing happens on the
training thread, never concurrently with a Trainer save or with retention. At most one save is in flight. A
background failure is reported once, when the job is collected, and then cleared; the previous committed
checkpoint stays the resume point.

The thread is not a daemon: a process that ends normally waits for the write in flight. A process that is killed
leaves a staging folder, which the next resume scan publishes if it was committed, or removes if it was not.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .commit import Manifest, commit_checkpoint
from .hfsnapshot import TrainerSnapshot, write_snapshot

logger = logging.getLogger(__name__)


@dataclass
class SaveJob:
    """One asynchronous save, from snapshot to commit inside its staging folder."""

    step: int
    reason: str
    staging: Path
    snapshot: TrainerSnapshot | None
    meta: dict[str, Any]
    snapshot_sec: float
    sha256: bool = False
    started_unix: float = field(default_factory=time.time)
    write_sec: float = 0.0
    manifest: Manifest | None = None
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)


class AsyncCheckpointWriter:
    """Runs at most one ``SaveJob`` at a time on a background thread."""

    def __init__(self, write: Callable[[TrainerSnapshot, Path], None] = write_snapshot):
        self._write = write
        self._job: SaveJob | None = None
        self._thread: threading.Thread | None = None

    @property
    def in_flight(self) -> SaveJob | None:
        return self._job

    @property
    def busy(self) -> bool:
        return self._job is not None and not self._job.done.is_set()

    def submit(self, job: SaveJob) -> None:
        if self._job is not None:
            raise RuntimeError("a save is already in flight; collect it first")
        self._job = job
        self._thread = threading.Thread(
            target=self._run, args=(job,), name=f"aegis-save-{job.step}", daemon=False
        )
        self._thread.start()

    def _run(self, job: SaveJob) -> None:
        started = time.perf_counter()
        try:
            if job.snapshot is not None and job.snapshot.is_main:
                self._write(job.snapshot, job.staging)
            job.manifest = commit_checkpoint(
                job.staging, step=job.step, reason=job.reason, meta=job.meta, sha256=job.sha256
            )
        except BaseException as e:  # noqa: BLE001 - reported on the training thread when collected
            job.error = e
        finally:
            job.snapshot = None  # drop references to the buffers' views and the model
            job.write_sec = time.perf_counter() - started
            job.done.set()

    def collect(self, *, wait: bool = False, timeout: float | None = None) -> SaveJob | None:
        """Return the job if it finished (after waiting for it, if asked), and forget it; else None."""
        job = self._job
        if job is None:
            return None
        if wait:
            job.done.wait(timeout)
        if not job.done.is_set():
            return None
        if self._thread is not None:
            self._thread.join()
        self._job = None
        self._thread = None
        return job


def estimate_snapshot_bytes(model, optimizer) -> int:
    """Bytes a snapshot copies: the model's state dict (tied weights once) and the optimizer's tensors."""
    import torch

    seen = set()
    total = 0
    for t in model.state_dict().values():
        if isinstance(t, torch.Tensor):
            key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
            if key not in seen:
                seen.add(key)
                total += t.numel() * t.element_size()
    if optimizer is not None:
        for per_param in optimizer.state_dict().get("state", {}).values():
            for v in per_param.values():
                if isinstance(v, torch.Tensor):
                    total += v.numel() * v.element_size()
    return total
