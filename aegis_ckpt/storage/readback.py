"""Reading a committed checkpoint back from disk before it may count toward retention.

An asynchronous save hashes its large files from memory while writing them (``directfile``) and the commit
only compares their sizes on disk with those digests: a write the disk mangled would still commit. Retention then
keeps the newest ``max_keep`` and deletes older, good checkpoints. So the background writer reads every file of
the committed staging folder back and compares it with the manifest before the folder is published (and so
before anything is pruned).

How it stays cheap and off the training's critical path: it runs on the writer's thread (at the writer's lowered
CPU and I/O priority, ``system.priority``), or in the writer process's parent thread, never on the training
thread. Files are read with ``O_DIRECT`` into the writer's two aligned slots (``aligned.AlignedBuffer``): the
bytes come from the disk, not from pages still cached, the device copies them into memory (no page-cache pages to
allocate, fill and evict), and the next slot is read on an ``IOWorker`` thread while this one hashes the last
(xxh3 only, GIL released). What remains is one xxh3 pass over the checkpoint. Where ``O_DIRECT`` is missing or
refused, clean cached pages are dropped first (``posix_fadvise(DONTNEED)``; the files are already fsynced) and
the same reads go through the page cache. The cost delays when the checkpoint is published (and when retention
runs), not a training step (``benchmarks/``).
"""

from __future__ import annotations

import errno
import logging
import os
import time
from pathlib import Path

import xxhash

from ..errors import CommitError
from .aligned import AlignedBuffer, IOWorker
from .commit import FileDigest, verify_checkpoint

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


def _open_for_read_back(path: Path) -> tuple[int, bool]:
    """A descriptor that reads from the disk: ``O_DIRECT`` where taken, else after dropping cached pages."""
    flags = os.O_RDONLY | getattr(os, "O_BINARY", 0)
    if hasattr(os, "O_DIRECT"):
        try:
            return os.open(path, flags | os.O_DIRECT), True
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
    drop_cached_pages(path)
    return os.open(path, flags), False


def hash_from_disk(path: str | os.PathLike, buffer: AlignedBuffer, io: IOWorker) -> FileDigest:
    """Size and xxh3-128 of ``path`` as the disk holds it: slot-sized reads, the next one in flight on ``io``
    while this thread hashes the current one."""
    fd, direct = _open_for_read_back(Path(path))
    got = [0, 0]

    def read(slot: int, offset: int) -> None:
        view = buffer.views[slot]
        try:
            got[slot] = (
                os.preadv(fd, [view], offset) if hasattr(os, "preadv") else _pread_into(fd, view, offset)
            )
        except OSError as e:
            if not (direct and e.errno == errno.EINVAL):
                raise
            _leave_direct(fd)  # the file system took O_DIRECT at open but refuses the read
            got[slot] = _pread_into(fd, view, offset)

    xxh = xxhash.xxh3_128()
    size = 0
    slot = 0
    try:
        ticket = io.submit(lambda: read(0, 0))
        while True:
            io.wait(ticket)
            n = got[slot]
            if n == buffer.size:  # a full slot: the file may go on; read ahead into the other slot
                ticket = io.submit(lambda s=slot ^ 1, at=size + n: read(s, at))
            xxh.update(buffer.views[slot][:n])
            size += n
            if n < buffer.size:  # a short read is the end of the file
                break
            slot ^= 1
    finally:
        io.drain_quietly()
        os.close(fd)
    return FileDigest(size=size, xxh3_128=xxh.hexdigest())


def _pread_into(fd: int, view: memoryview, offset: int) -> int:
    """A positioned read into ``view`` where ``preadv`` is missing (``pread`` on macOS; a seek and a read on
    Windows, safe because one I/O thread does every read of a file in order)."""
    if hasattr(os, "pread"):
        data = os.pread(fd, len(view), offset)
    else:
        os.lseek(fd, offset, os.SEEK_SET)
        data = os.read(fd, len(view))
    view[: len(data)] = data
    return len(data)


def _leave_direct(fd: int) -> None:
    import fcntl

    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_DIRECT)


def read_back(folder: str | os.PathLike, buffer: AlignedBuffer | None = None) -> float:
    """Verify the committed ``folder`` against its manifest from the disk; returns the seconds it took.
    ``buffer``: the writer's ``AlignedBuffer`` (reused; a temporary one when None).

    Raises:
        CommitError: a file differs from its manifest entry (or cannot be read): the checkpoint must not count.
    """
    folder = Path(folder)
    started = time.perf_counter()
    # Confinement, the manifest and every size first (no file contents read), then the contents from the disk.
    quick = verify_checkpoint(folder, full=False)
    if not quick.ok or quick.manifest is None:
        raise CommitError(f"read-back of {folder} does not match its manifest: {quick.summary()}")
    own = buffer is None
    slots = AlignedBuffer() if own else buffer
    io = IOWorker("aegis-readback")
    problems = []
    try:
        for name, expected in sorted(quick.manifest.files.items()):
            try:
                got = hash_from_disk(folder / name, slots, io)
            except OSError as e:
                problems.append(f"cannot read {name}: {e}")
                continue
            if got.size != expected.size or got.xxh3_128 != expected.xxh3_128:
                problems.append(f"{name} differs from its manifest entry (checksum mismatch)")
    finally:
        io.close()
        if own:
            slots.close()
    if problems:
        raise CommitError(f"read-back of {folder} does not match its manifest: {'; '.join(problems)}")
    seconds = time.perf_counter() - started
    logger.debug("read back %s in %.3f s", folder, seconds)
    return seconds
