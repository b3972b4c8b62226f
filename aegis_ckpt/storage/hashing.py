"""Checksums of checkpoint files: one read of a file gives its size, xxh3-128 (and, if asked, sha256).

The commit reads every file back once to hash it (``commit``), verification before a resume reads it again
(``verify_checkpoint``), and the direct writer hashes the bytes as it writes them (``directwrite``): all three
must compute the very same ``FileDigest`` for the same bytes, so the hashing has this one home. Large files are
verified with a reader thread so that reading and hashing overlap.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass

import xxhash

READ_CHUNK_BYTES = 16 * 1024 * 1024
"""The read buffer of ``hash_file`` (and the most a commit allocates for reading files back)."""
READ_AHEAD_MIN_BYTES = 32 * 1024 * 1024
"""Verification reads files of at least this size with a reader thread (``hash_file_read_ahead``)."""


@dataclass(frozen=True)
class FileDigest:
    """A file's size and checksums, as listed in the manifest."""

    size: int
    xxh3_128: str
    sha256: str | None = None


def hash_file(
    path: str | os.PathLike,
    *,
    sha256: bool = False,
    buffer: bytearray | None = None,
    on_read: Callable[[int], object] | None = None,
    opener=None,
) -> FileDigest:
    """Read a file once and return its size and checksums (``on_read(n)`` after each chunk: a progress bar;
    ``opener`` as for ``open()``: verification passes ``confine.open_no_follow``)."""
    buf = buffer if buffer is not None else bytearray(READ_CHUNK_BYTES)
    view = memoryview(buf)
    xh = xxhash.xxh3_128()
    sh = hashlib.sha256() if sha256 else None
    size = 0
    with open(path, "rb", buffering=0, opener=opener) as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            chunk = view[:n]
            xh.update(chunk)
            if sh is not None:
                sh.update(chunk)
            size += n
            if on_read is not None:
                on_read(n)
    return FileDigest(size=size, xxh3_128=xh.hexdigest(), sha256=sh.hexdigest() if sh else None)


def hash_file_read_ahead(
    path: str | os.PathLike,
    *,
    chunk_bytes: int = 8 * 1024 * 1024,
    depth: int = 3,
    on_read: Callable[[int], object] | None = None,
    opener=None,
) -> FileDigest:
    """``hash_file`` for large files when nothing else needs the CPU (verification before a resume): a reader
    thread fills the next chunks while this thread hashes the last one. Both release the GIL, so reading
    (a copy out of the page cache, or the wait for the disk) and hashing overlap instead of adding up. The file
    is still read front to back by one reader, which keeps the access sequential on a spinning disk."""
    free: queue.SimpleQueue = queue.SimpleQueue()
    full: queue.SimpleQueue = queue.SimpleQueue()
    for _ in range(depth):
        free.put(bytearray(chunk_bytes))
    stop = threading.Event()

    def read() -> None:
        try:
            with open(path, "rb", buffering=0, opener=opener) as f:
                while not stop.is_set():
                    buf = free.get()
                    n = f.readinto(buf)
                    full.put((buf, n))
                    if not n:
                        return
        except BaseException as e:  # noqa: BLE001 - handed to the hashing thread, which raises it
            full.put((e, 0))

    reader = threading.Thread(target=read, name="aegis-verify-read", daemon=True)
    reader.start()
    xh = xxhash.xxh3_128()
    size = 0
    try:
        while True:
            buf, n = full.get()
            if isinstance(buf, BaseException):
                raise buf
            if not n:
                break
            with memoryview(buf) as view:
                xh.update(view[:n])
            size += n
            free.put(buf)
            if on_read is not None:
                on_read(n)
    finally:
        stop.set()
        free.put(bytearray(0))  # wakes a reader that waits for a buffer; it then sees ``stop``
        reader.join()
    return FileDigest(size=size, xxh3_128=xh.hexdigest(), sha256=None)
