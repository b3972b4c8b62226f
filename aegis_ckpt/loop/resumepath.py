"""Resuming a custom loop: the same checkpoint on every rank (``resume``).

Rank 0 scans the output directory exactly as the Trainer path does (``resume.scan_checkpoints``: the newest
intact checkpoint; damaged or half-written newer folders go to quarantine, which only rank 0 may do) and, with a
remote mirror, prefers a newer verified remote copy. It then shares its choice: ranks that picked on their own
could pick differently (one scanning while rank 0 quarantines) and continue from different steps. Every rank
loads the shared files and its own ``rng_state_<rank>.pth``; a failure on one rank raises on all.

A checkpoint that verifies but does not load (an optimizer file that does not unpickle, tensors of another
shape) is passed over for the next older one, as ``aegis-ckpt train`` does, so that no run fails the same way on
every restart; the folders passed over are set aside (quarantined, with the reason) only once an older one has
loaded, so a change on the user's side that makes every checkpoint fail to load (another model) moves nothing
and raises the first error.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..resume import newer_remote_copy, scan_checkpoints
from .loopstate import RestoreError, load_training_state, read_loop_state

if TYPE_CHECKING:
    from .engine import LoopCheckpointer

logger = logging.getLogger(__name__)


def choose_checkpoint(engine: LoopCheckpointer, exclude: list[str] = ()) -> tuple[str | None, float | None]:
    """Rank 0's pick (and how long verifying took), on every rank; folders in ``exclude`` are passed over."""
    chosen, seconds, problem = None, None, None
    error: BaseException | None = None
    if engine.ranks.is_main:
        try:
            report = scan_checkpoints(
                engine.output_dir,
                verify=engine.options.verify,
                allow_unverified=engine.options.allow_unverified,
                exclude=exclude,
            )
            chosen, seconds = report.chosen, report.seconds
            if engine.remote.enabled and not exclude:
                chosen = newer_remote_copy(engine.output_dir, chosen, engine.remote)
        except Exception as e:
            error, problem = e, f"{type(e).__name__}: {e}"
    chosen, seconds, problem = engine.ranks.share((chosen, seconds, problem))
    if error is not None:
        raise error
    if problem is not None:
        raise RestoreError(f"resume failed on rank 0: {problem}")
    return (str(chosen) if chosen is not None else None), seconds


class ProcessCountMismatch(RestoreError):
    """The checkpoint was saved by another number of processes: a matter of the launch, not of the folder."""


def _check_world_size(folder: Path, world_size: int) -> None:
    saved = int(read_loop_state(folder).get("world_size") or 1)
    if saved != world_size:
        raise ProcessCountMismatch(
            f"{folder.name} was saved by {saved} process(es), this run has {world_size}: every process restores "
            f"its own generators, so relaunch with {saved} processes (or call resume(restore_rng=False))"
        )


def load_on_every_rank(engine: LoopCheckpointer, chosen: Path, *, restore_rng: bool) -> dict[str, Any]:
    """Load ``chosen`` into this rank's objects; raises on every rank when it failed on any."""
    ranks = engine.ranks
    state: dict[str, Any] | None = None
    error: BaseException | None = None
    try:
        if restore_rng:
            _check_world_size(chosen, ranks.world_size)
        state = load_training_state(
            chosen,
            model=engine.model,
            optimizer=engine.optimizer,
            scheduler=engine.scheduler,
            extra=engine.extra,
            restore_rng=restore_rng,
            rank=ranks.rank,
            world_size=ranks.world_size,
        )
    except Exception as e:
        error = e
    if ranks.any(error is not None):
        if error is not None:
            raise error
        raise RestoreError(f"restoring {chosen} failed on another rank")
    return state


def _load_newest_loadable(engine: LoopCheckpointer, *, restore_rng: bool):
    """The newest intact checkpoint that loads, its state and the verification time; (None, None, None) when
    there is none. Folders that verified but did not load are quarantined by rank 0 once an older one loaded."""
    failed: dict[str, str] = {}
    first_error: BaseException | None = None
    while True:
        chosen_name, verify_sec = choose_checkpoint(engine, list(failed))
        if chosen_name is None:
            if first_error is not None:
                raise first_error  # nothing older loads either: the cause is not in one folder
            return None, None, None
        chosen = Path(chosen_name)
        try:
            state = load_on_every_rank(engine, chosen, restore_rng=restore_rng)
        except ProcessCountMismatch:
            raise
        except Exception as e:  # noqa: BLE001 - whatever the loaders raise means: this folder does not load
            first_error = first_error or e
            failed[chosen_name] = f"{type(e).__name__}: {e}"
        else:
            _set_aside(engine, failed)
            return chosen, state, verify_sec
        logger.error(
            "%s verified but could not be loaded (%s); trying the next older checkpoint",
            chosen.name,
            failed[chosen_name].splitlines()[0],
        )


def _set_aside(engine: LoopCheckpointer, failed: dict[str, str]) -> None:
    if engine.ranks.is_main:
        for folder, reason in failed.items():
            engine.store.quarantine(folder, f"verified but could not be loaded: {reason}".splitlines()[0])


def resume(engine: LoopCheckpointer, *, restore_rng: bool) -> dict[str, Any] | None:
    """Restore the newest intact checkpoint that loads into the registered objects; returns the loop state or
    None."""
    chosen, state, verify_sec = _load_newest_loadable(engine, restore_rng=restore_rng)
    if chosen is None:
        logger.info("No intact checkpoint in %s: starting from scratch", engine.output_dir)
        return None
    engine.global_step = int(state["step"])
    engine.user_state = dict(state.get("user") or {})
    engine.resumed_from = engine.last_checkpoint = chosen
    engine.resumed_step = engine.global_step
    engine.ranks.last_saved_step = engine.global_step
    if engine.ranks.is_main:
        # Retention once, as after a commit: a run stopped between a commit and its retention left more than
        # max_keep, and without this every such restart would add one for good. The one just loaded is kept.
        engine.tail.prune(chosen)
    engine.recorder.resumed(step=engine.global_step, checkpoint=chosen, verify_sec=verify_sec)
    logger.info(
        "Resumed from %s (step %d, %s verification)", chosen, engine.global_step, engine.options.verify
    )
    return engine.loop_state()
