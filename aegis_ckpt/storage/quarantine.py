"""Bounding ``.aegis/quarantine/``: folders set aside are kept as evidence, but not forever.

``select_expired`` is pure: given the quarantined folders (name, moved time, size) it returns those beyond the
age limit or the size cap, oldest first; the newest folder is always kept (it explains the latest problem).
``trim_quarantine`` deletes them, ``empty_quarantine`` deletes all (``aegis-ckpt clean``).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from .layout import QUARANTINE_RECORD

logger = logging.getLogger(__name__)

DAY_SEC = 86400.0
GB = 1e9


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
        out.append(QuarantinedFolder(p, moved, _size_bytes(p)))
    return out


def _size_bytes(folder: Path) -> int:
    total = 0
    for f in folder.rglob("*"):
        try:
            if f.is_file() and not f.is_symlink():
                total += f.stat().st_size
        except OSError:
            continue
    return total


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
