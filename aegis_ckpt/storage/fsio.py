"""Every file-system mutation of the package, in one small layer: writes, flushes, renames, deletions, folders.

Why one layer: durability is a property of the *order* of these calls (a file's data flushed before the rename that
publishes it, the folder flushed after an entry was created, renamed or removed in it). Keeping them here means
the order can be read in one place, faults can be injected at one seam (tests replace a function of this module),
and the power-loss tests can name each call site they switch off.

The rules every caller follows:

* a file that must survive a power cut is written to a temporary name, flushed (``fsync_file``), renamed into
  place (``replace``) and its folder flushed (``fsync_dir``): ``atomic_write_bytes`` / ``atomic_write_json`` do
  all four;
* a folder published by a rename (a committed checkpoint, the final model, a cache) has all its files and
  sub-folders flushed first, then the rename, then the folders on both sides of the rename (``publish_dir``);
* a deletion or a move that must stick is followed by a flush of the folder it changed.

Callers reach these functions through the module (``fsio.fsync_dir(...)``), never by a name bound at import time,
so that a replacement made by a test is seen everywhere.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

_IS_WINDOWS = sys.platform == "win32"
TMP_PREFIX = ".aegis_tmp-"
"""Temporary files of ``atomic_write_bytes``; the commit never lists them as checkpoint files."""


# ---- flushing ---------------------------------------------------------------------------------------------------
def fsync_fd(fd: int) -> None:
    """Flush an open file's data and metadata to stable storage."""
    os.fsync(fd)


def fsync_file(path: str | os.PathLike) -> None:
    """Flush one file's data and metadata to stable storage."""
    # Windows only flushes through a handle opened for writing; POSIX accepts a read-only descriptor.
    flags = (os.O_RDWR | getattr(os, "O_BINARY", 0)) if _IS_WINDOWS else os.O_RDONLY
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a directory's entries (creations, renames, deletions) durable. A no-op where the OS cannot do it
    (Windows)."""
    if _IS_WINDOWS:
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder: str | os.PathLike) -> None:
    """Flush every file under ``folder``, then every folder, deepest first (the data before the entries)."""
    folder = Path(folder)
    dirs: list[Path] = [folder]
    for root, subdirs, files in os.walk(folder):
        for name in files:
            fsync_file(Path(root) / name)
        dirs.extend(Path(root) / d for d in subdirs)
    for d in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
        fsync_dir(d)


# ---- whole files ------------------------------------------------------------------------------------------------
def write_fd(fd: int, data: bytes | memoryview) -> int:
    """One ``write`` call on an open descriptor; returns the bytes written."""
    return os.write(fd, data)


def open_fd(path: str | os.PathLike, flags: int, mode: int = 0o644) -> int:
    """``os.open`` for writers that manage their descriptor themselves (appends, direct I/O)."""
    return os.open(path, flags, mode)


def truncate_fd(fd: int, size: int) -> None:
    os.ftruncate(fd, size)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write a file in place, without flushing: for files whose loss costs nothing (a heartbeat's temp file)."""
    with open(path, "wb") as f:
        f.write(data)


def atomic_write_bytes(
    path: str | os.PathLike, data: bytes, *, durable: bool = True, mode: int | None = None
) -> None:
    """Write ``data`` to ``path`` so that readers see either the old file or the complete new one, also after a
    power cut: temp file, flush, rename, flush of the folder. ``durable=False`` skips both flushes (the rename is
    still atomic for readers of a running system; a power cut may lose the file). ``mode`` (e.g. ``0o755`` for a
    script) is set before the rename, so the file never appears without it."""
    path = Path(path)
    tmp = path.with_name(f"{TMP_PREFIX}{os.getpid()}-{path.name}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        if durable:
            fsync_fd(f.fileno())
    if mode is not None:
        os.chmod(tmp, mode)
    replace(tmp, path)
    if durable:
        fsync_dir(path.parent)


def atomic_write_json(path: str | os.PathLike, obj: Any, *, durable: bool = True) -> None:
    atomic_write_bytes(
        path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8"), durable=durable
    )


# ---- names ------------------------------------------------------------------------------------------------------
def replace(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """``os.replace``: atomic for readers; durable only once the folder(s) involved are flushed."""
    os.replace(src, dst)


def publish_dir(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Put a fully written folder in place under ``dst`` in one step, durably: its files and folders flushed,
    the rename, then the folders on both sides of it. ``dst`` must not exist (move it aside first)."""
    src, dst = Path(src), Path(dst)
    fsync_tree(src)
    replace(src, dst)
    fsync_dir(dst.parent)
    if src.parent != dst.parent:
        fsync_dir(src.parent)


def unlink(path: str | os.PathLike, *, missing_ok: bool = False) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        if not missing_ok:
            raise


def rmtree(path: str | os.PathLike, *, ignore_errors: bool = False) -> None:
    """Delete a folder and everything in it (not durable by itself: flush the parent where it matters)."""
    shutil.rmtree(path, ignore_errors=ignore_errors)


def mkdir(path: str | os.PathLike, *, parents: bool = False, exist_ok: bool = False) -> None:
    Path(path).mkdir(parents=parents, exist_ok=exist_ok)


def makedirs_durable(path: str | os.PathLike) -> None:
    """Create ``path`` and any missing parents, and flush each parent that got a new entry, so that a file
    flushed inside it later is reachable after a power cut."""
    path = Path(path)
    missing: list[Path] = []
    p = path
    while not p.exists():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    if not missing:
        return
    path.mkdir(parents=True, exist_ok=True)
    for created in reversed(missing):
        fsync_dir(created.parent)
