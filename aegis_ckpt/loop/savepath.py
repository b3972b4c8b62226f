"""One save of a custom loop, from the staging folder to ``checkpoint-<step>`` (``save_locked``).

The save is written into a staging folder under ``.aegis/staging/``, committed there (manifest last,
``storage.commit``), renamed to ``checkpoint-<step>`` in one step and ended in the save tail shared with the
Trainer path (``runstate.saves``: log line, run record, retention).

Why stage instead of writing ``checkpoint-<step>`` in place: a folder appears under its final name only after its
manifest is durable, so a crash at any instant leaves either no new folder (the staging leftover is removed at
the next start) or a complete committed one. Nothing half-written ever carries a ``checkpoint-*`` name, and a
second save of the same step never rewrites a committed folder in place.

Under torch.distributed the save is collective, in three phases separated by agreements (``ranks``): rank 0
prepares the staging folder; every rank writes its own files (rank 0 also the shared ones); once every rank has
confirmed its writes, rank 0 alone commits, publishes and applies retention, then tells the others whether the
commit succeeded, so every rank returns (or raises) the same way.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import CommitError
from ..storage.commit import commit_checkpoint, is_committed
from ..storage.store import PIN_META_KEY
from .loopstate import save_rank_state, save_shared_state

if TYPE_CHECKING:
    from .engine import LoopCheckpointer

logger = logging.getLogger(__name__)


class SaveFailed(Exception):
    """A phase of a collective save failed on some rank (the error, if it happened on this one)."""

    def __init__(self, step: int, error: BaseException | None):
        super().__init__(str(error) if error is not None else "it failed on another rank")
        self.error = error


def save_locked(engine: LoopCheckpointer, tag: str | None, reason: str, pinned: bool, raise_errors: bool):
    """Save and commit the current state (the caller holds the manager's lock); see the module docstring.
    Returns the committed folder, or None when it failed and ``raise_errors`` is off."""
    ranks, store, step = engine.ranks, engine.store, engine.global_step
    existing = store.path_for_step(step)
    if ranks.from_main(is_committed(existing) and (not pinned or store.is_pinned(existing))):
        logger.debug("step %d is already committed in %s; nothing new to save", step, existing)
        engine.policy.start(engine.clock())
        engine.last_checkpoint = existing
        ranks.last_saved_step = step
        return existing
    started = engine.clock()
    staged = store.staging_path(step)
    try:
        _phase(engine, step, lambda: _prepare(engine, step), main_only=True)
        _phase(engine, step, lambda: _write(engine, staged, tag, reason))
        written = engine.clock()
        manifest = _phase(engine, step, lambda: _commit(engine, staged, tag, reason, pinned), main_only=True)
    except SaveFailed as failed:
        _failed(engine, step, reason, failed, staged, raise_errors)
        return None
    committed = engine.clock()
    final = store.path_for_step(step)
    if ranks.is_main:
        engine.tail.committed(
            final,
            manifest,
            reason=reason,
            write_sec=written - started,
            commit_sec=committed - written,
            duration_sec=engine.clock() - started,
            tag=tag,
            pinned=pinned,
        )
    size = manifest.total_bytes if manifest is not None else 0
    engine.policy.record_save(started=started, finished=engine.clock(), size_bytes=size)
    engine.last_checkpoint = final
    ranks.last_saved_step = step
    return final


def _phase(engine: LoopCheckpointer, step: int, work, *, main_only: bool = False):
    """Run ``work`` (on rank 0 only with ``main_only``), then agree whether it failed anywhere: the agreement is
    the barrier that ends the phase on every rank. Raises ``SaveFailed`` on every rank if it failed on one."""
    error: BaseException | None = None
    result = None
    if engine.ranks.is_main or not main_only:
        try:
            result = work()
        except Exception as e:
            error = e
    if engine.ranks.any(error is not None):
        raise SaveFailed(step, error)
    return result


def _prepare(engine: LoopCheckpointer, step: int) -> None:
    set_aside_superseded(engine, step)
    engine.store.fresh_staging(step)


def _write(engine: LoopCheckpointer, staged: Path, tag: str | None, reason: str) -> None:
    """This rank's part of the checkpoint: the shared state on rank 0, its own generators on every rank."""
    ranks = engine.ranks
    if ranks.is_main:
        save_shared_state(
            staged,
            model=engine.model,
            tokenizer=engine.tokenizer,
            optimizer=engine.optimizer,
            scheduler=engine.scheduler,
            extra=engine.extra,
            loop_state={
                "step": engine.global_step,
                "user": engine.user_state,
                "tag": tag,
                "reason": reason,
                "world_size": ranks.world_size,
            },
            max_shard_bytes=engine.options.max_shard_bytes,
        )
    save_rank_state(staged, rank=ranks.rank, world_size=ranks.world_size)


def _commit(engine: LoopCheckpointer, staged: Path, tag: str | None, reason: str, pinned: bool):
    """Rank 0, once every rank wrote its files: the manifest over all of them, then the rename."""
    meta = {
        "tag": tag,
        PIN_META_KEY: pinned,
        "writer": "aegis-ckpt loop",
        "epoch": engine.user_state.get("epoch"),
        "world_size": engine.ranks.world_size,
    }
    manifest = commit_checkpoint(
        staged, step=engine.global_step, reason=reason, meta=meta, sha256=engine.recorder.sha256
    )
    engine.store.publish(staged, engine.global_step)
    return manifest


def _failed(
    engine: LoopCheckpointer, step: int, reason: str, failed: SaveFailed, staged: Path, raise_errors: bool
) -> None:
    """Every rank: the save did not commit. Rank 0 records it and clears the staging folder away."""
    error = failed.error if failed.error is not None else CommitError(str(failed))
    if engine.ranks.is_main:
        leftover = staged if staged.exists() else None
        engine.tail.failed(step=step, reason=reason, error=error, leftover=leftover, log=not raise_errors)
    elif failed.error is not None and not raise_errors:
        logger.error("checkpoint of step %d failed on rank %d: %s", step, engine.ranks.rank, error)
    engine.policy.start(engine.clock())
    if raise_errors:
        raise CommitError(f"checkpoint of step {step} was not committed: {error}") from failed.error


def set_aside_superseded(engine: LoopCheckpointer, step: int) -> None:
    """Checkpoints beyond the current step belong to another timeline (resume() not called, or resumed from an
    older one): retention would count them as newest and delete the new saves, so move them aside (rank 0)."""
    later = [e for e in engine.store.checkpoints() if e.step > step]
    if not later:
        return
    if not engine.superseded_checked and engine.resumed_from is None:
        logger.warning(
            "Saving step %d while %s holds checkpoints up to step %d: did you forget resume()? They are moved "
            "to .aegis/quarantine/ (not deleted).",
            step,
            engine.output_dir,
            later[-1].step,
        )
    engine.superseded_checked = True
    engine.tail.set_aside_later(step, f"superseded: the loop saved step {step}, before this checkpoint")
