"""Finding the checkpoint to resume from.

``find_resume_checkpoint`` walks the checkpoint folders newest first and returns the first one that is
committed and matches its manifest. Every newer folder that fails is moved to quarantine with the reason, so
neither the Trainer's ``get_last_checkpoint`` nor its rotation can pick it up later.

Folders without a manifest are handled by where they come from:

* in a directory aegis-ckpt has saved into (``.aegis/store.json``), a folder without a manifest is an
  interrupted save: quarantined;
* in a directory only the plain Trainer wrote to, such folders are left alone and ignored unless the caller opts
  in with ``allow_unverified=True``, in which case they must pass structural checks (``plaincheck``), or with
  ``adopt_plain=True``: then every such folder that passes the structural checks is taken over (a manifest is
  written for it, so it counts as committed from then on) and the others are quarantined.

A committed folder must also be loadable: its ``trainer_state.json`` (when it has one) must be what the Trainer
can resume from, or every restart would fail on it. A ``checkpoint-<step>`` that is a symbolic link is set aside
without being followed (``storage.confine``). The whole scan runs under the run lease's lock: a live run refuses
it, and no run can start writing while it moves folders.

With a ``remote_url`` (a fresh machine, a lost disk), a remote copy newer than the newest intact local
checkpoint is downloaded into staging, verified file by file and committed locally first (``remote.download``);
damaged or partial remote copies are skipped with the reason.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Collection
from pathlib import Path

from filelock import FileLock

from .errors import AegisError
from .logsetup import follow_transformers_verbosity
from .options import RemoteOptions
from .remote.download import pull_newest
from .remote.location import RemoteLocation, describe_error
from .runstate.lease import holding_run_lock
from .storage.commit import is_committed, read_manifest
from .storage.layout import AEGIS_DIR, SCAN_LOCK_NAME, checkpoint_dir_name, parse_checkpoint_step
from .storage.scan import CandidateReport, ScanReport, scan_checkpoints  # noqa: F401 - public names here too
from .storage.store import CheckpointStore

logger = logging.getLogger(__name__)


def _distributed_rank_and_size() -> tuple[int, int]:
    dist_mod = sys.modules.get("torch.distributed")
    if dist_mod is not None and dist_mod.is_available() and dist_mod.is_initialized():
        return dist_mod.get_rank(), dist_mod.get_world_size()
    return 0, 1


def find_resume_checkpoint(
    output_dir: str | os.PathLike,
    verify: str = "full",
    *,
    allow_unverified: bool = False,
    adopt_plain: bool = False,
    exclude: Collection[str | os.PathLike] = (),
    remote_url: str | None = None,
    remote_options: dict | None = None,
) -> str | None:
    """Return the newest intact checkpoint in ``output_dir`` for ``Trainer.train(resume_from_checkpoint=...)``.

    Args:
        output_dir (`str` or `os.PathLike`):
            The Trainer's ``output_dir``.
        verify (`str`, *optional*, defaults to `"full"`):
            ``"full"`` re-hashes every file of the candidate against its manifest; ``"quick"`` compares sizes.
        allow_unverified (`bool`, *optional*, defaults to `False`):
            Also accept checkpoints without a manifest (saved by a plain Trainer) that pass structural checks.
        adopt_plain (`bool`, *optional*, defaults to `False`):
            Take over a directory of plain-Trainer checkpoints: write a manifest for each one that passes the
            structural checks (they are then committed checkpoints like ours) and quarantine the others.
        exclude (`Collection[str]`, *optional*):
            Checkpoint folders to pass over (e.g. one the Trainer failed to load); they are not moved.
        remote_url (`str`, *optional*):
            Where the run mirrors its checkpoints (the callback's ``remote_url``). When the newest remote copy
            is newer than the newest intact local one, it is downloaded, verified and committed locally first.
        remote_options (`dict`, *optional*):
            Extra keyword arguments of the fsspec file system (never credentials).

    Returns:
        The path of the checkpoint folder, or ``None`` when there is nothing to resume from (a fresh start).

    Raises:
        RunLockedError: another live process holds the run lease of ``output_dir`` (it would otherwise see that
            process's save in progress as an interrupted one); nothing is moved.

    Under ``torch.distributed`` rank 0 scans and broadcasts its answer, so every rank resumes from the same
    folder and only one process moves damaged folders aside.

    Example:

    ```python
    trainer.train(resume_from_checkpoint=find_resume_checkpoint(args.output_dir))
    ```
    """
    output_dir = Path(output_dir)
    follow_transformers_verbosity()  # called before train(): the Trainer has not applied its log level yet
    rank, world = _distributed_rank_and_size()
    chosen: str | None = None
    if rank == 0 and remote_url:
        output_dir.mkdir(parents=True, exist_ok=True)  # a fresh machine: the remote copy goes there
    if rank == 0 and output_dir.is_dir():
        # A live run owns this directory: its in-progress save would look like an interrupted one and be moved
        # aside. Hold its lease's lock for the whole scan (RunLockedError says who holds it), so no run can begin
        # writing between a check and the moves. Several processes (ranks started without a process group, or two
        # tools) may scan at once: the scan lock serializes them.
        with holding_run_lock(output_dir), FileLock(str(output_dir / AEGIS_DIR / SCAN_LOCK_NAME)):
            report = scan_checkpoints(
                output_dir,
                verify=verify,
                allow_unverified=allow_unverified,
                adopt_plain=adopt_plain,
                exclude=exclude,
            )
            chosen = report.chosen
            if remote_url:
                chosen = newer_remote_copy(
                    output_dir, chosen, RemoteOptions(url=remote_url, options=remote_options or {})
                )
        if chosen:
            logger.info("Resuming from %s (%s verification, %.2f s)", chosen, verify, report.seconds)
        else:
            logger.info("No intact checkpoint in %s: starting from scratch", output_dir)
    if world > 1:
        import torch.distributed as dist

        box = [chosen]
        dist.broadcast_object_list(box, src=0)
        chosen = box[0]
    return chosen


def newer_remote_copy(output_dir: Path, chosen: str | None, remote: RemoteOptions) -> str | None:
    """The local copy of the newest verified remote checkpoint newer than ``chosen`` (the local resume point),
    else ``chosen``. An unreachable remote costs a warning, never the local resume point."""
    local_step = parse_checkpoint_step(Path(chosen).name) if chosen else None
    store = CheckpointStore(output_dir)
    try:
        location = RemoteLocation(remote.url, remote.options)
        folder, skipped = pull_newest(
            location, store, newer_than=local_step, workers=remote.upload_workers, attempts=remote.attempts
        )
    except Exception as e:  # noqa: BLE001 - the local checkpoints stay usable whatever the remote does
        logger.warning(
            "Could not look for a newer remote copy in %s (%s); resuming from the local checkpoints",
            remote.url,
            describe_error(e),
        )
        return chosen
    if folder is None:
        if skipped:
            logger.warning("No usable remote copy newer than the local checkpoints in %s", remote.url)
        return chosen
    store.mark_managed()
    logger.info("Using %s, downloaded from %s (newer than the local checkpoints)", folder.name, remote.url)
    return str(folder)


def check_resume_world_size(
    output_dir: str | os.PathLike, step: int, world_size: int, *, allow: bool
) -> None:
    """Refuse to continue from ``checkpoint-<step>`` with another number of processes than saved it: the Trainer
    would resume with other RNG streams and data order, i.e. not where training stopped (``allow`` warns only)."""
    folder = Path(output_dir) / checkpoint_dir_name(step)
    if step == 0 or not is_committed(folder):
        return
    try:
        saved = read_manifest(folder).meta.get("world_size")
    except (OSError, ValueError, KeyError):
        return
    if saved is None or int(saved) == int(world_size):
        return
    message = (
        f"{folder.name} was saved by {saved} process(es), this run has {world_size}: the Trainer would "
        f"resume with different RNG streams and data order, not where training stopped."
    )
    if not allow:
        raise AegisError(
            message + f" Relaunch with {saved} processes, or pass allow_world_size_change=True (emergency "
            "options) to continue anyway."
        )
    logger.warning("%s Continuing because allow_world_size_change=True.", message)
