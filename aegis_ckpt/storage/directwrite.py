"""Write the large files of a save (weight shards, ``optimizer.pt``) in their standard formats through
``directfile.DirectFile``: one pass over each byte that hashes it and hands it to the disk (``O_DIRECT`` where the
file system takes it), so the commit does not read the files back.

Why: writing through ``safetensors.save_file`` and ``torch.save`` and then reading every file back to hash it
costs, per byte: a copy into a ``bytes`` object (safetensors), a CRC32 (``torch.save``'s zip records), a copy
into freshly allocated page-cache pages, and a second read for the checksum. Through ``DirectFile`` each byte is
read once (on the 2-vCPU VM of docs/benchmarks.md a 600 MB buffered write took 1.45 s of system time when the
pages had to come fresh from the host, 0.12 s right after the same process had freed as many; 600 MB with
``O_DIRECT`` took about 0.1 s of CPU).

The files are the standard ones, byte for byte what a loader expects:

* ``*.safetensors``: the documented format (8-byte little-endian header length, a JSON header, the tensor
  data), tensors sorted by element size and then name like the safetensors writer does, so offsets stay
  aligned. ``safetensors``/``transformers`` load them as usual; dtypes this module does not know go through
  ``safetensors.save_file`` instead.
* ``optimizer.pt`` and other ``torch.save`` files: written by ``torch.save``'s own serializer into a file-like
  object; where this torch version allows it, without the zip CRC32 (``torch.load`` does not check it, and the
  manifest's xxh3 covers the file). Otherwise with it.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import pickle
import struct
import sys
from pathlib import Path
from typing import Any

from .aligned import ALIGNMENT, CHUNK_BYTES, AlignedBuffer  # noqa: F401 - re-exported
from .commit import FileDigest
from .directfile import IN_PLACE_MIN_BYTES, IN_PLACE_WRITE_BYTES, DirectFile  # noqa: F401 - re-exported

logger = logging.getLogger(__name__)


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


def torch_save_file(obj, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)`` for the small files of a background save: serialised in memory, then written
    with a plain ``write``, so a full disk raises ``OSError`` here instead of failing inside torch's zip writer
    (which can abort the process when it is destroyed after a failed write)."""
    import io

    import torch

    data = io.BytesIO()
    torch.save(obj, data)
    try:
        with open(path, "wb") as f:
            f.write(data.getbuffer())
    except OSError:
        Path(path).unlink(missing_ok=True)
        raise


# ---- large files, one at a time or in a batch ------------------------------------------------------------------
class LargeFileWriter:
    """Writes ``trainer.asyncsave.hflayout.LargeFile`` entries (paths inside ``folder``) one call at a time and
    keeps their digests by name relative to ``folder``, as ``commit_checkpoint(known=...)`` takes them.

    Why one at a time: ``save_pretrained`` hands over a weight shard, drops it and only then builds the next; a
    writer that writes each shard when it is handed over keeps a save's extra memory to one shard (the copies
    it made while building the shard, the CPU copy of a shard on an accelerator) instead of the whole model. A file handed to
    ``safetensors.save_file`` (a dtype this module does not write) is not in ``digests``: the commit hashes it."""

    def __init__(
        self, buffer: AlignedBuffer, *, folder: str | os.PathLike, sha256: bool = False, direct: bool = True
    ) -> None:
        self._buffer = buffer
        self._root = os.path.abspath(folder)
        self._sha256 = sha256
        self._direct = direct
        self.digests: dict[str, FileDigest] = {}

    def __call__(self, item) -> None:
        options = dict(sha256=self._sha256, direct=self._direct)
        if item.kind == "safetensors":
            tensors = _on_cpu(item.obj)
            digest = write_safetensors(item.path, tensors, item.metadata, self._buffer, **options)
            if digest is None:
                from safetensors.torch import save_file

                save_file(tensors, item.path, metadata=item.metadata)
                return
        elif item.kind == "torch":
            digest = write_torch(item.path, item.obj, self._buffer, **options)
        else:
            raise ValueError(f"unknown file kind {item.kind!r}")
        self.digests[Path(os.path.relpath(os.path.abspath(item.path), self._root)).as_posix()] = digest


def _on_cpu(tensors: dict) -> dict:
    """The shard itself, or, when some of its tensors are on an accelerator (a synchronous save writes the live
    model), a CPU copy of this one shard, so it streams through ``DirectFile`` like any other."""
    import torch

    if all(not isinstance(t, torch.Tensor) or t.device.type == "cpu" for t in tensors.values()):
        return tensors
    return {k: v.detach().to("cpu") if isinstance(v, torch.Tensor) else v for k, v in tensors.items()}


def write_large_files(
    files: list,
    buffer: AlignedBuffer,
    *,
    folder: str | os.PathLike,
    sha256: bool = False,
    direct: bool = True,
) -> dict[str, FileDigest]:
    """Write a list of ``LargeFile`` entries (a writer process's job) with one ``LargeFileWriter``; returns
    its digests."""
    writer = LargeFileWriter(buffer, folder=folder, sha256=sha256, direct=direct)
    for item in files:
        writer(item)
    return writer.digests
