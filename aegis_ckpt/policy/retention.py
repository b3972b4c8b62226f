"""Which committed checkpoints to keep: a pure function of what each one is (step, commit time, pinned).

The store reads those facts from the manifests and deletes what this returns; keeping the decision free of I/O
lets every rule (newest N, pinned, protected, one milestone per window) be tested on plain records.
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


def select_prunable(
    committed: Sequence[Retained],
    max_keep: int,
    *,
    protect: Iterable[Path] = (),
    milestone_every_sec: float | None = None,
) -> list[Retained]:
    """All but the newest ``max_keep`` rolling checkpoints (``committed`` is oldest first), except protected
    paths, milestones and pinned checkpoints."""
    rolling = [c for c in committed if not c.pinned]
    keep = {c.path for c in rolling[-max_keep:]} | {c.path for c in committed if c.pinned}
    keep |= set(protect)
    if milestone_every_sec:
        keep |= milestones(committed, milestone_every_sec)
    return [c for c in committed if c.path not in keep]


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
