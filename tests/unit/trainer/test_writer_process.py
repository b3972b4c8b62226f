"""The writer process of asynchronous saves: what it writes, how it fails, and that it never outlives its trainer.

Real child processes and real shared-memory files; no Trainer (the layout against the Trainer's own save is in
tests/integration/test_async_layout.py).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

from aegis_ckpt.storage.commit import verify_checkpoint
from aegis_ckpt.storage.layout import MANIFEST_NAME
from aegis_ckpt.trainer.asyncsave.buffers import SnapshotBuffers
from aegis_ckpt.trainer.asyncsave.hflayout import LargeFile
from aegis_ckpt.trainer.asyncsave.writerproc import (
    SHM_PREFIX,
    WriteJob,
    WriterProcess,
    WriterProcessError,
    encode_job,
    new_shared_memory_dir,
    shared_memory_root,
)

pytestmark = pytest.mark.skipif(shared_memory_root() is None, reason="needs /dev/shm (Linux)")


@pytest.fixture
def buffers():
    b = SnapshotBuffers(new_shared_memory_dir())
    yield b
    b.clear()


@pytest.fixture
def writer():
    w = WriterProcess(niceness=19)
    yield w
    w.close()


def _job(buffers, staging: Path, step: int = 7) -> tuple[WriteJob, dict]:
    weights = {
        "w": buffers.copy(("m", "w"), torch.randn(64, 32)),
        "b": buffers.copy(("m", "b"), torch.arange(5.0)),
    }
    optim = {
        "state": {0: {"exp_avg": buffers.copy(("o", 0), torch.randn(64, 32)), "step": torch.tensor(3.0)}}
    }
    staging.mkdir(parents=True)
    (staging / "config.json").write_text("{}")
    files = [
        LargeFile("safetensors", str(staging / "model.safetensors"), dict(weights), {"format": "pt"}),
        LargeFile("torch", str(staging / "optimizer.pt"), optim),
    ]
    return WriteJob(str(staging), files, step, "interval", {"async": True}, sha256=True), {
        "weights": weights,
        "optim": optim,
    }


def test_the_child_writes_what_the_buffers_hold_and_commits(tmp_path, buffers, writer):
    job, expected = _job(buffers, tmp_path / "staging")
    payload = encode_job(job, buffers)
    # Tensors in shared memory travel as references: the payload stays small whatever their size.
    assert len(payload) < 4096
    manifest, seconds = writer.run(payload)
    assert manifest.step == 7 and seconds >= 0
    assert verify_checkpoint(tmp_path / "staging", full=True).ok
    loaded = load_file(tmp_path / "staging" / "model.safetensors")
    assert torch.equal(loaded["w"], expected["weights"]["w"]) and torch.equal(
        loaded["b"], expected["weights"]["b"]
    )
    optim = torch.load(tmp_path / "staging" / "optimizer.pt")
    assert torch.equal(optim["state"][0]["exp_avg"], expected["optim"]["state"][0]["exp_avg"])
    assert psutil.Process(writer.pid).nice() == 19


def test_a_failed_job_is_reported_and_the_child_keeps_serving(tmp_path, buffers, writer):
    job, _ = _job(buffers, tmp_path / "staging")
    job.files.append(LargeFile("torch", str(tmp_path / "no-such-dir" / "x.pt"), {"a": 1}))
    with pytest.raises(WriterProcessError, match="in the writer process"):
        writer.run(encode_job(job, buffers))
    good, _ = _job(buffers, tmp_path / "staging2", step=8)
    assert writer.run(encode_job(good, buffers))[0].step == 8


class _DieWhileWriting:
    """Unpickled in the writer process as a call to ``os.abort()``: the child dies in the middle of a job."""

    def __reduce__(self):
        return (os.abort, ())


def test_a_child_that_dies_during_a_job_fails_that_job_and_is_restarted_for_the_next(
    tmp_path, buffers, writer
):
    first, _ = _job(buffers, tmp_path / "a", step=1)
    writer.run(encode_job(first, buffers))
    pid = writer.pid
    second, _ = _job(buffers, tmp_path / "b", step=2)
    second.files.append(LargeFile("torch", str(tmp_path / "b" / "extra.pt"), _DieWhileWriting()))
    with pytest.raises(WriterProcessError, match="exited with code"):
        writer.run(encode_job(second, buffers))
    assert not (tmp_path / "b" / MANIFEST_NAME).exists()
    third, _ = _job(buffers, tmp_path / "c", step=3)
    assert writer.run(encode_job(third, buffers))[0].step == 3
    assert writer.pid != pid


def test_a_child_killed_between_jobs_is_replaced_silently(tmp_path, buffers, writer):
    first, _ = _job(buffers, tmp_path / "a", step=1)
    writer.run(encode_job(first, buffers))
    pid = writer.pid
    os.kill(pid, signal.SIGKILL)
    psutil.Process(pid).wait(10)
    second, _ = _job(buffers, tmp_path / "b", step=2)
    assert writer.run(encode_job(second, buffers))[0].step == 2
    assert writer.pid != pid


def test_the_child_ignores_stop_signals_meant_for_the_trainer(tmp_path, buffers, writer):
    job, _ = _job(buffers, tmp_path / "a", step=1)
    writer.run(encode_job(job, buffers))
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        os.kill(writer.pid, signum)
    job, _ = _job(buffers, tmp_path / "b", step=2)
    assert writer.run(encode_job(job, buffers))[0].step == 2


PARENT = """
import sys, time
from aegis_ckpt.trainer.asyncsave.writerproc import WriterProcess
w = WriterProcess()
w.start()
print(w.pid, flush=True)
time.sleep(600)
"""


def test_the_child_dies_with_a_killed_parent():
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    try:
        child_pid = int(parent.stdout.readline())
        child = psutil.Process(child_pid)
        parent.kill()
        parent.wait()
        child.wait(15)  # raises TimeoutExpired if the writer outlived its trainer
        assert not psutil.pid_exists(child_pid) or child.status() == psutil.STATUS_ZOMBIE
    finally:
        parent.kill()


def test_shared_memory_of_dead_processes_is_removed_and_buffers_clean_up():
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = shared_memory_root() / f"{SHM_PREFIX}{dead.pid}-leftover"
    stale.mkdir()
    (stale / "b0").write_bytes(b"x" * 10)
    fresh = SnapshotBuffers(new_shared_memory_dir())
    try:
        assert not stale.exists()
        fresh.copy("t", torch.ones(3))
        assert any(fresh.shm_dir.iterdir())
    finally:
        fresh.clear()
    assert not fresh.shm_dir.exists()


def test_a_reshaped_buffer_replaces_its_file(buffers):
    buffers.copy("t", torch.ones(4))
    buffers.copy("t", torch.ones(2, 3))
    assert len(list(buffers.shm_dir.iterdir())) == 1
    assert buffers.shm_ref(buffers.copy("t", torch.zeros(2, 3))) is not None
