"""Turning the Trainer's saves into committed checkpoints: the callback decides when, these functions commit.

A synchronous save is the folder the Trainer just wrote: it is committed in place (``commit_checkpoint``), and
set aside in quarantine when that fails. An asynchronous save was committed inside its staging folder by the
background writer and is published here, on the training thread, by one rename. Either way the save ends in the
one save tail (``runstate.saves.SaveTail``): log line, run record, retention.
"""

from __future__ import annotations

import time
from pathlib import Path

from ..errors import CommitError
from ..runstate.saves import SaveTail
from ..storage.commit import commit_checkpoint
from ..storage.store import METRIC_META_KEY
from .asyncsave.saver import SaveJob


def manifest_meta(state, world_size: int, *, asynchronous: bool, metric: dict | None = None) -> dict:
    """What a Trainer checkpoint's manifest records besides its files (``metric``: the evaluation at this step,
    which retention's best-k reads)."""
    meta = {
        "epoch": state.epoch,
        "max_steps": state.max_steps,
        "world_size": world_size,
        "async": asynchronous,
    }
    if metric is not None:
        meta[METRIC_META_KEY] = metric
    return meta


def commit_trainer_save(
    tail: SaveTail,
    state,
    folder: Path,
    *,
    reason: str,
    write_sec: float,
    world_size: int,
    sha256: bool,
    metric: dict | None = None,
    known: dict | None = None,
) -> int:
    """Commit the folder the Trainer just wrote, then the save tail. Returns the committed size in bytes (0: not
    committed, and the folder is in quarantine). ``known``: digests computed while writing (``directsave``)."""
    t0 = time.perf_counter()
    try:
        manifest = commit_checkpoint(
            folder,
            step=state.global_step,
            reason=reason,
            meta=manifest_meta(state, world_size, asynchronous=False, metric=metric),
            sha256=sha256,
            known=known,
            progress=True,  # a synchronous save: the training thread waits for this read-back
        )
    except CommitError as e:
        tail.failed(step=state.global_step, reason=reason, error=e, leftover=folder, quarantine=True)
        return 0
    tail.committed(folder, manifest, reason=reason, write_sec=write_sec, commit_sec=time.perf_counter() - t0)
    return manifest.total_bytes


def publish_background_save(tail: SaveTail, job: SaveJob) -> Path | None:
    """Publish a finished background save: rename its committed staging folder to ``checkpoint-<step>``, then
    the save tail. Returns the published folder, or None (the save failed, or the Trainer saved that step
    itself meanwhile)."""
    if job.error is not None:
        tail.failed(step=job.step, reason=job.reason, error=job.error, leftover=job.staging, background=True)
        return None
    folder = tail.store.publish(job.staging, job.step, replace=False)
    if folder is None or job.manifest is None:
        return None
    tail.committed(
        folder,
        job.manifest,
        reason=job.reason,
        write_sec=job.snapshot_sec,
        commit_sec=job.write_sec,
        duration_sec=job.snapshot_sec + job.write_sec,
        background=True,
    )
    return folder
