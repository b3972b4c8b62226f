"""When to save: the policy protocol, and the fixed wall-clock interval.

A policy never reads a clock itself; the caller passes ``now`` (from an injected ``clock``, by default
``time.monotonic``), so tests drive it with a fake clock instead of patching ``time``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    pass

logger = logging.getLogger("aegis_ckpt.policy")


class SavePolicy(Protocol):
    """Decides at a step boundary whether a rolling save is due."""

    @property
    def interval_sec(self) -> float: ...

    def start(self, now: float) -> None:
        """Training (re)started at ``now``: the first save is due one interval later."""

    def is_due(self, now: float) -> bool: ...

    def record_save(self, *, started: float, finished: float, size_bytes: int) -> None:
        """A save committed; the next one is due one interval after ``finished``."""


@dataclass
class IntervalPolicy:
    """Save every ``interval_sec`` seconds of wall-clock time, measured from the end of the last save.

    Measuring from the end (not the start) means a save that takes longer than the interval cannot cause
    back-to-back saves that stall training.
    """

    interval_sec: float
    _next_due: float | None = field(default=None, init=False)

    def start(self, now: float) -> None:
        self._next_due = now + self.interval_sec

    def is_due(self, now: float) -> bool:
        if self._next_due is None:
            self.start(now)
            return False
        due = now >= self._next_due
        logger.debug("interval policy: now=%.3f next_due=%.3f due=%s", now, self._next_due, due)
        return due

    def seconds_until_due(self, now: float) -> float:
        return 0.0 if self._next_due is None else max(0.0, self._next_due - now)

    def record_save(self, *, started: float, finished: float, size_bytes: int) -> None:
        self._next_due = finished + self.interval_sec
