"""SignalWatcher: flag-only handlers, chaining, restore, second-signal and grace exits, Windows console events.

Real signals are sent to this process with ``os.kill``; the process-ending exits go through the ``exit_now``
seam, and the Windows API through a fake ``kernel32`` (it cannot exist here).
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from aegis_ckpt.system.console import (
    CTRL_BREAK_EVENT,
    CTRL_C_EVENT,
    CTRL_CLOSE_EVENT,
    CTRL_LOGOFF_EVENT,
    CTRL_SHUTDOWN_EVENT,
)
from aegis_ckpt.system.signals import SignalWatcher


class Exits:
    def __init__(self):
        self.codes: list[int] = []

    def __call__(self, code: int) -> None:
        self.codes.append(code)


@pytest.fixture
def exits():
    return Exits()


@pytest.fixture
def restore_signals():
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGHUP)}
    yield
    for s, h in saved.items():
        signal.signal(s, h)


def test_real_signal_sets_the_flag_only(exits, restore_signals):
    watcher = SignalWatcher(signals=[signal.SIGUSR1], grace_period_sec=None, exit_now=exits)
    assert watcher.install()
    os.kill(os.getpid(), signal.SIGUSR1)
    assert watcher.triggered == signal.SIGUSR1
    assert watcher.source == "SIGUSR1"
    assert exits.codes == []
    watcher.uninstall()


def test_second_signal_exits_at_once_with_128_plus_signum(exits, restore_signals):
    watcher = SignalWatcher(signals=[signal.SIGINT], grace_period_sec=None, exit_now=exits)
    watcher.install()
    os.kill(os.getpid(), signal.SIGINT)  # would raise KeyboardInterrupt without the watcher
    assert watcher.triggered == signal.SIGINT and exits.codes == []
    os.kill(os.getpid(), signal.SIGINT)
    assert exits.codes == [130]
    watcher.uninstall()


def test_signal_after_the_save_is_done_is_ignored(exits):
    watcher = SignalWatcher(signals=[], grace_period_sec=None, exit_now=exits)
    watcher.notify(signal.SIGTERM, "SIGTERM")
    watcher.mark_done()
    watcher.notify(signal.SIGTERM, "SIGTERM")
    assert exits.codes == []


def test_grace_period_expiry_exits(exits):
    watcher = SignalWatcher(signals=[], grace_period_sec=0.2, exit_now=exits)
    watcher.notify(signal.SIGTERM, "SIGTERM")
    deadline = time.monotonic() + 5
    while not exits.codes and time.monotonic() < deadline:
        time.sleep(0.01)
    assert exits.codes == [143]


def test_mark_done_stops_the_watchdog(exits):
    watcher = SignalWatcher(signals=[], grace_period_sec=0.2, exit_now=exits)
    watcher.notify(signal.SIGTERM, "SIGTERM")
    watcher.mark_done()
    time.sleep(0.4)
    assert exits.codes == []


def test_previous_python_handler_is_chained_and_restored(exits, restore_signals):
    seen = []

    def user_handler(signum, frame):
        seen.append(signum)

    signal.signal(signal.SIGTERM, user_handler)
    watcher = SignalWatcher(signals=[signal.SIGTERM], grace_period_sec=None, exit_now=exits)
    watcher.install()
    os.kill(os.getpid(), signal.SIGTERM)
    assert watcher.triggered == signal.SIGTERM and seen == [signal.SIGTERM]
    watcher.uninstall()
    assert signal.getsignal(signal.SIGTERM) is user_handler


def test_replaced_handler_is_not_chained(exits, restore_signals):
    seen = []
    signal.signal(signal.SIGTERM, lambda s, f: seen.append(s))
    watcher = SignalWatcher(signals=[signal.SIGTERM], grace_period_sec=None, exit_now=exits)
    watcher.install(replace=[signal.SIGTERM])
    os.kill(os.getpid(), signal.SIGTERM)
    assert watcher.triggered == signal.SIGTERM and seen == []
    watcher.uninstall()


def test_defaults_are_restored(exits, restore_signals):
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    watcher = SignalWatcher(signals=[signal.SIGHUP, signal.SIGINT], grace_period_sec=None, exit_now=exits)
    before_int = signal.getsignal(signal.SIGINT)
    watcher.install()
    assert signal.getsignal(signal.SIGHUP) == watcher._on_signal
    watcher.uninstall()
    assert signal.getsignal(signal.SIGHUP) == signal.SIG_DFL
    assert signal.getsignal(signal.SIGINT) == before_int


def test_uninstall_leaves_a_handler_someone_else_installed_since(exits, restore_signals):
    watcher = SignalWatcher(signals=[signal.SIGTERM], grace_period_sec=None, exit_now=exits)
    watcher.install()

    def later(signum, frame):
        pass

    signal.signal(signal.SIGTERM, later)
    watcher.uninstall()
    assert signal.getsignal(signal.SIGTERM) is later


def test_install_off_the_main_thread_refuses(exits):
    watcher = SignalWatcher(signals=[signal.SIGTERM], grace_period_sec=None, exit_now=exits)
    result = []
    t = threading.Thread(target=lambda: result.append(watcher.install()))
    t.start()
    t.join()
    assert result == [False] and not watcher.installed


# ---- Windows console events behind a fake kernel32 ----------------------------------------------------------------
class FakeKernel32:
    def __init__(self):
        self.calls: list[tuple[object, bool]] = []

    def SetConsoleCtrlHandler(self, handler, add):  # noqa: N802 - the Windows API name
        self.calls.append((handler, bool(add)))
        return 1


def test_console_handler_is_registered_and_removed(exits, restore_signals):
    k32 = FakeKernel32()
    watcher = SignalWatcher(signals=[], grace_period_sec=None, exit_now=exits, kernel32=k32)
    watcher.install()
    assert len(k32.calls) == 1 and k32.calls[0][1] is True
    registered = k32.calls[0][0]
    # The registered object is a real C callback: calling it runs the handler logic.
    assert registered(CTRL_BREAK_EVENT) == 1
    assert watcher.triggered == getattr(signal, "SIGBREAK", signal.SIGTERM)
    watcher.uninstall()
    assert k32.calls[1] == (registered, False)


@pytest.mark.parametrize(
    "event, signum",
    [(CTRL_C_EVENT, signal.SIGINT), (CTRL_CLOSE_EVENT, signal.SIGTERM), (CTRL_LOGOFF_EVENT, signal.SIGTERM),
     (CTRL_SHUTDOWN_EVENT, signal.SIGTERM)],
)  # fmt: skip
def test_console_events_map_to_signals(event, signum, exits):
    watcher = SignalWatcher(signals=[], grace_period_sec=0.05, exit_now=exits)
    assert watcher.on_console_event(event) == 1
    assert watcher.triggered == signum


def test_unknown_console_event_is_not_handled(exits):
    watcher = SignalWatcher(signals=[], grace_period_sec=None, exit_now=exits)
    assert watcher.on_console_event(99) == 0
    assert watcher.triggered is None


def test_console_close_blocks_until_the_save_is_done(exits):
    """Windows ends the process when the close handler returns: it must wait for the emergency save."""
    watcher = SignalWatcher(signals=[], grace_period_sec=10, exit_now=exits)
    returned = []
    t = threading.Thread(target=lambda: returned.append(watcher.on_console_event(CTRL_CLOSE_EVENT)))
    t.start()
    time.sleep(0.3)
    assert returned == [] and watcher.triggered == signal.SIGTERM
    watcher.mark_done()
    t.join(5)
    assert returned == [1]


def test_ctrl_c_returns_at_once(exits):
    watcher = SignalWatcher(signals=[], grace_period_sec=10, exit_now=exits)
    started = time.monotonic()
    assert watcher.on_console_event(CTRL_C_EVENT) == 1
    assert time.monotonic() - started < 1
    watcher.mark_done()
