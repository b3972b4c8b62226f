"""Stop requests sent to the supervisor (Ctrl+C, ``kill``, ``systemctl stop``, the terminal closing): caught by
signal handlers, acted on by the supervisor's poll loop, forwarded to the child once.

The handler only records the signal, so nothing but an append runs inside a signal handler. The same signal twice
within ``DUPLICATE_SIGNAL_WINDOW_SEC`` is one event delivered twice and is not forwarded again; a later second
request is forwarded (the child reads it as "stop now, skip the checkpoint"). The first request decides how the
supervisor ends: no restart follows it, not even after a backoff wait.
"""

from __future__ import annotations

import logging
import signal
import subprocess
from collections.abc import Callable

from ..system.platform import signal_name
from ..system.process import ProcessControl

logger = logging.getLogger(__name__)

DUPLICATE_SIGNAL_WINDOW_SEC = 1.0
"""The same signal arriving twice within this window is one event delivered twice (the kernel's terminal hangup
and the shell's job hangup, systemd's SIGTERM to the whole group), not a user's deliberate second Ctrl+C."""


class StopRequests:
    """The stop signals the supervisor received, and their forwarding to the child (see the module docstring)."""

    def __init__(self, control: ProcessControl, clock: Callable[[], float]) -> None:
        self.control = control
        self.clock = clock
        self.signal: int | None = None
        """The first stop signal received (None while there was none)."""
        self._pending: list[int] = []
        self._last_forwarded: dict[int, float] = {}

    def _on_signal(self, signum, frame) -> None:  # flag only; the poll loop acts on it
        self._pending.append(signum)

    def install(self) -> dict[int, object]:
        """Catch the platform's stop signals; returns the handlers they had, for ``restore``."""
        previous = {}
        for signum in self.control.stop_signals:
            try:
                previous[signum] = signal.signal(signum, self._on_signal)
            except (ValueError, OSError):  # not the main thread, or not on this platform
                pass
        return previous

    @staticmethod
    def restore(previous: dict[int, object]) -> None:
        """Put back the handlers ``install`` replaced."""
        for signum, handler in previous.items():
            try:
                signal.signal(signum, handler)  # type: ignore[arg-type]
            except (ValueError, OSError, TypeError):
                pass

    def handle(self, proc: subprocess.Popen | None) -> None:
        """Act on the signals received since the last call: forward each to the running child (``proc``), or
        only note it when no child runs (a backoff wait)."""
        while self._pending:
            signum = self._pending.pop(0)
            name = signal_name(signum)
            now = self.clock()
            last = self._last_forwarded.get(signum)
            if last is not None and now - last < DUPLICATE_SIGNAL_WINDOW_SEC:
                logger.debug(
                    "%s again within %.1f s: the same event delivered twice, not forwarded", name, now - last
                )
                continue
            self._last_forwarded[signum] = now
            first = self.signal is None
            if first:
                self.signal = signum
            if proc is not None and proc.poll() is None:
                logger.warning(
                    "received %s: forwarding it to the run (pid %d)%s; it will not be restarted",
                    name,
                    proc.pid,
                    "" if first else " again (a second stop request means: stop now)",
                )
                try:
                    self.control.forward(proc, signum)
                except OSError as e:
                    logger.error("could not forward %s to pid %d: %s", name, proc.pid, e)
            else:
                logger.warning("received %s: stopping; no further restart", name)
