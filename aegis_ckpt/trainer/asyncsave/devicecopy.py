"""Copies of GPU tensors into host buffers on a side CUDA stream, behind a seam that a machine without a GPU can
fake.

Why a side stream: the snapshot is the only part of an asynchronous save that blocks training. Copies enqueued on
the compute stream would run after every kernel the step has queued there, and ``torch.cuda.synchronize()``
waits for every stream of every device, including work that has nothing to do with the snapshot. Here the side
stream first waits for the compute stream (so it copies the values the step produced, not older ones), every
copy is enqueued ``non_blocking`` into a pinned (page-locked) buffer, which makes it a DMA that returns at once,
and the training thread waits exactly once: on an event recorded after the last copy.

Why no ``Tensor.record_stream``: the sources are the live parameters and optimizer state, referenced by the model,
the optimizer and the state dicts ``take_snapshot`` holds until it has waited for the event, and the training
thread goes on only after that wait, so no later allocation on the compute stream can reuse their memory while a
copy still reads it. The destinations are CPU tensors, which the CUDA caching allocator does not manage.

``DeviceCopier`` is the seam: every CUDA call goes through it. ``CudaCopier`` is the real one; the unit tests use
a recording fake that tags some CPU tensors as device tensors, so the real snapshot code runs without a GPU.
"""

from __future__ import annotations

from typing import Any, Protocol


class DeviceCopier(Protocol):
    """The device operations a snapshot needs, and nothing else."""

    def is_device_tensor(self, tensor) -> bool:
        """True for a tensor whose copy must go through this copier (a CUDA tensor)."""

    def empty_host(self, shape, dtype, *, pin: bool):
        """A CPU tensor; page-locked when ``pin``, so a device-to-host copy into it is an asynchronous DMA."""

    def new_stream(self, device) -> Any:
        """A side stream on ``device``, made once and reused by every later snapshot."""

    def wait_current_stream(self, stream) -> None:
        """Make later work on ``stream`` wait for everything queued so far on the current (compute) stream of the
        same device; returns at once."""

    def copy(self, stream, dst, src, *, non_blocking: bool) -> None:
        """Enqueue ``dst.copy_(src)`` on ``stream``."""

    def record_event(self, stream) -> Any:
        """An event that completes when everything queued on ``stream`` so far has run."""

    def synchronize(self, event) -> None:
        """Block the calling thread until ``event`` completes."""


class CudaCopier:
    """``DeviceCopier`` with torch.cuda."""

    def is_device_tensor(self, tensor) -> bool:
        return bool(tensor.is_cuda)

    def empty_host(self, shape, dtype, *, pin: bool):
        import torch

        return torch.empty(shape, dtype=dtype, device="cpu", pin_memory=pin)

    def new_stream(self, device):
        import torch

        return torch.cuda.Stream(device=device)

    def wait_current_stream(self, stream) -> None:
        import torch

        stream.wait_stream(torch.cuda.current_stream(stream.device))

    def copy(self, stream, dst, src, *, non_blocking: bool) -> None:
        import torch

        # The copy of a CUDA source is enqueued on the current stream of the source's device: this one here.
        with torch.cuda.stream(stream):
            dst.copy_(src, non_blocking=non_blocking)

    def record_event(self, stream):
        return stream.record_event()

    def synchronize(self, event) -> None:
        event.synchronize()


class DeviceCopies:
    """The device copies of one snapshot after another: one side stream per device (kept), which waits for the
    compute stream before the snapshot's first copy on that device; ``finish`` records one event per device after
    the last copy and waits for it (one wait in all on a single GPU)."""

    def __init__(self, copier: DeviceCopier) -> None:
        self.copier = copier
        self._streams: dict[Any, Any] = {}
        self._pending: dict[Any, Any] = {}  # device -> its side stream, for the snapshot being taken

    def begin(self) -> None:
        """A new snapshot: its first copy on each device waits for the compute stream again. Copies a failed
        snapshot left queued stay ahead of the new ones on the same side stream."""
        self._pending.clear()

    def copy(self, dst, src) -> None:
        device = src.device
        stream = self._pending.get(device)
        if stream is None:
            stream = self._streams.get(device)
            if stream is None:
                stream = self._streams[device] = self.copier.new_stream(device)
            self.copier.wait_current_stream(stream)
            self._pending[device] = stream
        self.copier.copy(stream, dst, src, non_blocking=True)

    def finish(self) -> None:
        """Wait until every copy of this snapshot has landed in its host buffer."""
        events = [self.copier.record_event(stream) for stream in self._pending.values()]
        self._pending.clear()
        for event in events:
            self.copier.synchronize(event)
