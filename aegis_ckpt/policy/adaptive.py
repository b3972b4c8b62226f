"""The adaptive save interval: follows the measured save cost (an overhead cap) and, once the run has failed,
the Young/Daly optimum for its mean time between failures."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..options import CheckpointOptions

logger = logging.getLogger("aegis_ckpt.policy")

IntervalChange = Callable[[float, float, str], None]
"""``on_change(old_interval_sec, new_interval_sec, reason)``: called for every change the adaptive policy makes."""


@dataclass
class AdaptivePolicy:
    """An interval that follows the measured save cost and the run's failure history.

    After each save the interval is retargeted:

    * **Overhead cap.** Saving may take at most ``max_overhead`` of wall-clock time: with a save cost ``c`` the
      interval must be at least ``c * (1 - max_overhead) / max_overhead`` (19 x c for 5 %).
    * **Young/Daly.** Once this run has failed at least once, the mean time between failures ``M`` is known and
      the interval that minimises expected lost plus saving time is ``sqrt(2 * c * M)``. Without a failure
      history the target is the configured ``base_interval_sec``.
    * **Bounds.** The result is clamped to ``[min_interval_sec, max_interval_sec]``; the user's bounds win over
      both rules (a warning says so when the cap cannot be met).

    The save cost is smoothed (exponential average), and one save moves the interval by at most a factor of 2,
    so a single slow save cannot throw it around. Every change is logged with its reason and reported to
    ``on_change``. Like every policy it never reads a clock: ``now`` comes from the caller.
    """

    base_interval_sec: float
    min_interval_sec: float
    max_interval_sec: float
    max_overhead: float = 0.05
    smoothing: float = 0.3
    """Weight of the newest save in the cost average."""
    max_step_factor: float = 2.0
    """Largest factor by which one retarget may lengthen or shorten the interval."""
    on_change: IntervalChange | None = None
    _interval: float = field(default=0.0, init=False)
    _cost_sec: float | None = field(default=None, init=False)
    _mtbf_sec: float | None = field(default=None, init=False)
    _next_due: float | None = field(default=None, init=False)
    _last_finished: float | None = field(default=None, init=False)
    _cap_warned: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        if not 0 < self.min_interval_sec <= self.max_interval_sec:
            raise ValueError("AdaptivePolicy needs 0 < min_interval_sec <= max_interval_sec")
        if not 0 < self.max_overhead < 1:
            raise ValueError("AdaptivePolicy needs 0 < max_overhead < 1")
        self._interval = min(max(self.base_interval_sec, self.min_interval_sec), self.max_interval_sec)

    @classmethod
    def from_options(cls, options: CheckpointOptions, **kwargs) -> AdaptivePolicy:
        low, high = options.interval_bounds
        return cls(
            base_interval_sec=options.save_interval_sec,
            min_interval_sec=low,
            max_interval_sec=high,
            max_overhead=options.max_save_overhead,
            **kwargs,
        )

    # ---- SavePolicy ----------------------------------------------------------------------------------------
    @property
    def interval_sec(self) -> float:
        return self._interval

    @property
    def save_cost_sec(self) -> float | None:
        """The smoothed cost of one save, or None before the first one."""
        return self._cost_sec

    @property
    def mtbf_sec(self) -> float | None:
        return self._mtbf_sec

    def start(self, now: float) -> None:
        self._next_due = now + self._interval

    def is_due(self, now: float) -> bool:
        if self._next_due is None:
            self.start(now)
            return False
        return now >= self._next_due

    def seconds_until_due(self, now: float) -> float:
        return 0.0 if self._next_due is None else max(0.0, self._next_due - now)

    def record_save(self, *, started: float, finished: float, size_bytes: int) -> None:
        cost = max(0.0, finished - started)
        if self._cost_sec is None:
            self._cost_sec = cost
        else:
            self._cost_sec += self.smoothing * (cost - self._cost_sec)
        self._last_finished = finished
        self._retarget()
        self._next_due = finished + self._interval

    # ---- inputs besides the saves --------------------------------------------------------------------------
    def seed_cost(self, cost_sec: float) -> None:
        """Start from a save cost measured earlier (e.g. before a restart), before this run saved at all."""
        if self._cost_sec is None and cost_sec >= 0:
            self._cost_sec = float(cost_sec)
            self._retarget()

    def set_failure_history(self, *, failures: int, running_sec: float) -> None:
        """``failures`` unplanned stops (crashes, power losses) over ``running_sec`` seconds of training."""
        self._mtbf_sec = running_sec / failures if failures > 0 and running_sec > 0 else None
        if self._cost_sec is not None:
            self._retarget()

    # ---- the decision --------------------------------------------------------------------------------------
    def target(self) -> tuple[float, str]:
        """The interval the rules ask for now, and why (before the per-save step limit)."""
        c = self._cost_sec or 0.0
        cap_floor = c * (1 - self.max_overhead) / self.max_overhead
        if self._mtbf_sec is not None and c > 0:
            desired = math.sqrt(2 * c * self._mtbf_sec)
            reason = f"Young/Daly sqrt(2 x {c:.3g} s save x {self._mtbf_sec:.0f} s MTBF) = {desired:.3g} s"
        else:
            desired = self.base_interval_sec
            reason = f"configured interval {desired:.3g} s (no failure history)"
        if desired < cap_floor:
            desired = cap_floor
            reason = (
                f"save cost {c:.3g} s: at least {cap_floor:.3g} s keeps saving under {self.max_overhead:.0%}"
            )
        if desired > self.max_interval_sec:
            if cap_floor > self.max_interval_sec and not self._cap_warned:
                self._cap_warned = True
                logger.warning(
                    "A save takes %.3g s: even at max_interval_sec=%.3g s saving takes %.1f%% of wall time (cap "
                    "%.0f%%). Raise max_interval_sec or make saves cheaper.",
                    c,
                    self.max_interval_sec,
                    100 * c / (self.max_interval_sec + c),
                    100 * self.max_overhead,
                )
            desired = self.max_interval_sec
            reason += f"; held at max_interval_sec {self.max_interval_sec:.3g} s"
        elif desired < self.min_interval_sec:
            desired = self.min_interval_sec
            reason += f"; held at min_interval_sec {self.min_interval_sec:.3g} s"
        return desired, reason

    def _retarget(self) -> None:
        desired, reason = self.target()
        old = self._interval
        new = min(max(desired, old / self.max_step_factor), old * self.max_step_factor)
        if new != desired:
            reason += f" (moving at most x{self.max_step_factor:g} per save)"
        logger.debug(
            "adaptive policy: cost=%s mtbf=%s target=%.3f -> %.3f",
            self._cost_sec,
            self._mtbf_sec,
            desired,
            new,
        )
        if abs(new - old) <= 0.01 * old:
            return
        self._interval = new
        logger.info("Save interval %.3g s -> %.3g s: %s", old, new, reason)
        if self._last_finished is not None:
            self._next_due = self._last_finished + new
        if self.on_change is not None:
            self.on_change(old, new, reason)
