"""``.aegis/quarantine/``: folders set aside as evidence, with a record of why, kept for a while but not forever.

``set_aside`` moves a folder there (never deleting it) and writes its record; ``quarantine_records`` reads the
records back. Bounds: ``keep_newest`` keeps only the newest ``QUARANTINE_KEEP`` folders after each move, and
``trim_quarantine`` applies the age and size limits of the options at train begin. ``select_expired`` is pure:
given the quarantined folders (name, moved time, size) it returns those beyond the age limit or the size cap,
oldest first; the newest folder is always kept (it explains the latest problem). ``empty_quarantine`` deletes
all (``aegis-ckpt clean``). ``CheckpointStore.quarantine`` is the entry point of the save paths.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import fsio
from .audit import AuditLog
from .layout import QUARANTINE_DIR, QUARANTINE_RECORD, parse_checkpoint_step
from .space import folder_bytes

logger = logging.getLogger(__name__)

DAY_SEC = 86400.0
GB = 1e9

QUARANTINE_KEEP = 3
"""Folders kept in quarantine; older ones are deleted. Quarantine is for a look at what went wrong, and must
not grow without bound: a disk filled by set-aside folders would make every later save fail."""

_SIDE_RECORD_SUFFIX = "." + QUARANTINE_RECORD


def _record_path(moved: Path) -> Path:
    """Where the quarantine record of ``moved`` goes: inside it when it is a real directory, else beside it (a
    linked ``checkpoint-<step>`` is moved as the link itself, and nothing is ever written into its target)."""
    if moved.is_dir() and not moved.is_symlink():
        return moved / QUARANTINE_RECORD
    return moved.with_name(moved.name + _SIDE_RECORD_SUFFIX)


def _utc_stamp() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())


def set_aside(folder: Path, reason: str, *, quarantine_dir: Path, audit: AuditLog) -> Path | None:
    """Move ``folder`` into ``quarantine_dir`` (never delete it), record why beside it and in the audit log.
    Returns the new path, or None if the folder vanished meanwhile or could not be moved (logged)."""
    if not os.path.lexists(folder):
        return None
    fsio.makedirs_durable(quarantine_dir)
    target = quarantine_dir / f"{_utc_stamp()}-{folder.name}"
    n = 1
    while os.path.lexists(target):
        n += 1
        target = quarantine_dir / f"{_utc_stamp()}-{folder.name}.{n}"
    try:
        fsio.replace(folder, target)
    except OSError as e:
        logger.error("Could not move %s to quarantine (%s); reason it was set aside: %s", folder, e, reason)
        return None
    fsio.fsync_dir(folder.parent)
    fsio.fsync_dir(quarantine_dir)
    try:
        fsio.atomic_write_json(
            _record_path(target),
            {"original_path": str(folder), "reason": reason, "moved_unix": time.time()},
        )
    except OSError as e:
        logger.warning("Could not write the quarantine record in %s: %s", target, e)
    logger.warning("Set aside %s -> %s: %s", folder.name, target, reason)
    audit.append(
        "quarantine",
        step=parse_checkpoint_step(folder.name),
        reason=reason,
        path=folder.name,
        moved_to=target.name,
    )
    return target


def keep_newest(
    quarantine_dir: Path, *, newest: Path, discard: Callable[[Path], bool], audit: AuditLog
) -> None:
    """Hand the oldest quarantined folders beyond ``QUARANTINE_KEEP`` to ``discard`` (the store's trash), never
    ``newest``."""
    entries = sorted(p for p in quarantine_dir.iterdir() if p.is_dir() and p != newest)
    for old in entries[: max(0, len(entries) - (QUARANTINE_KEEP - 1))]:
        if discard(old):
            logger.info("Deleted %s from quarantine (it keeps the newest %d)", old.name, QUARANTINE_KEEP)
            audit.append(
                "prune",
                reason=f"quarantine keeps the newest {QUARANTINE_KEEP}",
                path=f"{QUARANTINE_DIR}/{old.name}",
            )


def quarantine_records(quarantine_dir: Path) -> list[dict]:
    """Records of the quarantined folders, oldest first (``reason: unknown`` where a record is missing)."""
    if not quarantine_dir.is_dir():
        return []
    out = []
    for p in sorted(quarantine_dir.iterdir()):
        if p.name.endswith(_SIDE_RECORD_SUFFIX):
            continue
        record = {"path": str(p), "reason": "unknown"}
        try:
            record.update(json.loads(_record_path(p).read_text(encoding="utf-8")))
        except (OSError, ValueError):
            pass
        out.append(record)
    return out


@dataclass(frozen=True)
class QuarantinedFolder:
    path: Path
    moved_unix: float
    size_bytes: int


def select_expired(
    folders: list[QuarantinedFolder], *, now: float, max_age_sec: float | None, max_bytes: float | None
) -> list[QuarantinedFolder]:
    """The folders to delete, oldest first: older than ``max_age_sec``, or (oldest first) as many as it takes
    to bring the total under ``max_bytes``. The newest folder is never selected."""
    ordered = sorted(folders, key=lambda f: (f.moved_unix, f.path.name))
    candidates = ordered[:-1]
    expired = [f for f in candidates if max_age_sec is not None and now - f.moved_unix > max_age_sec]
    if max_bytes is not None:
        total = sum(f.size_bytes for f in ordered) - sum(f.size_bytes for f in expired)
        for f in candidates:
            if total <= max_bytes:
                break
            if f not in expired:
                expired.append(f)
                total -= f.size_bytes
    return sorted(expired, key=lambda f: (f.moved_unix, f.path.name))


def list_quarantine(quarantine_dir: Path) -> list[QuarantinedFolder]:
    """The folders in ``quarantine_dir`` with the time they were moved (their record, else the folder's mtime)."""
    if not quarantine_dir.is_dir():
        return []
    out = []
    for p in quarantine_dir.iterdir():
        if p.is_symlink() or not p.is_dir():
            continue
        moved = p.stat().st_mtime
        try:
            moved = float(json.loads((p / QUARANTINE_RECORD).read_text(encoding="utf-8"))["moved_unix"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
        out.append(QuarantinedFolder(p, moved, folder_bytes(p)))
    return out


def _delete(folder: QuarantinedFolder) -> bool:
    shutil.rmtree(folder.path, ignore_errors=True)
    if folder.path.exists():
        logger.warning("Could not delete %s from quarantine yet; will retry later", folder.path)
        return False
    return True


def trim_quarantine(
    quarantine_dir: Path, *, max_age_days: float | None, max_gb: float | None, now: float | None = None
) -> list[Path]:
    """Delete the quarantined folders beyond the limits; return what was deleted."""
    expired = select_expired(
        list_quarantine(quarantine_dir),
        now=time.time() if now is None else now,
        max_age_sec=None if max_age_days is None else max_age_days * DAY_SEC,
        max_bytes=None if max_gb is None else max_gb * GB,
    )
    deleted = [f.path for f in expired if _delete(f)]
    if deleted:
        logger.info(
            "Deleted %d folder(s) from quarantine (older than %s days or beyond %s GB): %s",
            len(deleted),
            max_age_days,
            max_gb,
            ", ".join(p.name for p in deleted),
        )
    return deleted


def empty_quarantine(quarantine_dir: Path, *, dry_run: bool = False) -> list[QuarantinedFolder]:
    """Delete every quarantined folder (or, with ``dry_run``, only list them); return them."""
    folders = sorted(list_quarantine(quarantine_dir), key=lambda f: f.moved_unix)
    if dry_run:
        return folders
    return [f for f in folders if _delete(f)]
