"""The background writer yields to training: its job thread (and the threads it starts, such as the direct
writer's I/O thread) runs at a raised nice value and the lowest best-effort I/O level, while the training thread
keeps its own. Read from the kernel (``/proc/self/task/<tid>/stat``), not from our own bookkeeping."""

from __future__ import annotations

import os
import sys
import threading
from types import SimpleNamespace

import pytest

from aegis_ckpt.storage.directwrite import AlignedBuffer, DirectFile
from aegis_ckpt.trainer.asyncsave.saver import AsyncCheckpointWriter, SaveJob

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="per-thread priority is Linux-only"
)


def _nice_from_proc(tid: int) -> int:
    with open(f"/proc/self/task/{tid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[16])  # field 19 of stat(5); the split starts at field 3


def test_writer_thread_and_its_io_thread_run_at_a_raised_nice_value(tmp_path):
    import psutil

    base = _nice_from_proc(threading.get_native_id())
    seen: dict[str, object] = {}

    def write(snapshot, folder, *, sha256):
        tid = threading.get_native_id()
        seen["writer"] = _nice_from_proc(tid)
        seen["writer_io"] = psutil.Process(tid).ionice()
        buffer = AlignedBuffer(64 * 1024)
        out = DirectFile(folder / "model.bin", buffer)
        seen["io_thread"] = _nice_from_proc(out._io._thread.native_id)
        out.write(os.urandom(300_000))
        digest = out.close()
        buffer.close()
        return {"model.bin": digest}

    writer = AsyncCheckpointWriter(write=write, niceness=7)
    staging = tmp_path / "staging"
    staging.mkdir()
    writer.submit(SaveJob(1, "interval", staging, SimpleNamespace(is_main=True), {}, 0.0))
    job = writer.collect(wait=True)

    assert job.error is None and job.manifest is not None
    assert seen["writer"] == min(19, base + 7)
    assert seen["io_thread"] == seen["writer"]
    assert seen["writer_io"].ioclass == psutil.IOPRIO_CLASS_BE and seen["writer_io"].value == 7
    assert _nice_from_proc(threading.get_native_id()) == base  # the training thread is untouched
    assert "nice" in writer.priority


def test_niceness_zero_leaves_the_writer_at_the_training_priority(tmp_path):
    base = _nice_from_proc(threading.get_native_id())
    seen = {}

    def write(snapshot, folder, *, sha256):
        seen["writer"] = _nice_from_proc(threading.get_native_id())
        (folder / "f.bin").write_bytes(b"x")
        return None

    writer = AsyncCheckpointWriter(write=write, niceness=0)
    staging = tmp_path / "staging"
    staging.mkdir()
    writer.submit(SaveJob(1, "interval", staging, SimpleNamespace(is_main=True), {}, 0.0))
    assert writer.collect(wait=True).error is None
    assert seen["writer"] == base
