"""The audit log ``<output_dir>/.aegis/audit.jsonl``: one JSON object a line, one line per event.

Every line has ``event``, ``time_unix``, ``time`` (UTC, ISO 8601), ``pid`` and, where it applies, ``step`` and
``reason``; the rest depends on the event (see ``docs/audit-log.md``). A commit lists a digest of every
committed file: the manifest's xxh3-128 by default, sha256 with ``audit_digest="sha256"`` (``audit_digests``). The log holds names, numbers and hashes only: never tensor values, training data or text.
``AuditLog.append`` enforces that by accepting only JSON scalars (strings capped in length) and lists/dicts of
them; anything else is dropped and named by its type.

Appends open the file with ``O_APPEND``, write one whole line in a single call and fsync it, so concurrent
writers do not interleave and a line survives a power cut once ``append`` returned (the folder is flushed too
when the append created the file). A crash can still leave a
torn last line: ``read_audit`` skips it and reports it instead of failing, and the next append starts on a new
line so that no later event is lost with it.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import fsio
from .layout import AUDIT_NAME

logger = logging.getLogger(__name__)


AUDIT_EVENTS = (
    "start",  # a process took the run lease; how the previous one ended
    "power_loss",  # the previous process died with the machine (boot id changed)
    "crash_detected",  # the previous process died without a clean exit record, same boot
    "resume",  # state restored from a committed checkpoint
    "save",  # checkpoint files written (before the commit)
    "commit",  # manifest written: the checkpoint counts; digests of its files
    "save_failed",  # a save or commit failed; the previous committed checkpoint stays the resume point
    "prune",  # retention deleted a committed checkpoint
    "quarantine",  # an uncommitted, damaged or superseded folder was moved aside
    "interval",  # the adaptive policy changed the save interval
    "signal",  # a stop signal was seen; a checkpoint follows, then exit 128 + signum
    "exception",  # an unhandled exception in a protected region
    "finish",  # training completed (completion marker written)
    "exit",  # the process released the run lease
)
"""What the audit log records: every event that changed or judged the output dir, one JSON line each."""

MAX_STRING_CHARS = 300
"""Longer strings are cut: the log describes events, it does not carry content."""


def _clean(value: Any, depth: int = 0) -> Any:
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else str(value)
    if isinstance(value, str):
        return value if len(value) <= MAX_STRING_CHARS else value[:MAX_STRING_CHARS] + "..."
    if isinstance(value, os.PathLike):
        return _clean(os.fspath(value), depth)
    if depth < 3 and isinstance(value, (list, tuple)):
        return [_clean(v, depth + 1) for v in value]
    if depth < 3 and isinstance(value, dict):
        return {str(k)[:MAX_STRING_CHARS]: _clean(v, depth + 1) for k, v in value.items()}
    # Tensors, arrays, bytes, arbitrary objects: never serialise them (their repr could carry data).
    return f"<dropped {type(value).__name__}>"


def audit_digests(manifest) -> dict[str, Any]:
    """The digest fields of a commit event for a ``commit.Manifest``: ``digest`` names the hash, and the field of
    that name maps each file to it. sha256 when the save computed it for every file (``audit_digest="sha256"``);
    otherwise the xxh3-128 the manifest already holds, which costs nothing more to record."""
    files = sorted(manifest.files.items())
    if files and all(d.sha256 for _, d in files):
        return {"digest": "sha256", "sha256": {name: d.sha256 for name, d in files}}
    return {"digest": "xxh3_128", "xxh3_128": {name: d.xxh3_128 for name, d in files}}


class AuditLog:
    """Appends events to one ``audit.jsonl`` file. Failures to write are logged, never raised: an audit problem
    must not stop training."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    @classmethod
    def in_dir(cls, aegis_dir: str | os.PathLike) -> AuditLog:
        return cls(Path(aegis_dir) / AUDIT_NAME)

    def append(self, event: str, *, step: int | None = None, reason: str = "", **fields: Any) -> None:
        if event not in AUDIT_EVENTS:
            raise ValueError(f"unknown audit event {event!r} (known: {', '.join(AUDIT_EVENTS)})")
        now = time.time()
        record: dict[str, Any] = {
            "event": event,
            "time_unix": round(now, 3),
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
            "pid": os.getpid(),
        }
        if step is not None:
            record["step"] = int(step)
        if reason:
            record["reason"] = reason
        record.update({k: _clean(v) for k, v in fields.items()})
        line = (json.dumps(record, sort_keys=False, separators=(",", ":")) + "\n").encode("utf-8")
        try:
            fsio.makedirs_durable(self.path.parent)
            created = not self.path.exists()
            fd = fsio.open_fd(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | getattr(os, "O_BINARY", 0))
            try:
                # A crash may have left a torn line without its newline: start on a fresh line, so this event is
                # not glued to the fragment. (O_APPEND writes at the end whatever the read position.)
                end = os.lseek(fd, 0, os.SEEK_END)
                if end > 0:
                    os.lseek(fd, end - 1, os.SEEK_SET)
                    if os.read(fd, 1) != b"\n":
                        line = b"\n" + line
                _write_whole_line(fd, line, end)
                fsio.fsync_fd(fd)
            finally:
                os.close(fd)
            if created:  # the new file's name must survive a power cut as well as its first line
                fsio.fsync_dir(self.path.parent)
        except OSError as e:
            logger.warning("Could not append the %s event to %s: %s", event, self.path, e)


def _write_whole_line(fd: int, line: bytes, end: int) -> None:
    """Write ``line`` at the end of the log, or nothing: on a full disk ``write`` can take part of a line and
    then fail; the fragment is cut off again (``ftruncate`` back to ``end``), so the log never keeps a torn line
    of ours, and the error is raised for the caller to log."""
    done = 0
    try:
        while done < len(line):
            written = fsio.write_fd(fd, line[done:])
            if written <= 0:
                raise OSError(errno.ENOSPC, "no space left for the audit line")
            done += written
    except OSError:
        if done:
            try:
                os.ftruncate(fd, end)
            except OSError:
                pass  # the reader skips a torn line; the next append starts on a fresh one
        raise


@dataclass
class AuditReadResult:
    events: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    """Lines that could not be parsed (a torn last line after a crash is expected and reported here)."""


def read_audit(path: str | os.PathLike) -> AuditReadResult:
    """Parse an audit log, skipping (and reporting) lines that are not complete JSON objects."""
    result = AuditReadResult()
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return result
    lines = data.split(b"\n")
    for n, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            torn = n == len(lines)  # no newline after it: the write was cut short
            what = (
                "torn last line (crash during append)"
                if torn
                else "unreadable (a line torn by an earlier crash)"
            )
            result.problems.append(f"line {n}: {what}")
            continue
        if isinstance(obj, dict) and "event" in obj:
            result.events.append(obj)
        else:
            result.problems.append(f"line {n}: not an event object")
    return result
