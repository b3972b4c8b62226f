"""The handler a stop leaves behind while the process exits (``exit_on_next_interrupt``): a further Ctrl+C is
``SystemExit(130)``, once; and a new run in the same interpreter (a notebook, a process that trains twice) never
chains to it, so its own Ctrl+C still saves before exiting. Real SIGINTs to this process."""

from __future__ import annotations

import os
import signal

import pytest

from aegis_ckpt.system.signals import SignalWatcher, exit_on_next_interrupt


@pytest.fixture
def restore_sigint():
    before = signal.getsignal(signal.SIGINT)
    yield
    signal.signal(signal.SIGINT, before)


def test_a_later_run_in_the_same_process_is_not_cut_short(restore_sigint):
    signal.signal(signal.SIGINT, signal.default_int_handler)
    exit_on_next_interrupt(130)
    watcher = SignalWatcher(grace_period_sec=None, console_events=False)
    watcher.install()
    try:
        os.kill(os.getpid(), signal.SIGINT)  # the new run's Ctrl+C: recorded for its emergency save, no exit
        assert watcher.triggered == signal.SIGINT
    finally:
        watcher.mark_done()
        watcher.uninstall()
    with pytest.raises(SystemExit) as exited:
        os.kill(os.getpid(), signal.SIGINT)  # on the way out: a stop, not a KeyboardInterrupt
    assert exited.value.code == 130
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)  # once only: the interpreter's own Ctrl+C is back


CHILD = r"""
import sys, threading, time
from aegis_ckpt.system.signals import exit_on_next_interrupt

def linger():
    # A writer still running when the main module ends: the interpreter joins it before any atexit callback.
    while threading.main_thread().is_alive():
        time.sleep(0.01)
    print("joining", flush=True)
    time.sleep(60)

threading.Thread(target=linger).start()
exit_on_next_interrupt(130)
"""


def test_ctrl_c_while_the_interpreter_joins_threads_exits_130_without_a_traceback(tmp_path):
    """The moment between the end of the main module and the atexit callbacks: the interpreter is joining
    non-daemon threads (a background save, an upload). A Ctrl+C there must leave at once with 130 and print
    nothing but the one line, not "Exception ignored in threading" with a traceback."""
    import sys

    from testenv import ctrl_c_after_line

    code, stderr, took = ctrl_c_after_line([sys.executable, "-c", CHILD], "joining", settle=0.2)
    assert code == 130, stderr
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr
    assert "SIGINT again while exiting: exiting with code 130" in stderr, stderr
    assert took < 20, "the process waited for the lingering thread"


def test_the_exit_handler_takes_over_before_the_watcher_lets_go(restore_sigint):
    """The emergency exit installs the exit handler while the watcher still holds SIGINT, then removes the
    watcher: a Ctrl+C at any moment of that hand-over is a clean exit, and after it Ctrl+C is the handler from
    before the watcher (not the removed watcher's)."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    watcher = SignalWatcher(grace_period_sec=None, console_events=False)
    watcher.install()
    exit_on_next_interrupt(130, previous=watcher.handler_before(signal.SIGINT))
    watcher.uninstall()  # must leave the exit handler in place
    with pytest.raises(SystemExit) as exited:
        os.kill(os.getpid(), signal.SIGINT)
    assert exited.value.code == 130
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
