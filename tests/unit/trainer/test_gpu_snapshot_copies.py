"""The GPU path of asynchronous snapshots, on a machine without a GPU.

A recording fake of the device seam (``devicecopy.DeviceCopier``) tags the model's tensors and AdamW's moments of a
real (CPU) Trainer as "cuda", so the real ``take_snapshot`` runs. The fake behaves like CUDA where it matters:
work the step queued on the compute stream has not run yet when the snapshot starts, and a copy on the side
stream happens only when an event recorded after it is synchronised. So a snapshot that skips the side stream's
wait for the compute stream, or that synchronises before its last copy, holds values other than the live ones.
``CudaCopier`` itself is checked against stand-ins for the torch.cuda calls it makes.
"""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch

from aegis_ckpt.trainer.asyncsave import devicecopy
from aegis_ckpt.trainer.asyncsave.buffers import SnapshotBuffers
from aegis_ckpt.trainer.asyncsave.snapshot import take_snapshot


class FakeStream:
    def __init__(self, device):
        self.device = device
        self.queue: list = []  # callables, run in order when an event recorded after them is synchronised
        self.ran = 0

    def run_until(self, upto: int) -> None:
        while self.ran < upto:
            self.queue[self.ran]()
            self.ran += 1


class FakeCopier:
    """``DeviceCopier`` that records every call in ``log`` and defers work the way CUDA streams do."""

    def __init__(self, device_storages: set[int]):
        self.device_storages = device_storages
        self.compute: list = []  # the compute stream: work the step queued that has not run yet
        self.log: list[tuple] = []
        self.pinned: set[int] = set()  # data_ptr of every host buffer allocated pinned
        self.streams: list[FakeStream] = []

    def is_device_tensor(self, tensor) -> bool:
        return tensor.untyped_storage().data_ptr() in self.device_storages

    def empty_host(self, shape, dtype, *, pin: bool):
        buf = torch.empty(shape, dtype=dtype)
        if pin:
            self.pinned.add(buf.data_ptr())
        self.log.append(("alloc", pin))
        return buf

    def new_stream(self, device):
        self.streams.append(FakeStream(device))
        self.log.append(("new_stream", self.streams[-1]))
        return self.streams[-1]

    def run_compute(self) -> None:
        while self.compute:
            self.compute.pop(0)()

    def wait_current_stream(self, stream) -> None:
        self.log.append(("wait", stream))
        pending = list(self.compute)

        def barrier():  # what the compute stream held at the time of the wait runs first
            for op in pending:
                if op in self.compute:
                    self.compute.remove(op)
                    op()

        stream.queue.append(barrier)

    def copy(self, stream, dst, src, *, non_blocking: bool) -> None:
        self.log.append(("copy", stream, dst, src.untyped_storage().data_ptr(), non_blocking))
        stream.queue.append(lambda: dst.copy_(src))

    def record_event(self, stream):
        self.log.append(("record", stream))
        return (stream, len(stream.queue))

    def synchronize(self, event) -> None:
        self.log.append(("sync", event[0]))
        event[0].run_until(event[1])

    def ops(self, kind: str) -> list[tuple]:
        return [entry for entry in self.log if entry[0] == kind]


def _storage(t) -> int:
    return t.untyped_storage().data_ptr()


@pytest.fixture
def trained(make_trainer, tmp_path):
    """A Trainer after two steps: AdamW holds its moments (tagged "cuda") and its step counters (CPU, as AdamW
    keeps them on a GPU too unless ``capturable`` or ``fused``)."""
    trainer = make_trainer(tmp_path / "out", max_steps=2)
    trainer.train()
    model = trainer.model
    device = {_storage(t) for t in model.state_dict().values()}
    cpu = set()
    for per_param in trainer.optimizer.state.values():
        device |= {_storage(per_param["exp_avg"]), _storage(per_param["exp_avg_sq"])}
        cpu.add(_storage(per_param["step"]))
    assert device and cpu and not device & cpu
    return trainer, device, cpu


