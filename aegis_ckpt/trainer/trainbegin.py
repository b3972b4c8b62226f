"""The output dir at train begin, for the Trainer callback: open its store and put it in order before the
first save of this run.

The run lease is taken first (it may refuse a second process), before anything on disk changes. Then, on the
saving rank only, staging folders of an interrupted save are recovered, checkpoints beyond the start step are set
aside, the trash is emptied and the quarantine trimmed to its limits.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..cluster.nodes import CommonCheckpointGuard, node_local_checkpoints
from ..options import CheckpointOptions
from ..remote.mirror import RemoteMirror
from ..runstate.saves import SaveTail
from ..storage.quarantine import trim_quarantine
from ..storage.store import CheckpointStore
from .runrecord import TrainerRunRecord


def open_output_dir(
    args,
    state,
    options: CheckpointOptions,
    run: TrainerRunRecord,
    best: Callable[[], list[Path]],
    mirror: RemoteMirror | None = None,
) -> tuple[CheckpointStore, CommonCheckpointGuard, SaveTail]:
    """The store of the output dir, the node-local guard and the save tail of this run (``best``: the
    checkpoints retention must keep besides its own choice; ``mirror``: where commits are copied off the
    machine). Changes nothing on disk."""
    store = CheckpointStore(args.output_dir)
    # Node-local output dirs: retention keeps the newest step committed on every node (cluster/nodes.py).
    common = CommonCheckpointGuard(args.output_dir, active=node_local_checkpoints(args))
    common.start(state.global_step)
    tail = SaveTail(
        store,
        options,
        recorder=lambda: run.recorder,
        protect=lambda: [*best(), *common.protected()],
        mirror=mirror,
    )
    return store, common, tail


def tidy_output_dir(
    store: CheckpointStore, tail: SaveTail, start_step: int, options: CheckpointOptions
) -> None:
    """Prepare the output dir for a run (re)starting at ``start_step`` (see the module docstring)."""
    store.mark_managed()
    store.recover_staging()
    # Folders beyond the start step belong to an abandoned timeline (e.g. a newer checkpoint was damaged and
    # training resumed from an older one): the Trainer would overwrite them in place.
    tail.set_aside_later(
        start_step,
        f"superseded: training (re)started at step {start_step}, before this checkpoint",
    )
    # Retention once before training: a run stopped between a commit and its retention, or whose restart just
    # published a save from staging, left more than max_keep; without this every such restart added one for good.
    # The checkpoint resumed from was verified by the resume scan and is kept.
    resumed_from = store.path_for_step(start_step)
    if start_step > 0 and resumed_from.is_dir():
        tail.prune(resumed_from)
    store.empty_trash()
    trim_quarantine(
        store.quarantine_dir,
        max_age_days=options.quarantine_max_age_days,
        max_gb=options.quarantine_max_gb,
    )
