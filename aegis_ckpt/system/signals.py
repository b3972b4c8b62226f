"""Turn stop requests (POSIX signals, Windows console events) into a flag that the training loop polls.

A handler never saves: it only records which signal came, so the save happens at the next step boundary through
the normal commit path, with a consistent state. What the handlers do:

* first signal: set ``triggered`` and start a watchdog that ends the process if the emergency save has not
  finished within ``grace_period_sec`` (torchrun sends SIGKILL 30 s after SIGTERM; Windows kills a console
  process a few seconds after the close event);
* second signal while the first is being handled: exit at once with ``128 + signum``. The last committed
  checkpoint stays valid; a half-written one is never committed.

Handlers installed before ours are chained (called after ours records the signal) unless they would end the
process or raise ``KeyboardInterrupt``: that is exactly what ours replaces. ``uninstall`` restores them.
On Windows, ``SetConsoleCtrlHandler`` (``console.py``) also delivers console close, logoff and shutdown, which
Python's ``signal`` module never sees.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable

from ..exitcodes import exit_code_for_signal
from .console import CONSOLE_EVENT_NAMES, CONSOLE_EVENT_SIGNAL, TERMINATING_EVENTS, ConsoleCtrlHandler
from .interrupts import raise_interrupted
from .platform import IS_WINDOWS, signal_name

logger = logging.getLogger(__name__)


def signal_numbers(signals: Iterable[str | int]) -> tuple[int, ...]:
    """Signal numbers from names or numbers; names this platform lacks (SIGHUP on Windows) are skipped."""
    out = []
    for s in signals:
        if not isinstance(s, str):
            out.append(int(s))
        elif hasattr(signal, s):
            out.append(int(getattr(signal, s)))
    return tuple(out)


DEFAULT_SIGNALS = signal_numbers(("SIGTERM", "SIGINT", "SIGHUP", "SIGUSR1", "SIGBREAK"))
"""SIGTERM, SIGINT, SIGHUP and SIGUSR1 (the schedulers' "checkpoint and requeue") on POSIX; SIGTERM, SIGINT and
SIGBREAK on Windows, where the console events below cover close, logoff and shutdown."""


def _is_chainable(handler) -> bool:
    """Previous handlers worth calling after ours: user callables, not the defaults we stand in for, and not the
    exit handler a previous stop left behind (``exit_on_next_interrupt``: a new run in the same interpreter must
    save before it exits)."""
    if handler in (signal.SIG_DFL, signal.SIG_IGN, None, signal.default_int_handler, raise_interrupted):
        return False
    if isinstance(handler, _ExitOnInterrupt):
        return False
    return callable(handler)


def _exit_now(code: int) -> None:
    """Leave immediately, without running cleanup that could hang (the seam tests replace)."""
    os._exit(code)


class SignalWatcher:
    """Records stop requests for the training loop to act on at the next step boundary.

    Args:
        signals: POSIX signal numbers to watch (default ``DEFAULT_SIGNALS``).
        grace_period_sec: after the first signal, the process exits with ``128 + signum`` if ``mark_done()`` was
            not called within this many seconds. ``None`` disables the watchdog.
        console_events: also register a Windows console control handler (ignored elsewhere).
        exit_now: how to end the process at once (a seam for tests).
        notices: preemption notices (e.g. SIGUSR1 under Slurm). A notice that comes again while the first stop
            is handled is not "the user insists": a scheduler may deliver it twice (``scancel --full`` reaches
            the python process directly and through the batch shell that forwards it), so it never ends the
            process early; the scheduler's own SIGKILL bounds the wait.
    """

    def __init__(
        self,
        signals: Iterable[int] | None = None,
        *,
        grace_period_sec: float | None = 20.0,
        console_events: bool = True,
        exit_now: Callable[[int], None] = _exit_now,
        kernel32=None,
        notices: Iterable[int] = (),
    ):
        self.notices = frozenset(int(s) for s in notices)
        watched = tuple(int(s) for s in (signals if signals is not None else DEFAULT_SIGNALS))
        self.signals = watched + tuple(sorted(self.notices - set(watched)))
        self.grace_period_sec = grace_period_sec
        self.console_events = console_events
        self._exit_now = exit_now
        self._kernel32 = kernel32
        self._previous: dict[int, object] = {}
        self._skip_chain: set[int] = set()
        self._console: ConsoleCtrlHandler | None = None
        self.triggered: int | None = None
        self.triggered_at: float | None = None
        self.source: str = ""
        self._done = threading.Event()
        self._watchdog: threading.Timer | None = None
        self.installed = False

    # ---- install / uninstall ---------------------------------------------------------------------------------
    def install(self, *, replace: Iterable[int] = ()) -> bool:
        """Install the handlers. Returns False (and logs why) when not on the main thread, where Python cannot
        install signal handlers. ``replace``: signals whose previous handler must not be chained (e.g. the
        Trainer's own JIT-checkpoint SIGTERM handler, which would save a second time)."""
        if self.installed:
            return True
        if threading.current_thread() is not threading.main_thread():
            logger.warning("Not on the main thread: signal handlers not installed; emergency saves are off")
            return False
        self._skip_chain = {int(s) for s in replace}
        for signum in self.signals:
            try:
                self._previous[signum] = signal.getsignal(signum)
                signal.signal(signum, self._on_signal)
            except (OSError, ValueError, RuntimeError) as e:  # e.g. a signal this platform refuses
                logger.debug("cannot watch %s: %s", signal_name(signum), e)
                self._previous.pop(signum, None)
        if self.console_events and (IS_WINDOWS or self._kernel32 is not None):
            self._install_console_handler()
        self.installed = True
        return True

    def handler_before(self, signum: int):
        """The handler ``install`` replaced for ``signum`` (None when it did not replace one)."""
        return self._previous.get(signum)

    def uninstall(self) -> None:
        """Restore the handlers that were there before ``install``; stop the watchdog."""
        if not self.installed:
            return
        if threading.current_thread() is threading.main_thread():
            for signum, previous in self._previous.items():
                try:
                    if signal.getsignal(signum) == self._on_signal:
                        signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
                except (OSError, ValueError, RuntimeError, TypeError) as e:
                    logger.debug("cannot restore %s: %s", signal_name(signum), e)
        self._previous.clear()
        if self._console is not None:
            self._console.remove()
            self._console = None
        self.cancel_watchdog()
        self.installed = False

    def reset(self) -> None:
        """Forget a handled stop request (the custom-loop managers reuse one watcher)."""
        self.cancel_watchdog()
        self.triggered = None
        self.triggered_at = None
        self.source = ""
        self._done.clear()

    # ---- what handlers do ------------------------------------------------------------------------------------
    def _on_signal(self, signum, frame) -> None:
        self.notify(int(signum), signal_name(signum))
        previous = self._previous.get(int(signum))
        if int(signum) not in self._skip_chain and _is_chainable(previous):
            previous(signum, frame)

    def notify(self, signum: int, source: str, *, quiet: bool = False) -> None:
        """Record a stop request (called from a signal or console handler, or for a rank that learned of one
        from another rank: ``quiet`` then skips the console message)."""
        if self.triggered is not None:
            if self._done.is_set():
                return
            if signum in self.notices:
                if not quiet:
                    _write_stderr(f"[aegis-ckpt] {source} again: the checkpoint is already being saved\n")
                return
            # A second request while the first is still being handled: the user insists.
            _write_stderr(
                f"[aegis-ckpt] second stop request ({source}) while saving: exiting now with code "
                f"{exit_code_for_signal(signum)}; the last committed checkpoint stays the resume point\n"
            )
            self._exit_now(exit_code_for_signal(signum))
            return
        self.triggered = signum
        self.triggered_at = time.monotonic()
        self.source = source
        if not quiet:
            _write_stderr(
                f"[aegis-ckpt] {source} received: finishing the current step, then saving a checkpoint "
                f"(press Ctrl+C again to exit at once)\n"
            )
        if self.grace_period_sec is not None:
            self._watchdog = threading.Timer(self.grace_period_sec, self._grace_expired)
            self._watchdog.daemon = True
            self._watchdog.start()

    def _grace_expired(self) -> None:
        if self._done.is_set() or self.triggered is None:
            return
        _write_stderr(
            f"[aegis-ckpt] ERROR: the emergency checkpoint did not finish within {self.grace_period_sec:g} s "
            f"of {self.source}; exiting with code {exit_code_for_signal(self.triggered)} without it. The last "
            f"committed checkpoint stays the resume point; raise grace_period_sec if saves take longer.\n"
        )
        self._exit_now(exit_code_for_signal(self.triggered))

    def mark_done(self) -> None:
        """The emergency save finished (committed or failed cleanly): stop the watchdog, release Windows."""
        self._done.set()
        self.cancel_watchdog()

    def cancel_watchdog(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    # ---- Windows console events ------------------------------------------------------------------------------
    def _install_console_handler(self) -> None:
        self._console = ConsoleCtrlHandler(self.on_console_event, kernel32=self._kernel32)
        if not self._console.install():
            self._console = None

    def on_console_event(self, ctrl_type: int) -> int:
        """The console control handler (runs on a thread Windows creates). Returns 1 when handled.

        Close, logoff and shutdown end the process as soon as this returns, so it blocks until the emergency
        save is done or the grace period runs out."""
        signum = CONSOLE_EVENT_SIGNAL.get(int(ctrl_type))
        if signum is None:
            return 0
        self.notify(signum, CONSOLE_EVENT_NAMES.get(int(ctrl_type), f"console event {ctrl_type}"))
        if int(ctrl_type) in TERMINATING_EVENTS:
            self._done.wait(self.grace_period_sec)
        return 1


def exit_on_next_interrupt(code: int, *, previous=None) -> None:
    """While the process is already on its way out with ``code`` (after an emergency checkpoint, or a stop
    before the first step), a further Ctrl+C raises ``SystemExit(code)`` instead of ``KeyboardInterrupt``: the
    exit stays 130 with no traceback. The handler gives way to the previous one after it fired once, so an
    interactive session that catches the exit gets its usual Ctrl+C back. ``previous``: the handler to give way
    to, when the current one is a signal watcher about to be removed."""
    if threading.current_thread() is not threading.main_thread():
        return
    try:
        before = previous if previous is not None else signal.getsignal(signal.SIGINT)
        signal.signal(signal.SIGINT, _ExitOnInterrupt(code, before))
    except (OSError, ValueError):
        return
    # Once the interpreter winds down (atexit callbacks, thread joins), raising is no longer a clean way out.
    atexit.register(exit_at_once_on_interrupt, code)


class _ExitOnInterrupt:
    """The SIGINT handler of a process on its way out: ``SystemExit(code)``, once, then the previous handler."""

    def __init__(self, code: int, previous) -> None:
        self.code = code
        self.previous = previous if previous is not None else signal.SIG_DFL

    def __call__(self, signum, frame) -> None:
        if signal.getsignal(signal.SIGINT) is self:
            signal.signal(signal.SIGINT, self.previous)
        _write_stderr(
            f"[aegis-ckpt] {signal_name(signum)} again while exiting: exiting with code {self.code}\n"
        )
        if _joining_threads_at_exit(frame):
            # The interpreter is already joining the remaining threads before its atexit callbacks: an exception
            # raised there is only printed ("Exception ignored in threading") and the join goes on.
            _exit_now(self.code)
        raise SystemExit(self.code)


def _joining_threads_at_exit(frame) -> bool:
    """Whether the main thread is inside ``threading._shutdown``, the join of non-daemon threads that runs after
    the main module finished and before ``atexit`` callbacks (so ``exit_on_next_interrupt``'s atexit hook has not
    switched to exiting at once yet)."""
    shutdown = getattr(threading, "_shutdown", None)
    code = getattr(shutdown, "__code__", None)
    while frame is not None:
        if frame.f_code is code:
            return True
        frame = frame.f_back
    return False


def exit_at_once_on_interrupt(code: int) -> None:
    """From now on, Ctrl+C leaves the process at once with ``code``: for the moments the interpreter winds down
    (atexit callbacks, thread joins), when raising is no longer a clean way out. Main thread only."""

    def leave(signum, frame) -> None:
        _exit_now(code)

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, leave)


def _write_stderr(text: str) -> None:
    """Signal-handler-safe output: one write call, no logging locks (a handler may interrupt a log call)."""
    try:
        os.write(2, text.encode("utf-8", "replace"))
    except OSError:
        pass
