"""A write-only file that makes one pass over the caller's bytes: hashing and writing come from the same read.

Why: a background writer only helps if training does not pay for its CPU time, and on a machine whose cores
training keeps busy it does pay, step by step. Each byte of a tensor is read from memory once: a piece of
``HASH_PIECE_BYTES`` is hashed (xxh3-128 for the manifest and, if asked, sha256) and then either copied into an
aligned slot while it is still in the CPU cache, or, when it is in phase with the file (see
``DirectFile._write_in_place``), handed to the disk from the caller's memory (``O_DIRECT``: the device reads it,
not the CPU). The writes run on an ``IOWorker`` thread while the next piece is hashed. Nothing here holds the
GIL for long: ``xxhash`` releases it on every update, ``hashlib`` on inputs over 2 KiB, ``numpy.copyto`` and
``os.write`` while they run.

Where ``O_DIRECT`` does not exist (Windows, macOS) or the file system refuses it (tmpfs on older kernels, some
network file systems), the same code writes through the page cache. Nothing here fsyncs: the commit protocol
flushes every file before it writes the manifest. Every write goes through ``fsio``.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
from pathlib import Path

import numpy as np
import xxhash

from . import fsio
from .aligned import ALIGNMENT, HASH_PIECE_BYTES, AlignedBuffer, IOWorker
from .commit import FileDigest

logger = logging.getLogger(__name__)

IN_PLACE_MIN_BYTES = 64 * 1024  # smaller writes are not worth a system call of their own
IN_PLACE_WRITE_BYTES = 16 * 1024 * 1024  # one write() call at most: steady disk queue, bounded pinned pages
_HAS_O_DIRECT = hasattr(os, "O_DIRECT")


class FileHasher:
    """The digests of one file, fed in file order: xxh3-128 always, sha256 when asked."""

    def __init__(self, sha256: bool) -> None:
        self._xxh = xxhash.xxh3_128()
        self._sha = hashlib.sha256() if sha256 else None

    def update(self, piece: memoryview) -> None:
        self._xxh.update(piece)
        if self._sha is not None:
            self._sha.update(piece)  # the piece is still in the cache from the line above

    def digest(self, size: int) -> FileDigest:
        sha = self._sha.hexdigest() if self._sha is not None else None
        return FileDigest(size=size, xxh3_128=self._xxh.hexdigest(), sha256=sha)


class DirectFile:
    """A write-only file object that streams through an ``AlignedBuffer`` to ``O_DIRECT`` writes and hashes the
    bytes as they pass. ``close()`` returns the ``FileDigest`` (size, xxh3-128, optionally sha256) of exactly the
    bytes written, the same digest ``commit.hash_file`` would compute by reading the file back."""

    def __init__(
        self, path: str | os.PathLike, buffer: AlignedBuffer, *, sha256: bool = False, direct: bool = True
    ):
        self.path = Path(path)
        self._buf = buffer
        self._slot = 0  # the slot being filled
        self._slot_ticket = [0, 0]  # the I/O ticket that last wrote each slot
        self._fill = 0
        self._size = 0
        self.in_place_bytes = 0  # written straight from the caller's memory (see ``_write_in_place``)
        self._hasher = FileHasher(sha256)
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_BINARY", 0)
        self.direct = False
        if direct and _HAS_O_DIRECT:
            try:
                self._fd = fsio.open_fd(self.path, flags | os.O_DIRECT)
                self.direct = True
            except OSError as e:
                if e.errno != errno.EINVAL:
                    raise
        if not self.direct:
            self._fd = fsio.open_fd(self.path, flags)
        self._io = IOWorker(f"aegis-io-{self.path.name}"[:15])
        self.closed = False
        self.error: OSError | None = None
        """The first write error. Later writes are then discarded and ``close`` raises it: torch's zip writer
        must never see a failed write, because after one it can abort the process when it is destroyed."""

    # -- file-object protocol used by torch.save -------------------------------------------------------------
    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        src = memoryview(data).cast("B")
        n = len(src)
        if self.error is not None:
            self._size += n
            return n
        try:
            return self._write(src, n)
        except OSError as e:  # e.g. ENOSPC: remembered, raised by close()
            self.error = e
            self._size += n
            return n

    def flush(self) -> None:
        """Whole slots are written as they fill; the tail is written (padded and truncated) by ``close``."""

    def tell(self) -> int:
        return self._size

    # -- the one pass --------------------------------------------------------------------------------------------
    def _write(self, src: memoryview, n: int) -> int:
        source = np.frombuffer(src, dtype=np.uint8)
        pos = self._write_in_place(src, source) if self.direct and n >= IN_PLACE_MIN_BYTES else 0
        while pos < n:
            pos += self._copy_piece(src, source, pos, n)
        self._size += n
        return n

    def _copy_piece(self, src: memoryview, source, pos: int, n: int) -> int:
        """Hash up to one piece of ``src`` from ``pos`` and copy it into the slot (cache-hot); a full slot is
        queued for writing and the other slot becomes current. Returns the bytes taken."""
        take = min(n - pos, self._buf.size - self._fill, HASH_PIECE_BYTES)
        self._hasher.update(src[pos : pos + take])
        np.copyto(self._buf.arrays[self._slot][self._fill : self._fill + take], source[pos : pos + take])
        self._fill += take
        if self._fill == self._buf.size:
            self._queue_slot(self._buf.size)
        return take

    def _queue_slot(self, length: int) -> None:
        """Queue the current slot's first ``length`` bytes and switch to the other slot once its own previous
        write has finished (the I/O thread never reads a slot that is being refilled)."""
        view = self._buf.views[self._slot][:length]
        self._slot_ticket[self._slot] = self._io.submit(lambda: self._write_view(view))
        self._slot ^= 1
        self._fill = 0
        self._io.wait(self._slot_ticket[self._slot])

    def _write_in_place(self, src: memoryview, source) -> int:
        """Hand the aligned middle of ``src`` to the disk straight from the caller's memory, without the copy.

        ``O_DIRECT`` needs the memory address, the file position and the length all on block boundaries. The
        file position after the buffered bytes is known; when ``src`` has the same offset within a page (its
        memory and its place in the file are "in phase"), the bytes up to the next boundary go into the
        slot, the slot is written, and the whole pages that follow are written from ``src`` itself, each piece
        hashed just before it is queued. The snapshot allocates large buffers page-aligned and torch's zip
        writer is asked to start every record on a page, so the bulk of ``optimizer.pt`` takes this path.
        Returns how many bytes of ``src`` are done (0 when not in phase); the rest goes through the slots.
        Waits for its writes before returning: ``src`` belongs to the caller."""
        head = -self._size % ALIGNMENT  # bytes from the file position after the slot to the next boundary
        if (source.ctypes.data + head) % ALIGNMENT or len(src) - head < ALIGNMENT:
            return 0
        if head:
            self._hasher.update(src[:head])
            np.copyto(self._buf.arrays[self._slot][self._fill : self._fill + head], source[:head])
            self._fill += head
        if self._fill:  # the slot now ends on an aligned file position
            self._queue_slot(self._fill)
        body = (len(src) - head) // ALIGNMENT * ALIGNMENT
        for start in range(head, head + body, IN_PLACE_WRITE_BYTES):
            piece = src[start : min(start + IN_PLACE_WRITE_BYTES, head + body)]
            for sub in range(0, len(piece), HASH_PIECE_BYTES):
                self._hasher.update(piece[sub : sub + HASH_PIECE_BYTES])
            self._io.submit(lambda piece=piece: self._write_view(piece))
        self._io.drain()
        self.in_place_bytes += body
        return head + body

    # -- on the I/O thread ---------------------------------------------------------------------------------------
    def _write_view(self, view: memoryview) -> None:
        length = len(view)
        done = 0
        while done < length:
            try:
                done += fsio.write_fd(self._fd, view[done : done + IN_PLACE_WRITE_BYTES])
            except OSError as e:
                if not (self.direct and e.errno == errno.EINVAL):
                    raise
                self._leave_direct_mode()

    def _leave_direct_mode(self) -> None:
        """The file system accepted O_DIRECT at open but refuses the write: go on through the page cache."""
        import fcntl

        fcntl.fcntl(self._fd, fcntl.F_SETFL, fcntl.fcntl(self._fd, fcntl.F_GETFL) & ~os.O_DIRECT)
        self.direct = False
        logger.debug("%s: O_DIRECT refused by the file system; writing through the page cache", self.path)

    # -- the end ---------------------------------------------------------------------------------------------------
    def close(self) -> FileDigest:
        if self.closed:
            raise ValueError(f"{self.path} is already closed")
        if self.error is not None:
            self.abort()
            raise self.error
        try:
            if self._fill:
                self._io.drain()  # ``direct`` is settled once every queued write has run
                if self.direct:
                    # O_DIRECT writes whole aligned blocks: pad the tail, then cut the file to its real length.
                    padded = -(-self._fill // ALIGNMENT) * ALIGNMENT
                    self._buf.views[self._slot][self._fill : padded] = bytes(padded - self._fill)
                    self._queue_slot(padded)
                    self._io.drain()
                    fsio.truncate_fd(self._fd, self._size)
                else:
                    self._queue_slot(self._fill)
            self._io.drain()
        finally:
            self._io.close()
            os.close(self._fd)
            self.closed = True
        return self._hasher.digest(self._size)

    def abort(self) -> None:
        if not self.closed:
            self._io.close()
            os.close(self._fd)
            self.closed = True
