"""Where a custom loop's state may be saved: unsafe regions, and a watch for loops that never reach a safe point.

Time-based saving must never capture weights in the middle of an update, so a save happens only where the loop
says the state is consistent. ``UnsafeRegions`` tracks the ``with unsafe():`` blocks around code that changes
the state: a save from another thread waits for the block, a ``step()`` inside it takes effect at the block's
end, and an exception inside it marks the state as torn (no emergency save of it). ``StallWatch`` only *warns*
when auto-save is armed but no safe point came for two intervals; it never saves.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

logger = logging.getLogger(__name__)


class UnsafeRegions:
    """The ``with unsafe():`` blocks of one loop; ``lock`` is held for the duration of a block and of a save."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._owner: int | None = None
        self._used = False
        self._torn = False
        self._deferred = False

    def inside(self) -> bool:
        """Whether the calling thread is inside its own block."""
        return self._owner == threading.get_ident()

    def defer(self) -> None:
        """A safe point reached inside a block: the block's end acts on it."""
        self._deferred = True

    @contextmanager
    def block(self, at_end: Callable[[], object]) -> Iterator[None]:
        """One unsafe block; ``at_end`` runs after it when a safe point was deferred to its end. The end of a block
        without one is not a safe point (the counters may not match the weights). Nested blocks join the outer."""
        if self.inside():
            yield  # nested: the outer block decides
            return
        self.lock.acquire()
        self._owner = threading.get_ident()
        self._used = True
        self._deferred = False
        try:
            yield
        except BaseException:
            self._torn = True
            raise
        finally:
            self._owner = None
            self.lock.release()
        self._torn = False
        if self._deferred:
            self._deferred = False
            at_end()

    def state_is_consistent(self) -> tuple[bool, str]:
        """Whether an emergency save now would capture a consistent state, and if not, why."""
        if self._torn or self._owner is not None:
            return False, "it interrupted a `with unsafe():` block, so the state may be half updated"
        if not self._used:
            return False, (
                "the loop marks no unsafe region, so it is unknown whether the state is consistent (wrap the "
                "optimizer step in `with ckpt_manager.unsafe():` to enable saves on exceptions)"
            )
        return True, ""


class StallWatch:
    """Warns (once until the next safe point) when no safe point came for two save intervals.

    Args:
        clock: the loop's time source.
        interval_sec: returns the current save interval (an adaptive policy changes it).
        armed: returns whether auto-save is on (nothing to warn about otherwise).
    """

    def __init__(
        self, clock: Callable[[], float], interval_sec: Callable[[], float], armed: Callable[[], bool]
    ) -> None:
        self.clock = clock
        self._interval_sec = interval_sec
        self._armed = armed
        self._last_safe_point = clock()
        self._warned = False
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def safe_point(self, now: float) -> None:
        """A safe point was reached at ``now``."""
        self._last_safe_point = now
        self._warned = False

    def start(self, now: float) -> None:
        """Count from ``now``, and start the background check once."""
        self._last_safe_point = now
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._watch, name="aegis-safe-point-watch", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _watch(self) -> None:
        while not self._stop.wait(min(max(self._interval_sec() / 4, 0.05), 10.0)):
            self.check(self.clock())

    def check(self, now: float) -> bool:
        """Warn when armed and no safe point came for two intervals: saving never happens in the middle of an
        update, so such a loop is not being checkpointed. Returns whether it warned."""
        if not self._armed() or self._warned:
            return False
        quiet = now - self._last_safe_point
        if quiet < 2 * self._interval_sec():
            return False
        self._warned = True
        logger.warning(
            "No safe point for %.3g s although auto-save is due every %.3g s: nothing is saved meanwhile. Call "
            "ckpt_manager.step() after each optimizer step (or end a `with ckpt_manager.unsafe():` block); saves "
            "only happen there, never in the middle of an update.",
            quiet,
            self._interval_sec(),
        )
        return True
