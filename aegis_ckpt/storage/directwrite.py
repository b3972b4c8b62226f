"""Write the large files of an asynchronous save (weight shards, ``optimizer.pt``) with as little CPU as possible.

Why: a background writer only helps if training does not pay for its CPU time, and on a machine whose cores
training keeps busy it does pay, step by step. Writing through ``safetensors.save_file`` and ``torch.save`` and
then reading every file back to hash it costs, per byte: a copy into a ``bytes`` object (safetensors), a CRC32
(``torch.save``'s zip records), a copy into freshly allocated page-cache pages, and a second read for the
checksum. Here each byte is copied at most once, into a reused, page-aligned buffer (the large tensors of
``optimizer.pt`` are not copied at all: their records start on a page like the snapshot's buffers, see
``DirectFile._write_in_place``), and handed to the disk with ``O_DIRECT`` (no page-cache pages to allocate, fill
and later evict: on the 2-vCPU VM of docs/benchmarks.md a 600 MB buffered write took 1.45 s of system time when
the pages had to come fresh from the host, 0.12 s right after the same process had freed as many; 600 MB with
``O_DIRECT`` took about 0.1 s of CPU), and it is hashed from memory on the way out, so the commit does not read
it back.

The files are the standard ones, byte for byte what a loader expects:

* ``*.safetensors``: the documented format (8-byte little-endian header length, a JSON header, the tensor
  data), tensors sorted by element size and then name like the safetensors writer does, so offsets stay
  aligned. ``safetensors``/``transformers`` load them as usual; dtypes this module does not know go through
  ``safetensors.save_file`` instead.
* ``optimizer.pt`` and other ``torch.save`` files: written by ``torch.save``'s own serializer into a file-like
  object; where this torch version allows it, without the zip CRC32 (``torch.load`` does not check it, and the
  manifest's xxh3 covers the file). Otherwise with it.

Where ``O_DIRECT`` does not exist (Windows, macOS) or the file system refuses it (tmpfs on older kernels, some
network file systems), the same code writes through the page cache. Nothing here fsyncs: the commit protocol
flushes every file before it writes the manifest.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import json
import logging
import mmap
import os
import pickle
import struct
import sys
from pathlib import Path
from typing import Any

import numpy as np
import xxhash

from .commit import FileDigest

logger = logging.getLogger(__name__)

ALIGNMENT = 4096  # covers 512-byte and 4 KiB logical blocks
CHUNK_BYTES = 4 * 1024 * 1024  # the reused buffer; big sequential writes, a small fixed memory cost
IN_PLACE_MIN_BYTES = 64 * 1024  # smaller writes are not worth a system call of their own
IN_PLACE_WRITE_BYTES = 16 * 1024 * 1024  # one write() call at most: steady disk queue, bounded pinned pages
_HAS_O_DIRECT = hasattr(os, "O_DIRECT")


class AlignedBuffer:
    """A page-aligned buffer reused by every file a writer writes (touched once, never reallocated)."""

    def __init__(self, size: int = CHUNK_BYTES) -> None:
        if size <= 0 or size % ALIGNMENT:
            raise ValueError(f"buffer size must be a positive multiple of {ALIGNMENT}, got {size}")
        self.size = size
        self._map = mmap.mmap(-1, size)  # anonymous maps are page-aligned
        self.view = memoryview(self._map)
        # Copies go through numpy because it lets go of the GIL while it copies; a memoryview slice assignment
        # holds it, and the training thread then waits for every 4 MiB the writer copies.
        self.array = np.frombuffer(self._map, dtype=np.uint8)

    def close(self) -> None:
        del self.array  # the mmap cannot close while an array still exports it
        self.view.release()
        self._map.close()


class DirectFile:
    """A write-only file object that streams through an ``AlignedBuffer`` to ``O_DIRECT`` writes and hashes the
    bytes as they pass. ``close()`` returns the ``FileDigest`` (size, xxh3-128, optionally sha256) of exactly the
    bytes written, the same digest ``commit.hash_file`` would compute by reading the file back."""

    def __init__(
        self, path: str | os.PathLike, buffer: AlignedBuffer, *, sha256: bool = False, direct: bool = True
    ):
        self.path = Path(path)
        self._buf = buffer
        self._fill = 0
        self._size = 0
        self.in_place_bytes = 0  # written straight from the caller's memory (see ``_write_in_place``)
        self._xxh = xxhash.xxh3_128()
        self._sha = hashlib.sha256() if sha256 else None
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_BINARY", 0)
        self.direct = False
        if direct and _HAS_O_DIRECT:
            try:
                self._fd = os.open(self.path, flags | os.O_DIRECT, 0o644)
                self.direct = True
            except OSError as e:
                if e.errno != errno.EINVAL:
                    raise
        if not self.direct:
            self._fd = os.open(self.path, flags, 0o644)
        self.closed = False

    # -- file-object protocol used by torch.save -------------------------------------------------------------
    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        src = memoryview(data).cast("B")
        n = len(src)
        self._xxh.update(src)  # both hashes release the GIL on large inputs
        if self._sha is not None:
            self._sha.update(src)
        source = np.frombuffer(src, dtype=np.uint8)
        pos = self._write_in_place(src, source) if self.direct and n >= IN_PLACE_MIN_BYTES else 0
        target = self._buf.array
        while pos < n:
            take = min(n - pos, self._buf.size - self._fill)
            np.copyto(target[self._fill : self._fill + take], source[pos : pos + take])
            self._fill += take
            pos += take
            if self._fill == self._buf.size:
                self._write_out(self._buf.size)
                self._fill = 0
        self._size += n
        return n

    def _write_in_place(self, src: memoryview, source) -> int:
        """Hand the aligned middle of ``src`` to the disk straight from the caller's memory, without the copy.

        ``O_DIRECT`` needs the memory address, the file position and the length all on block boundaries. The
        file position after the buffered bytes is known; when ``src`` has the same offset within a page (its
        memory and its place in the file are "in phase"), the bytes up to the next boundary go into the
        buffer, the buffer is written, and the whole pages that follow are written from ``src`` itself. The
        snapshot allocates large buffers page-aligned and torch's zip writer is asked to start every record on
        a page, so the bulk of ``optimizer.pt`` takes this path. Returns how many bytes of ``src`` are done
        (0 when not in phase); the rest goes through the buffer as usual."""
        head = -self._size % ALIGNMENT  # bytes from the file position after the buffer to the next boundary
        if (source.ctypes.data + head) % ALIGNMENT or len(src) - head < ALIGNMENT:
            return 0
        if head:
            np.copyto(self._buf.array[self._fill : self._fill + head], source[:head])
            self._fill += head
        if self._fill:  # the buffer now ends on an aligned file position
            self._write_out(self._fill)
            self._fill = 0
        body = (len(src) - head) // ALIGNMENT * ALIGNMENT
        self._write_view(src[head : head + body])
        self.in_place_bytes += body
        return head + body

    def flush(self) -> None:
        """Whole buffers are written as they fill; the tail is written (padded and truncated) by ``close``."""

    def tell(self) -> int:
        return self._size

    # -- internals -----------------------------------------------------------------------------------------------
    def _write_out(self, length: int) -> None:
        self._write_view(self._buf.view[:length])

    def _write_view(self, view: memoryview) -> None:
        length = len(view)
        done = 0
        while done < length:
            try:
                done += os.write(self._fd, view[done : done + IN_PLACE_WRITE_BYTES])
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

    def close(self) -> FileDigest:
        if self.closed:
            raise ValueError(f"{self.path} is already closed")
        try:
            if self._fill:
                if self.direct:
                    # O_DIRECT writes whole aligned blocks: pad the tail, then cut the file to its real length.
                    padded = -(-self._fill // ALIGNMENT) * ALIGNMENT
                    self._buf.view[self._fill : padded] = bytes(padded - self._fill)
                    self._write_out(padded)
                    os.ftruncate(self._fd, self._size)
                else:
                    self._write_out(self._fill)
                self._fill = 0
        finally:
            os.close(self._fd)
            self.closed = True
        return FileDigest(
            size=self._size,
            xxh3_128=self._xxh.hexdigest(),
            sha256=self._sha.hexdigest() if self._sha is not None else None,
        )

    def abort(self) -> None:
        if not self.closed:
            os.close(self._fd)
            self.closed = True


# ---- safetensors -----------------------------------------------------------------------------------------------
@functools.cache
def _safetensors_dtype_names() -> dict:
    import torch

    names = {
        "bool": "BOOL",
        "uint8": "U8",
        "int8": "I8",
        "int16": "I16",
        "uint16": "U16",
        "int32": "I32",
        "uint32": "U32",
        "int64": "I64",
        "uint64": "U64",
        "float16": "F16",
        "bfloat16": "BF16",
        "float32": "F32",
        "float64": "F64",
        "float8_e4m3fn": "F8_E4M3",
        "float8_e5m2": "F8_E5M2",
    }
    return {getattr(torch, k): v for k, v in names.items() if hasattr(torch, k)}


def _byte_view(tensor) -> memoryview:
    """The tensor's bytes in row-major order (``reshape`` copies a non-contiguous tensor, views the others)."""
    import torch

    flat = tensor.detach().reshape(-1)
    if flat.numel() == 0:
        return memoryview(b"")
    return memoryview(flat.view(torch.uint8).numpy()).cast("B")


