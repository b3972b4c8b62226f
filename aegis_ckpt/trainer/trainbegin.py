"""The output dir at train begin, for the Trainer callback: put it in order before the first save of this run.

Runs on the saving rank only, after the run lease is taken (which may refuse a second process) and before
anything else on disk changes: staging folders of an interrupted save are recovered, checkpoints beyond the
start step are set aside, the trash is emptied and the quarantine trimmed to its limits.
"""

from __future__ import annotations

from ..options import CheckpointOptions
from ..runstate.saves import SaveTail
from ..storage.quarantine import trim_quarantine
from ..storage.store import CheckpointStore


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
    store.empty_trash()
    trim_quarantine(
        store.quarantine_dir,
        max_age_days=options.quarantine_max_age_days,
        max_gb=options.quarantine_max_gb,
    )
