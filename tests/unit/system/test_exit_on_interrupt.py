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