def can_stream_safetensors(tensors: dict) -> bool:
    """True when every tensor is a dense CPU tensor of a dtype this module writes (little-endian machines)."""
    import torch

    if sys.byteorder != "little":
        return False
    known = _safetensors_dtype_names()
    return all(
        isinstance(t, torch.Tensor)
        and t.device.type == "cpu"
        and t.layout == torch.strided
        and t.dtype in known
        for t in tensors.values()
    )


def safetensors_header(tensors: dict, metadata: dict | None) -> tuple[bytes, list[str]]:
    """The header bytes (length prefix included) and the order in which the tensors' data follows it."""
    dtype_names = _safetensors_dtype_names()
    order = sorted(tensors, key=lambda name: (-tensors[name].element_size(), name))
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    for name in order:
        t = tensors[name]
        n = t.numel() * t.element_size()
        header[name] = {
            "dtype": dtype_names[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + n],
        }
        offset += n
    body = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    body += b" " * (-len(body) % 8)  # the safetensors writer pads the header to 8 bytes with spaces
    return struct.pack("<Q", len(body)) + body, order


def write_safetensors(
    path: str | os.PathLike,
    tensors: dict,
    metadata: dict | None,
    buffer: AlignedBuffer,
    *,
    sha256: bool = False,
    direct: bool = True,
) -> FileDigest | None:
    """Write ``tensors`` as a safetensors file. Returns None (and writes nothing) when the tensors are not all
    streamable (see ``can_stream_safetensors``); the caller then uses ``safetensors.save_file``."""
    if not can_stream_safetensors(tensors):
        return None
    header, order = safetensors_header(tensors, metadata)
    out = DirectFile(path, buffer, sha256=sha256, direct=direct)
    try:
        out.write(header)
        for name in order:
            out.write(_byte_view(tensors[name]))
    except BaseException:
        out.abort()
        raise
    return out.close()


