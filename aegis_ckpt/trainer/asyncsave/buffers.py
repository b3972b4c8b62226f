"""CPU buffers for snapshots, kept from one save to the next so the steady state allocates nothing.

``SnapshotBuffers`` holds one CPU tensor per state tensor (pinned when the source is on a GPU; files in shared
memory when a writer process maps them). ``PageArena`` gives large tensors page-aligned storage, which the direct
writer (``storage.directwrite``) hands to the disk without a copy. Copies from a GPU go through ``devicecopy``
(a side stream, one wait per snapshot); CPU tensors are copied here directly.
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...storage import fsio
from .devicecopy import CudaCopier, DeviceCopier, DeviceCopies

PAGE_ALIGNED_MIN_BYTES = 64 * 1024


class PageArena:
    """Page-aligned CPU tensors carved out of a few large anonymous maps.

    Why: the direct writer hands a tensor to the disk without copying it only when its storage starts on a page
    (``directwrite.DirectFile``); torch's allocator aligns large blocks to 64 bytes. One map per tensor would do,
    but a large mixture-of-experts model has tens of thousands of tensors with its optimizer state, and a process
    may hold only ~65k maps (``vm.max_map_count``), which every other allocation shares. Each tensor's storage is
    exactly its bytes (``torch.save`` writes whole storages); a map is freed with the last tensor that uses it,
    and the unused end of the newest map is never touched, so it costs address space, not memory."""

    CHUNK_BYTES = 256 * 1024 * 1024

    def __init__(self) -> None:
        self._map: mmap.mmap | None = None
        self._used = 0

    def empty(self, shape, dtype, nbytes: int):
        import torch

        size = -(-nbytes // mmap.PAGESIZE) * mmap.PAGESIZE
        if self._map is None or self._used + size > len(self._map):
            self._map = mmap.mmap(-1, max(self.CHUNK_BYTES, size))
            self._used = 0
        flat = torch.frombuffer(self._map, dtype=torch.uint8, count=nbytes, offset=self._used)
        self._used += size
        return flat.view(dtype).view(shape)


class SnapshotBuffers:
    """CPU tensors kept from one save to the next, keyed by name: the steady state allocates nothing.

    With ``shm_dir`` the buffers are files in shared memory (``torch.from_file``), so a writer process maps the
    same pages instead of receiving a copy (``shm_ref`` names the file behind a tensor).

    A snapshot calls ``begin`` before its first ``copy`` and ``finish`` after its last: copies from a GPU
    (``copier``, torch.cuda by default) are asynchronous until then."""

    def __init__(self, shm_dir: str | os.PathLike | None = None, copier: DeviceCopier | None = None) -> None:
        self.copier: DeviceCopier = copier if copier is not None else CudaCopier()
        self._device = DeviceCopies(self.copier)
        self._buffers: dict[Any, Any] = {}
        self._arena = PageArena()
        self._files: dict[Any, Path] = {}
        self._by_storage: dict[int, ShmRef] = {}
        self.shm_dir = Path(shm_dir) if shm_dir is not None else None
        self._next_file = 0
        self.copied_bytes = 0

    def _allocate(self, key, tensor):
        import torch

        if self.shm_dir is None:
            if self.copier.is_device_tensor(tensor):
                return self.copier.empty_host(tensor.shape, tensor.dtype, pin=True)
            nbytes = tensor.numel() * tensor.element_size()
            if nbytes < PAGE_ALIGNED_MIN_BYTES:
                return torch.empty(tensor.shape, dtype=tensor.dtype, device="cpu")
            return self._arena.empty(tensor.shape, tensor.dtype, nbytes)
        old = self._files.pop(key, None)
        if old is not None:
            self._forget_storage(self._buffers[key])
            fsio.unlink(old, missing_ok=True)
        fsio.mkdir(self.shm_dir, parents=True, exist_ok=True)
        path = self.shm_dir / f"b{self._next_file}"
        self._next_file += 1
        numel = max(tensor.numel(), 1)
        flat = torch.from_file(str(path), shared=True, size=numel, dtype=tensor.dtype)
        buf = flat[: tensor.numel()].view(tensor.shape)
        self._files[key] = path
        self._by_storage[buf.untyped_storage().data_ptr()] = ShmRef(str(path), str(tensor.dtype), numel)
        return buf

    def _forget_storage(self, buf) -> None:
        self._by_storage.pop(buf.untyped_storage().data_ptr(), None)

    def copy(self, key, tensor):
        buf = self._buffers.get(key)
        if buf is None or buf.shape != tensor.shape or buf.dtype != tensor.dtype:
            buf = self._allocate(key, tensor)
            self._buffers[key] = buf
        if self.copier.is_device_tensor(tensor):
            self._device.copy(buf, tensor.detach())  # lands by ``finish``
        else:
            buf.copy_(tensor.detach())
        self.copied_bytes += buf.numel() * buf.element_size()
        return buf

    def begin(self) -> None:
        """A snapshot starts: count its bytes from zero; its first copy from a GPU waits for the compute stream."""
        self.copied_bytes = 0
        self._device.begin()

    def finish(self) -> None:
        """Wait (once) until the snapshot's copies from a GPU are in their buffers; before anyone reads them."""
        self._device.finish()

    def shm_ref(self, tensor) -> ShmRef | None:
        """The shared-memory file holding ``tensor``'s storage, if it is one of these buffers."""
        return self._by_storage.get(tensor.untyped_storage().data_ptr())

    @property
    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self._buffers.values())

    def clear(self) -> None:
        """Drop the buffers (and their shared-memory files)."""
        self._buffers.clear()
        self._arena = PageArena()  # its maps go with the last tensor that uses them
        self._by_storage.clear()
        for path in self._files.values():
            fsio.unlink(path, missing_ok=True)
        self._files.clear()
        if self.shm_dir is not None:
            fsio.rmtree(self.shm_dir, ignore_errors=True)


@dataclass(frozen=True)
class ShmRef:
    """A shared-memory file that holds one buffer's whole storage: ``numel`` elements of ``dtype``."""

    path: str
    dtype: str
    numel: int
