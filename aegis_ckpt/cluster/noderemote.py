"""Resuming a node-local run from its remote copies: fresh nodes (or nodes whose disks lost the newest
checkpoints) fetch their shares of the newest remote checkpoint before training starts.

A remote copy of a node-local run holds every node's files (``remote.parts``: shared files from global rank 0,
each rank's own ``rng_state_<rank>.pth`` from its node), and it has a manifest only once every node uploaded its
share, so every committed remote copy is complete for every node. A node's disk holds the shared files and the
RNG files of its own ranks only, so that is what each node fetches.

``pull_newer_common`` is a collective, called by every rank after the ranks agreed on the newest step intact on
every node's disk: rank 0 lists the remote's committed copies newer than that step and shares the list; for each,
newest first, the first process of every node fetches its share (staged, every file checked against the remote
manifest's hashes, committed and published as ``checkpoint-<step>``, the path every remote download takes) or
finds it intact on its disk already, and all ranks agree whether every node now holds it. The first step that
every node holds is where all ranks resume; a node that could not fetch a step makes everyone try the next older
one, and without any, the step intact on the disks stays the resume point. An unreachable remote costs a warning.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from .. import distributed
from ..options import RemoteOptions
from ..remote.catalog import RemoteEntry, list_remote, read_remote_manifest
from ..remote.download import download_checkpoint
from ..remote.location import RemoteLocation, describe_error
from ..remote.parts import file_rank
from ..storage.layout import checkpoint_dir_name
from ..storage.store import CheckpointStore
from .nodes import is_node_leader, newest_intact_step

logger = logging.getLogger(__name__)


def node_ranks() -> set[int]:
    """The global ranks of this node's processes, seen from its first process: torchrun (and accelerate, which
    runs it) numbers one node's processes consecutively from its first one's ``RANK``, ``LOCAL_WORLD_SIZE`` of
    them."""
    first = distributed.rank()
    count = int(os.environ.get("LOCAL_WORLD_SIZE") or 1)
    return set(range(first, first + count))


def _remote_steps(location: RemoteLocation, newer_than: int) -> list[int]:
    """The remote's committed steps above ``newer_than``, newest first."""
    return [e.step for e in reversed(list_remote(location)) if e.committed and e.step > newer_than]


def _fetch_share(
    location: RemoteLocation, output_dir: Path, step: int, remote: RemoteOptions, verify: str
) -> bool:
    """On a node's first process: make ``checkpoint-<step>`` of this node intact on its disk, from the remote
    when it is not there already. False (with the reason logged) when that failed."""
    if newest_intact_step(output_dir, at_most=step, verify=verify) == step:
        return True
    ranks = node_ranks()
    entry = RemoteEntry(step, location.path(checkpoint_dir_name(step)), True)
    try:
        manifest, _ = read_remote_manifest(location, entry)
        owners = {file_rank(name) for name in manifest.files} - {None}
        # A copy saved by other ranks (another layout of processes) lacks this node's RNG states.
        if owners and not ranks <= owners:
            raise ValueError(f"it holds no RNG state of rank(s) {sorted(ranks - owners)}")
        output_dir.mkdir(parents=True, exist_ok=True)
        store = CheckpointStore(output_dir)
        folder = download_checkpoint(
            location,
            entry,
            store,
            workers=remote.upload_workers,
            attempts=remote.attempts,
            only=lambda name: file_rank(name) in ranks or file_rank(name) is None,
        )
        store.mark_managed()
    except Exception as e:  # noqa: BLE001 - the other nodes learn of it through the agreement
        logger.warning(
            "Could not fetch this node's share of remote checkpoint-%d: %s", step, describe_error(e)
        )
        return False
    own = sorted(r for r in (file_rank(p.name) for p in folder.iterdir()) if r is not None)
    logger.info("This node's share of remote checkpoint-%d holds the RNG states of rank(s) %s", step, own)
    return True


def pull_newer_common(
    output_dir: str | os.PathLike, local_step: int, remote: RemoteOptions, *, verify: str
) -> int:
    """The step every rank resumes from: the newest remote checkpoint newer than ``local_step`` that every node
    now holds (each node fetched its share), else ``local_step``. A collective (module docstring)."""
    output_dir = Path(output_dir)
    leader = is_node_leader()
    location = None
    steps: list[int] = []
    try:
        if leader:
            location = RemoteLocation(remote.url, remote.options)
        if distributed.rank() == 0:
            steps = _remote_steps(location, local_step)
    except Exception as e:  # noqa: BLE001 - the local checkpoints stay usable whatever the remote does
        logger.warning(
            "Could not look for a newer remote copy in %s (%s); resuming from the local checkpoints",
            remote.url,
            describe_error(e),
        )
        location, steps = None, []
    steps = distributed.share_from_main(steps)
    for step in steps:
        held = not leader or (
            location is not None and _fetch_share(location, output_dir, step, remote, verify)
        )
        if not distributed.agree_any(not held):
            if leader:
                logger.info(
                    "Resuming from %s: this node's share of the remote copy in %s (newer than the checkpoints "
                    "intact on every node's disk)",
                    output_dir / checkpoint_dir_name(step),
                    remote.url,
                )
            return step
        logger.warning("Remote checkpoint-%d is not usable on every node; trying the next older one", step)
    return local_step