# ---- torch.save ------------------------------------------------------------------------------------------------
_crc_free_save_works: bool | None = None


def _torch_save_without_crc(obj, f) -> None:
    """``torch.save(obj, f)`` with the zip CRC32 switched off for this call only (the global switch,
    ``torch.serialization.set_crc32_options``, would also change saves on other threads). Uses torch's own
    serializer through two private names; ``_crc_free_save_available`` checks them once."""
    import torch
    from torch import serialization

    # Records start on a page (torch's default is 64 bytes) so that ``DirectFile`` can write them in place.
    writer = torch._C.PyTorchFileWriter(f, False, max(ALIGNMENT, serialization._get_storage_alignment()))
    serialization._save(obj, writer, pickle, serialization.DEFAULT_PROTOCOL, False)
    writer.write_end_of_file()


def _crc_free_save_available() -> bool:
    """Whether this torch version's private serializer API matches what ``_torch_save_without_crc`` calls: a
    tiny round trip through memory, once per process."""
    global _crc_free_save_works
    if _crc_free_save_works is None:
        import io

        import torch

        probe = {"t": torch.arange(6, dtype=torch.float32).reshape(2, 3), "n": 3}
        try:
            f = io.BytesIO()
            _torch_save_without_crc(probe, f)
            f.seek(0)
            back = torch.load(f, weights_only=True)
            _crc_free_save_works = bool(torch.equal(back["t"], probe["t"]) and back["n"] == 3)
        except Exception as e:  # noqa: BLE001 - any mismatch of private API: use the public torch.save
            logger.debug("CRC-free torch.save not available with this torch (%s); using torch.save", e)
            _crc_free_save_works = False
    return _crc_free_save_works


def write_torch(
    path: str | os.PathLike, obj, buffer: AlignedBuffer, *, sha256: bool = False, direct: bool = True
) -> FileDigest:
    """``torch.save`` of ``obj`` into ``path`` through a ``DirectFile``."""
    import torch

    out = DirectFile(path, buffer, sha256=sha256, direct=direct)
    try:
        if _crc_free_save_available():
            _torch_save_without_crc(obj, out)
        else:
            torch.save(obj, out)
    except BaseException:
        out.abort()
        raise
    return out.close()


# ---- a batch of large files ------------------------------------------------------------------------------------
def write_large_files(
    files: list,
    buffer: AlignedBuffer,
    *,
    folder: str | os.PathLike,
    sha256: bool = False,
    direct: bool = True,
) -> dict[str, FileDigest]:
    """Write ``trainer.asyncsave.hflayout.LargeFile`` entries (paths inside ``folder``). Returns the digests of the files written
    here by name relative to ``folder``, as ``commit_checkpoint(known=...)`` takes them; a file handed to
    ``safetensors.save_file`` (unknown dtype) is not in it and gets hashed by the commit."""
    root = os.path.abspath(folder)
    digests: dict[str, FileDigest] = {}
    for item in files:
        if item.kind == "safetensors":
            digest = write_safetensors(
                item.path, item.obj, item.metadata, buffer, sha256=sha256, direct=direct
            )
            if digest is None:
                from safetensors.torch import save_file

                save_file(item.obj, item.path, metadata=item.metadata)
                continue
        elif item.kind == "torch":
            digest = write_torch(item.path, item.obj, buffer, sha256=sha256, direct=direct)
        else:
            raise ValueError(f"unknown file kind {item.kind!r}")
        digests[Path(os.path.relpath(os.path.abspath(item.path), root)).as_posix()] = digest
    return digests
