"""Free space on the checkpoint drive: asked before a save is written, and told apart from other failures after.

A checkpoint that cannot fit must never be started. A half-written save costs more than the space it filled:
torch's zip serializer reacts to a short write with a C++ error and, when the writer object is destroyed after
that, can abort the whole process (SIGABRT, exit 134). So every save path asks ``shortfall`` first (one
``statvfs``, microseconds) against the expected size of the checkpoint, and a save that fails anyway (the disk
filled while it was written) is recognised by ``is_disk_full`` so that its leftovers are deleted at once rather
than kept in quarantine on a disk that is already full.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from pathlib import Path

from ..errors import DiskFullError

SPACE_MARGIN_BYTES = 256 * 1024
"""Room kept on top of a checkpoint's expected size: the small files (config, trainer state, RNG state), the
manifest, the audit line and the run record written around a save."""

SPACE_MARGIN_FRACTION = 0.02
"""And a little more for large checkpoints: zip records, safetensors headers and file-system block rounding."""

_DISK_FULL_TEXTS = ("No space left on device", "Disk quota exceeded", "File too large", "os error 28")
"""How serializers that wrap the OS error in their own type (safetensors' ``SafetensorError``) still say it."""

_DISK_FULL_ERRNOS = frozenset(
    code for code in (errno.ENOSPC, getattr(errno, "EDQUOT", None), errno.EFBIG) if code is not None
)


def free_bytes(path: str | os.PathLike) -> int:
    """Bytes an unprivileged writer can still use on the file system of ``path`` (its nearest existing parent)."""
    where = Path(path).absolute()
    while not where.exists() and where.parent != where:
        where = where.parent
    return shutil.disk_usage(where).free


def folder_bytes(folder: str | os.PathLike) -> int:
    """Bytes of the regular files under ``folder``. Links are not followed (what they point to is not in the
    folder), and an entry that vanishes or cannot be read counts nothing: a size for a report or a limit, never
    an error."""
    total = 0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            try:
                info = os.lstat(os.path.join(root, name))
            except OSError:
                continue
            if stat.S_ISREG(info.st_mode):
                total += info.st_size
    return total


def bytes_needed(checkpoint_bytes: int) -> int:
    """What a save of a ``checkpoint_bytes`` checkpoint needs free before it starts."""
    return int(checkpoint_bytes * (1 + SPACE_MARGIN_FRACTION)) + SPACE_MARGIN_BYTES


def format_bytes(n: float, *, decimals: int = 1) -> str:
    """``n`` bytes for a person: ``512 B``, ``10.4 MiB`` (binary units up to GiB; ``decimals`` above bytes)."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.{decimals}f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover - the loop returns at GiB


def shortfall(path: str | os.PathLike, checkpoint_bytes: int) -> str | None:
    """None when a checkpoint of ``checkpoint_bytes`` fits at ``path``; else a sentence saying how much is free,
    how much is needed and what to do."""
    try:
        free = free_bytes(path)
    except OSError:
        return None  # cannot tell: let the write try, its failure is handled like any other
    need = bytes_needed(checkpoint_bytes)
    if free >= need:
        return None
    return (
        f"only {format_bytes(free)} free on {path}, a checkpoint needs ~{format_bytes(need)}; "
        "free some space or lower max_keep"
    )


def ensure_space(path: str | os.PathLike, checkpoint_bytes: int, *, what: str) -> None:
    """Raise ``DiskFullError`` before anything of ``what`` is written when it cannot fit."""
    problem = shortfall(path, checkpoint_bytes)
    if problem is not None:
        raise DiskFullError(f"{what} does not fit: {problem}")


def is_disk_full(error: BaseException | None, path: str | os.PathLike | None = None) -> bool:
    """Whether ``error`` (or an error it was raised from) means the file system ran out of space. Serializers
    that hide the ``OSError`` (torch's zip writer reports a short write as ``RuntimeError: unexpected pos``) count
    when ``path``'s file system has less than the safety margin left."""
    seen = 0
    while error is not None and seen < 8:
        if isinstance(error, DiskFullError):
            return True
        if isinstance(error, OSError) and error.errno in _DISK_FULL_ERRNOS:
            return True
        if any(text in str(error) for text in _DISK_FULL_TEXTS):
            return True
        seen += 1
        error = error.__cause__ or error.__context__
    if path is None:
        return False
    try:
        return free_bytes(path) < SPACE_MARGIN_BYTES
    except OSError:
        return False