def _queue_end_of_step(trainer, copier: FakeCopier, amount: float) -> None:
    """The step's last kernels, queued on the compute stream and not yet run when the snapshot starts."""

    def update():
        with torch.no_grad():
            for p in trainer.model.parameters():
                p.add_(amount)
            for per_param in trainer.optimizer.state.values():
                per_param["exp_avg"].add_(amount)

    copier.compute.append(update)


def _assert_snapshot_matches_live(trainer, snap) -> None:
    for name, live in trainer.model.state_dict().items():
        assert torch.equal(snap.model_state[name], live), f"model tensor {name}"
    live_state = trainer.optimizer.state_dict()["state"]
    for pid, per_param in live_state.items():
        for key, live in per_param.items():
            assert torch.equal(snap.optimizer_state["state"][pid][key], live), f"optimizer {pid}/{key}"


def test_gpu_tensors_are_copied_on_a_side_stream_into_pinned_buffers_with_one_wait(trained):
    trainer, device, cpu = trained
    copier = FakeCopier(device)
    buffers = SnapshotBuffers(copier=copier)
    _queue_end_of_step(trainer, copier, 1.0)

    snap = take_snapshot(trainer, buffers)
    log = list(copier.log)  # everything up to here happened before the snapshot returned
    copier.run_compute()  # the GPU would finish whatever else was queued

    _assert_snapshot_matches_live(trainer, snap)  # the step's queued update is in the snapshot
    copies = copier.ops("copy")
    (stream,) = copier.streams
    assert [e[1] for e in copier.ops("new_stream")] == [stream]
    assert all(e[1] is stream for e in copies), "every copy runs on the side stream"
    assert all(e[4] is True for e in copies), "every copy is non_blocking"
    assert all(e[2].data_ptr() in copier.pinned for e in copies), "every copy lands in a pinned buffer"
    assert {e[3] for e in copies} == device, "every device tensor is copied through the copier"
    assert len(copies) == len(device), "each storage once (tied weights share one buffer)"
    assert not {e[3] for e in copies} & cpu, "CPU tensors never go through the device copier"
    kinds = [e[0] for e in log if e[0] != "alloc"]
    assert kinds.index("wait") < kinds.index("copy"), "the side stream waits for the compute stream first"
    assert kinds.count("wait") == 1
    assert kinds.count("sync") == 1, "exactly one synchronisation"
    assert kinds[-2:] == ["record", "sync"], "the event is recorded after the last copy, then waited for"
    assert copier.ops("record")[0][1] is stream


def test_second_snapshot_reuses_the_pinned_buffers_and_the_stream(trained):
    trainer, device, _ = trained
    copier = FakeCopier(device)
    buffers = SnapshotBuffers(copier=copier)
    first = take_snapshot(trainer, buffers)
    first_buffers = {name: t.data_ptr() for name, t in first.model_state.items()}
    allocations = len(copier.ops("alloc"))
    assert allocations == len(device)
    copier.log.clear()

    _queue_end_of_step(trainer, copier, 2.0)
    second = take_snapshot(trainer, buffers)
    copier.run_compute()

    assert copier.ops("alloc") == [], "the steady state allocates no pinned memory"
    assert copier.ops("new_stream") == [], "the side stream is made once"
    assert {name: t.data_ptr() for name, t in second.model_state.items()} == first_buffers
    _assert_snapshot_matches_live(trainer, second)
    kinds = [e[0] for e in copier.log]
    assert kinds[0] == "wait" and kinds.count("wait") == 1, "each snapshot waits for the compute stream again"
    assert kinds.count("sync") == 1 and kinds[-1] == "sync"


def test_cpu_model_never_touches_the_device_copier(trained):
    trainer, _, _ = trained
    copier = FakeCopier(set())  # nothing is on a GPU
    snap = take_snapshot(trainer, SnapshotBuffers(copier=copier))
    assert copier.ops("alloc") == [] and copier.ops("copy") == [] and copier.ops("wait") == []
    assert copier.ops("sync") == [], "a CPU snapshot waits for nothing"
    _assert_snapshot_matches_live(trainer, snap)


