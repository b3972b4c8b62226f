"""PLACEHOLDER for ``aegis_ckpt/signals.py`` (issue 4), used only while that module is absent.

``manager.py`` imports ``SignalWatcher`` from ``signals.py`` when it exists and falls back to this file otherwise;
once the real module lands, delete this file. It implements only the interface the managers rely on:
``SignalWatcher(signals=(SIGTERM, SIGINT, SIGHUP)).install()``, ``.uninstall()``, ``.triggered`` (signal number
or None). Handlers only set a flag; a second SIGINT raises ``KeyboardInterrupt`` at once. No handler chaining and
no Windows console events: that is what the real module adds.
"""

from __future__ import annotations

import signal
import threading

DEFAULT_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGHUP") if hasattr(signal, name)
)


class SignalWatcher:
    def __init__(self, signals=DEFAULT_SIGNALS):
        self.signals = tuple(signals)
        self._previous: dict[int, object] = {}
        self._triggered: int | None = None

    @property
    def triggered(self) -> int | None:
        return self._triggered

    def _handle(self, signum, frame):
        if self._triggered is not None and signum == getattr(signal, "SIGINT", None):
            raise KeyboardInterrupt
        self._triggered = signum

    def install(self) -> SignalWatcher:
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("signal handlers can only be installed from the main thread")
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()
