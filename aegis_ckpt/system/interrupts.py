"""Ctrl+C outside training, as the command line raises it: ``Interrupted``, a ``KeyboardInterrupt`` of its own type.

Why not plain ``KeyboardInterrupt``: CPython records an interrupt that escapes code run by ``exec()`` or ``eval()``
of a string (dataclass and namedtuple creation use them, so any import of transformers does) in a process-wide
flag, and ``python -m`` checks that flag after the exit code is settled: the process then kills itself with SIGINT
(exit -2 instead of 130), although the command caught the interrupt and exited cleanly. The flag is set only for
exactly ``KeyboardInterrupt``, never for a subclass, and ``except KeyboardInterrupt`` still catches the subclass.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class Interrupted(KeyboardInterrupt):
    """Ctrl+C while the command line is not training (building the run, checking, downloading)."""


def raise_interrupted(signum, frame) -> None:
    """The SIGINT handler of the command line outside training (training installs its own watcher)."""
    raise Interrupted()


@contextmanager
def interrupts_raise_interrupted() -> Iterator[None]:
    """While inside, Ctrl+C raises ``Interrupted`` instead of ``KeyboardInterrupt``; a handler someone else set
    (not Python's default) is left alone. The previous handler is back on leaving."""
    previous = None
    if threading.current_thread() is threading.main_thread():
        current = signal.getsignal(signal.SIGINT)
        if current is signal.default_int_handler:
            previous = current
            signal.signal(signal.SIGINT, raise_interrupted)
    try:
        yield
    finally:
        if previous is not None and signal.getsignal(signal.SIGINT) is raise_interrupted:
            signal.signal(signal.SIGINT, previous)
