"""The supervisor's heartbeat file: written by the training process, watched by ``aegis-ckpt run``.

Both sides live here so that the file's one JSON format (``{"unix", "pid", "step", "phase"}``) is spelled once.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from ..storage import fsio

logger = logging.getLogger(__name__)

HEARTBEAT_ENV = "AEGIS_HEARTBEAT_FILE"
"""Set by ``aegis-ckpt run`` for its child: the path of a file that the training process rewrites while it makes
progress. A heartbeat older than the supervisor's hang timeout means the run is stuck."""


def heartbeat_path_from_env() -> Path | None:
    value = os.environ.get(HEARTBEAT_ENV)
    return Path(value) if value else None


def write_heartbeat(path: Path, *, step: int, phase: str) -> None:
    """Rewrite the heartbeat file: ``{"unix": ..., "pid": ..., "step": ..., "phase": ...}``. Not fsynced: it
    only has to be visible to a supervisor on the same machine, and a lost heartbeat costs nothing."""
    record = {"unix": time.time(), "pid": os.getpid(), "step": step, "phase": phase}
    fsio.atomic_write_bytes(path, json.dumps(record).encode("utf-8"), durable=False)


class SupervisorHeartbeat:
    """Writes the supervisor's heartbeat file (``AEGIS_HEARTBEAT_FILE``) at most every ``every_sec`` seconds, or
    at once when forced (train begin, around saves, train end). Without a supervisor it does nothing."""

    def __init__(self, clock, every_sec: float = 5.0, path: Path | None = None):
        self.path = path if path is not None else heartbeat_path_from_env()
        self.clock = clock
        self.every_sec = every_sec
        self._last: float | None = None

    def beat(self, step: int, phase: str, *, force: bool = False) -> None:
        if self.path is None:
            return
        now = self.clock()
        if not force and self._last is not None and now - self._last < self.every_sec:
            return
        self._last = now
        try:
            write_heartbeat(self.path, step=step, phase=phase)
        except OSError as e:
            logger.debug("heartbeat not written: %s", e)


class HeartbeatWatcher:
    """Watches the heartbeat file; a change of its content (not its clock) is a beat."""

    def __init__(self, path: Path):
        self.path = path
        self._stamp: tuple[int, int] | None = None

    def poll(self) -> dict | None:
        """The new heartbeat record when the file changed since the last poll, else None."""
        try:
            st = self.path.stat()
        except OSError:
            return None
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return None
        try:
            record = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None  # caught between write and replace; the next poll reads it
        self._stamp = stamp
        return record if isinstance(record, dict) else {}
