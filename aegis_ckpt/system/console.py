"""Windows console control events: Ctrl+C, Ctrl+Break, console close, logoff and shutdown.

Python's ``signal`` module never sees close, logoff or shutdown; ``SetConsoleCtrlHandler`` does. The events map
to the signal numbers the rest of the package speaks (Ctrl+C to SIGINT, the others to SIGBREAK or SIGTERM), so
exit codes follow the shell convention. ``kernel32`` is a parameter: the Windows API cannot exist on Linux, and
the tests pass a fake.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable

logger = logging.getLogger(__name__)

# Windows console control events (wincon.h) and the pseudo signal numbers we report for them.
CTRL_C_EVENT = 0
CTRL_BREAK_EVENT = 1
CTRL_CLOSE_EVENT = 2
CTRL_LOGOFF_EVENT = 5
CTRL_SHUTDOWN_EVENT = 6
CONSOLE_EVENT_NAMES = {
    CTRL_C_EVENT: "CTRL_C_EVENT",
    CTRL_BREAK_EVENT: "CTRL_BREAK_EVENT",
    CTRL_CLOSE_EVENT: "CTRL_CLOSE_EVENT",
    CTRL_LOGOFF_EVENT: "CTRL_LOGOFF_EVENT",
    CTRL_SHUTDOWN_EVENT: "CTRL_SHUTDOWN_EVENT",
}
# Ctrl+C maps to SIGINT, the others to SIGTERM-like stops; exit codes follow the signal numbers.
CONSOLE_EVENT_SIGNAL = {
    CTRL_C_EVENT: int(signal.SIGINT),
    CTRL_BREAK_EVENT: int(getattr(signal, "SIGBREAK", signal.SIGTERM)),
    CTRL_CLOSE_EVENT: int(signal.SIGTERM),
    CTRL_LOGOFF_EVENT: int(signal.SIGTERM),
    CTRL_SHUTDOWN_EVENT: int(signal.SIGTERM),
}
# Events after which Windows terminates the process as soon as the handler returns: block until saved.
TERMINATING_EVENTS = (CTRL_CLOSE_EVENT, CTRL_LOGOFF_EVENT, CTRL_SHUTDOWN_EVENT)


class ConsoleCtrlHandler:
    """Registers ``callback(ctrl_type) -> int`` with ``SetConsoleCtrlHandler`` and removes it again."""

    def __init__(self, callback: Callable[[int], int], *, kernel32=None):
        self.callback = callback
        self._kernel32 = kernel32
        self._handler = None

    def _api(self):
        if self._kernel32 is not None:
            return self._kernel32
        import ctypes

        return ctypes.WinDLL("kernel32", use_last_error=True)  # type: ignore[attr-defined]

    def install(self) -> bool:
        import ctypes

        factory = getattr(ctypes, "WINFUNCTYPE", ctypes.CFUNCTYPE)
        handler_type = factory(ctypes.c_int, ctypes.c_uint)
        self._handler = handler_type(self.callback)  # kept referenced: Windows calls it from its own thread
        try:
            ok = self._api().SetConsoleCtrlHandler(self._handler, True)
        except OSError as e:
            ok = False
            logger.warning("cannot register the console control handler: %s", e)
        if not ok:
            self._handler = None
        return bool(ok)

    def remove(self) -> None:
        if self._handler is None:
            return
        try:
            self._api().SetConsoleCtrlHandler(self._handler, False)
        except OSError as e:
            logger.debug("cannot remove the console handler: %s", e)
        self._handler = None
