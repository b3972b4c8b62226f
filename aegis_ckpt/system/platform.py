"""The few facts about the platform that several layers ask: is this Windows, Ctrl+Break's signal number, and
a signal's printable name. Spelled once here so no module keeps its own copy."""

from __future__ import annotations

import signal
import sys

IS_WINDOWS = sys.platform == "win32"

SIGBREAK = int(getattr(signal, "SIGBREAK", 21))
"""Windows' Ctrl+Break (21, the number Python uses for ``signal.SIGBREAK``), also where the name is missing: the
supervisor computes the exit codes a Windows child can end with on any platform."""


def signal_name(signum: int) -> str:
    """``SIGTERM`` for 15; ``signal 99`` for a number this platform has no name for."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"
