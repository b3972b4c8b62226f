"""Reading a committed checkpoint back from disk before it may count toward retention.

An asynchronous save hashes its large files from memory while writing them (``directwrite``) and the commit
only compares their sizes on disk with those digests: a write the disk mangled would still commit. Retention then
keeps the newest ``max_keep`` and deletes older, good checkpoints. So the background writer reads every file of
the committed staging folder back and compares it with the manifest before the folder is published (and so
before anything is pruned). Clean pages of those files are first dropped from the page cache where the platform
allows (``posix_fadvise(DONTNEED)``; the files are already fsynced), so the bytes hashed are the ones on disk, not
the ones still in memory.

This costs one sequential read of the checkpoint on the writer thread or process, off the training thread: it
delays when the checkpoint is published (and when retention runs), not a training step (``benchmarks/``).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from ..errors import CommitError
from .commit import read_manifest, verify_checkpoint

logger = logging.getLogger(__name__)


def drop_cached_pages(path: Path) -> None:
    """Ask the kernel to forget the clean cached pages of ``path`` (best effort; a no-op where unsupported)."""
    advise = getattr(os, "posix_fadvise", None)
    if advise is None:
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        advise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_back(folder: str | os.PathLike) -> float:
    """Verify the committed ``folder`` against its manifest from the disk; returns the seconds it took.

    Raises:
        CommitError: a file differs from its manifest entry (or cannot be read): the checkpoint must not count.
    """
    folder = Path(folder)
    started = time.perf_counter()
    try:
        names = list(read_manifest(folder).files)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CommitError(f"read-back of {folder} failed: unreadable manifest ({e})") from e
    for name in names:
        drop_cached_pages(folder / name)
    result = verify_checkpoint(folder, full=True)
    if not result.ok:
        raise CommitError(f"read-back of {folder} does not match its manifest: {result.summary()}")
    seconds = time.perf_counter() - started
    logger.debug("read back %s in %.3f s", folder, seconds)
    return seconds
