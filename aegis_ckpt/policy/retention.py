"""Which committed checkpoints to keep: a pure function of what each one is (step, commit time, pinned).

The store reads those facts from the manifests and deletes what this returns; keeping the decision free of I/O
lets every rule (newest N, pinned, protected, one milestone per window, best k by a metric) be tested on plain
records.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Retained:
    """One committed checkpoint as retention sees it."""

    path: Path
    step: int
    committed_unix: float | None
    """From the manifest; None when it cannot be read (such a checkpoint is never a milestone)."""
    pinned: bool = False
    """A tagged save kept on purpose: never deleted, and not counted toward ``max_keep``."""
    metric: float | None = None
    """The evaluation metric measured at this checkpoint's step (``metric_for_best_model``), if any."""
    higher_is_better: bool = False
    """Direction of ``metric`` (the Trainer's ``greater_is_better``)."""


def select_prunable(
    committed: Sequence[Retained],
    max_keep: int,
    *,
    protect: Iterable[Path] = (),
    milestone_every_sec: float | None = None,
    keep_best_k: int = 0,
) -> list[Retained]:
    """All but the newest ``max_keep`` rolling checkpoints (``committed`` is oldest first), except protected
    paths, milestones, pinned checkpoints and the best ``keep_best_k`` by their metric."""
    rolling = [c for c in committed if not c.pinned]
    keep = {c.path for c in rolling[-max_keep:]} | {c.path for c in committed if c.pinned}
    keep |= set(protect)
    if milestone_every_sec:
        keep |= milestones(committed, milestone_every_sec)
    if keep_best_k:
        keep |= best_by_metric(committed, keep_best_k)
    return [c for c in committed if c.path not in keep]


def best_by_metric(committed: Sequence[Retained], k: int) -> set[Path]:
    """The ``k`` best checkpoints by their metric (Lightning's ``save_top_k``), in the direction recorded with the
    newest measured one; checkpoints without a metric never count. Ties go to the newer checkpoint."""
    measured = [c for c in committed if c.metric is not None and c.metric == c.metric]  # NaN never counts
    if not measured or k <= 0:
        return set()
    higher = measured[-1].higher_is_better
    ranked = sorted(measured, key=lambda c: (c.metric if higher else -c.metric, c.step), reverse=True)
    return {c.path for c in ranked[:k]}


def milestones(committed: Sequence[Retained], every_sec: float) -> set[Path]:
    """The first committed checkpoint of each ``every_sec`` window of commit time."""
    first_in_window: dict[int, tuple[float, Path]] = {}
    for c in committed:
        if c.committed_unix is None:
            continue
        window = int(c.committed_unix // every_sec)
        if window not in first_in_window or c.committed_unix < first_in_window[window][0]:
            first_in_window[window] = (c.committed_unix, c.path)
    return {p for _t, p in first_in_window.values()}
