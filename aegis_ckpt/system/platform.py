"""The few facts about the platform that several layers ask: is this Windows, Ctrl+Break's signal number, a
signal's printable name, and where this package is installed. Spelled once here so no module keeps its own copy."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

IS_WINDOWS = sys.platform == "win32"

PACKAGE_DIR = Path(__file__).resolve().parents[1]
"""The ``aegis_ckpt`` folder. Its parent goes on a child process's ``PYTHONPATH``, and in an editable install it
is the source checkout (which holds ``launch/``)."""

SIGBREAK = int(getattr(signal, "SIGBREAK", 21))
"""Windows' Ctrl+Break (21, the number Python uses for ``signal.SIGBREAK``), also where the name is missing: the
supervisor computes the exit codes a Windows child can end with on any platform."""


def signal_name(signum: int) -> str:
    """``SIGTERM`` for 15; ``signal 99`` for a number this platform has no name for."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"