def test_shared_memory_buffers_take_the_side_stream_too(tmp_path):
    from aegis_ckpt.trainer.asyncsave.writerproc import new_shared_memory_dir, shared_memory_root

    if shared_memory_root() is None:
        pytest.skip("needs /dev/shm (Linux)")
    src = torch.arange(12.0).view(3, 4)
    copier = FakeCopier({_storage(src)})
    buffers = SnapshotBuffers(new_shared_memory_dir(), copier=copier)
    try:
        buffers.begin()
        buf = buffers.copy("w", src)
        buffers.finish()
        assert torch.equal(buf, src)
        assert buffers.shm_ref(buf) is not None, "the writer process still maps the buffer"
        assert copier.ops("alloc") == [], "shared-memory files are not pinned"
        assert [e[0] for e in copier.log] == ["new_stream", "wait", "copy", "record", "sync"]
    finally:
        buffers.clear()


def test_cuda_copier_makes_the_calls_the_seam_promises(monkeypatch):
    """``CudaCopier`` against stand-ins for torch.cuda: the copy is enqueued inside the side stream's context
    with ``non_blocking=True``; the side stream waits for the current stream of its own device; host buffers are
    pinned; the wait is on an event the side stream recorded."""
    calls: list[tuple] = []
    active: list = []

    class Stream:
        def __init__(self, device=None):
            self.device = device

        def wait_stream(self, other):
            calls.append(("wait_stream", self, other))

        def record_event(self):
            calls.append(("record_event", self))
            return Event()

    class Event:
        def synchronize(self):
            calls.append(("synchronize", self))

    @contextmanager
    def stream_context(stream):
        active.append(stream)
        try:
            yield
        finally:
            active.pop()

    class Dst:
        def copy_(self, src, non_blocking=False):
            calls.append(("copy_", active[-1] if active else None, src, non_blocking))

    monkeypatch.setattr(torch.cuda, "Stream", Stream)
    monkeypatch.setattr(torch.cuda, "stream", stream_context)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: ("current", device))
    copies = devicecopy.DeviceCopies(devicecopy.CudaCopier())
    src = torch.ones(2)
    copies.begin()
    copies.copy(Dst(), src)
    copies.copy(Dst(), src)
    copies.finish()

    side = calls[0][1]
    assert isinstance(side, Stream) and side.device == src.device
    assert calls[0] == ("wait_stream", side, ("current", src.device))
    assert calls[1] == ("copy_", side, src, True) and calls[2] == ("copy_", side, src, True)
    assert [c[0] for c in calls[3:]] == ["record_event", "synchronize"]

    pinned: list = []
    monkeypatch.setattr(torch, "empty", lambda *a, **kw: pinned.append(kw.get("pin_memory")))
    devicecopy.CudaCopier().empty_host((2,), torch.float32, pin=True)
    assert pinned == [True]


def test_after_a_failed_snapshot_the_next_one_waits_for_the_compute_stream_again(trained, monkeypatch):
    trainer, device, _ = trained
    copier = FakeCopier(device)
    buffers = SnapshotBuffers(copier=copier)

    def broken():
        raise RuntimeError("optimizer state unavailable")

    with monkeypatch.context() as m:
        m.setattr(trainer.optimizer, "state_dict", broken)
        with pytest.raises(RuntimeError):
            take_snapshot(trainer, buffers)  # the model's copies are queued; no wait, no event
    assert copier.ops("copy") and not copier.ops("sync")
    copier.log.clear()

    _queue_end_of_step(trainer, copier, 3.0)
    snap = take_snapshot(trainer, buffers)
    copier.run_compute()
    assert [e[0] for e in copier.log].count("wait") == 1
    _assert_snapshot_matches_live(trainer, snap)
