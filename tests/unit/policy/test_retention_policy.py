"""policy.retention: the keep/delete decision on plain records, without any file."""

from __future__ import annotations

from pathlib import Path

from aegis_ckpt.policy.retention import Retained, milestones, select_prunable


def _records(n: int, *, pinned: tuple[int, ...] = (), every: float = 10.0) -> list[Retained]:
    return [Retained(Path(f"checkpoint-{s}"), s, 1000.0 + s * every, s in pinned) for s in range(1, n + 1)]


def _steps(records: list[Retained]) -> list[int]:
    return [r.step for r in records]


def test_keeps_the_newest_n():
    assert _steps(select_prunable(_records(6), 2)) == [1, 2, 3, 4]


def test_pinned_are_kept_and_do_not_count():
    assert _steps(select_prunable(_records(6, pinned=(1, 5)), 2)) == [2, 3]


def test_protected_paths_are_kept():
    assert _steps(select_prunable(_records(5), 1, protect={Path("checkpoint-2")})) == [1, 3, 4]


def test_one_milestone_per_window_is_kept():
    records = _records(
        6, every=10.0
    )  # commits at 1010 .. 1060: windows [990, 1020), [1020, 1050), [1050, 1080)
    assert milestones(records, 30.0) == {Path("checkpoint-1"), Path("checkpoint-2"), Path("checkpoint-5")}
    assert _steps(select_prunable(records, 1, milestone_every_sec=30.0)) == [3, 4]


def test_unreadable_commit_time_is_never_a_milestone():
    records = [Retained(Path("a"), 1, None), Retained(Path("b"), 2, 1000.0)]
    assert milestones(records, 60.0) == {Path("b")}
