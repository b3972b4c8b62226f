"""A low-priority child process that writes the large files of an asynchronous save and commits it.

Why a process: on a machine with few cores, a writer *thread* competes with training for the GIL (safetensors
and ``torch.save`` hold it while they serialise) and for the CPU at the same priority; steps slow down for the
whole write. A child process at ``nice`` 19 only gets the CPU that training leaves idle, and shares no GIL.

What crosses the pipe is small: the snapshot's tensors live in shared-memory files (``SnapshotBuffers`` with a
``shm_dir``), so a job is a pickle in which every such tensor is a reference (file, dtype, offset, shape,
stride) that the child maps with ``torch.from_file``. The parent writes the small files itself; the child
writes the weight shards and ``optimizer.pt``, then runs ``commit_checkpoint`` (hashes, fsync, manifest) in the
staging folder. It replies with the manifest or the error.

The child ignores SIGINT/SIGTERM/SIGHUP (a stop request is for the trainer, which waits for the save in flight)
and dies with its parent (``PR_SET_PDEATHSIG`` on Linux, and end of input everywhere), so a killed run never
leaves a writer behind that could write into a later run's staging folder.

Run as ``python -m aegis_ckpt.trainer.asyncsave.writerproc PARENT_PID NICENESS``; length-prefixed pickles on stdin/stdout.
"""

from __future__ import annotations

import io
import logging
import os
import pickle
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...system.platform import PACKAGE_DIR

logger = logging.getLogger(__name__)

SHM_PREFIX = "aegis-ckpt-"
_HEADER = struct.Struct("<Q")


class WriterProcessError(RuntimeError):
    """The writer process died or could not be started."""


# ---- shared memory ---------------------------------------------------------------------------------------------
def shared_memory_root() -> Path | None:
    """Where snapshot buffers can live as shared files (``/dev/shm`` on Linux), or None."""
    root = Path("/dev/shm")
    if os.name == "posix" and root.is_dir() and os.access(root, os.W_OK):
        return root
    return None


def new_shared_memory_dir() -> Path | None:
    """A fresh folder for this process's buffers, after removing those that dead processes left behind."""
    root = shared_memory_root()
    if root is None:
        return None
    remove_stale_shared_memory(root)
    return Path(tempfile.mkdtemp(prefix=f"{SHM_PREFIX}{os.getpid()}-", dir=root))


def remove_stale_shared_memory(root: Path) -> None:
    import psutil

    for entry in root.glob(f"{SHM_PREFIX}*"):
        pid_text = entry.name[len(SHM_PREFIX) :].split("-", 1)[0]
        if pid_text.isdigit() and not psutil.pid_exists(int(pid_text)):
            shutil.rmtree(entry, ignore_errors=True)
            logger.info("Removed %s, left by a process that no longer runs", entry)


def shared_memory_free_bytes() -> int:
    root = shared_memory_root()
    return shutil.disk_usage(root).free if root is not None else 0


# ---- the job format ----------------------------------------------------------------------------------------------
@dataclass
class WriteJob:
    """What the child does for one save: write ``files`` (``trainer.asyncsave.hflayout.LargeFile``), then commit ``staging``."""

    staging: str
    files: list
    step: int
    reason: str
    meta: dict
    sha256: bool


class _RefPickler(pickle.Pickler):
    """Pickles tensors that live in snapshot buffers as references to their shared-memory files."""

    def __init__(self, file, buffers):
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self._buffers = buffers

    def persistent_id(self, obj):
        import torch

        if isinstance(obj, torch.Tensor) and obj.device.type == "cpu":
            ref = self._buffers.shm_ref(obj)
            if ref is not None:
                return (
                    "shm",
                    ref.path,
                    ref.dtype,
                    ref.numel,
                    obj.storage_offset(),
                    tuple(obj.shape),
                    obj.stride(),
                )
        return None


class _RefUnpickler(pickle.Unpickler):
    def __init__(self, file):
        super().__init__(file)
        self._mapped: dict[str, Any] = {}

    def persistent_load(self, pid):
        import torch

        kind, path, dtype_name, numel, offset, shape, stride = pid
        if kind != "shm":
            raise pickle.UnpicklingError(f"unknown reference {kind!r}")
        base = self._mapped.get(path)
        if base is None:
            dtype = getattr(torch, dtype_name.removeprefix("torch."))
            base = self._mapped[path] = torch.from_file(path, shared=True, size=numel, dtype=dtype)
        return base.as_strided(shape, stride, offset)


def encode_job(job: WriteJob, buffers) -> bytes:
    out = io.BytesIO()
    _RefPickler(out, buffers).dump(job)
    return out.getvalue()


def decode_job(payload: bytes) -> WriteJob:
    return _RefUnpickler(io.BytesIO(payload)).load()


def run_job(job: WriteJob):
    """Write the large files (``directwrite``: no page cache, hashed from memory), then commit the staging
    folder; returns the manifest."""
    from ...storage.commit import commit_checkpoint
    from ...storage.directwrite import AlignedBuffer, write_large_files

    global _buffer
    if _buffer is None:
        _buffer = AlignedBuffer()
    known = write_large_files(job.files, _buffer, folder=job.staging, sha256=job.sha256)
    job.files = []  # unmap before the commit
    return commit_checkpoint(
        Path(job.staging), step=job.step, reason=job.reason, meta=job.meta, sha256=job.sha256, known=known
    )


_buffer = None  # the child's reused directwrite.AlignedBuffer


# ---- the child ---------------------------------------------------------------------------------------------------
def _die_with_parent(parent_pid: int) -> None:
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            PR_SET_PDEATHSIG = 1
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(3)


def _read_exact(stream, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        chunk = stream.read(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def _read_message(stream) -> bytes | None:
    header = _read_exact(stream, _HEADER.size)
    if header is None:
        return None
    return _read_exact(stream, _HEADER.unpack(header)[0])


def _write_message(stream, payload: bytes) -> None:
    stream.write(_HEADER.pack(len(payload)) + payload)
    stream.flush()


def child_main(argv: list[str]) -> int:
    parent_pid, niceness = int(argv[0]), int(argv[1])
    _die_with_parent(parent_pid)
    for name in ("SIGINT", "SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)
    if niceness and hasattr(os, "nice"):
        os.nice(niceness)
    # The protocol owns the real stdout; anything a library prints goes to stderr.
    requests = os.fdopen(os.dup(0), "rb", buffering=0)
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    logging.basicConfig(level=logging.WARNING, format="[aegis-ckpt writer] %(levelname)s %(message)s")
    import torch

    torch.set_num_threads(1)
    _write_message(replies, pickle.dumps(("ready", os.getpid())))
    while True:
        payload = _read_message(requests)
        if payload is None:  # the parent closed the pipe or died
            return 0
        started = time.perf_counter()
        try:
            manifest = run_job(decode_job(payload))
            reply = ("ok", manifest, time.perf_counter() - started)
        except BaseException as e:  # noqa: BLE001 - every failure goes back to the trainer
            import traceback

            reply = ("error", f"{type(e).__name__}: {e}", traceback.format_exc())
        _write_message(replies, pickle.dumps(reply))


# ---- the parent's handle -----------------------------------------------------------------------------------------
class WriterProcess:
    """The trainer's side: starts the child, sends it jobs one at a time, restarts it if it died."""

    def __init__(self, niceness: int = 19):
        self.niceness = niceness
        self._proc: subprocess.Popen | None = None
        self._ready = False
        self._lock = threading.Lock()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> None:
        """Start the child if it does not run (it imports torch at low priority: call this early)."""
        if self._proc is not None and self._proc.poll() is None:
            return
        self._ready = False
        env = dict(os.environ)
        package_parent = str(PACKAGE_DIR.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH")) if p)
        self._proc = subprocess.Popen(
            [sys.executable, "-m", __name__, str(os.getpid()), str(self.niceness)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )

    def _receive(self):
        payload = _read_message(self._proc.stdout)
        if payload is None:
            code = self._proc.wait()
            raise WriterProcessError(f"the writer process {self._proc.pid} exited with code {code}")
        return pickle.loads(payload)

    def run(self, payload: bytes):
        """Send one job and wait for its result: ``(manifest, seconds)``; raises on failure."""
        with self._lock:
            self.start()
            if not self._ready:
                self._receive()  # ("ready", pid): torch is imported
                self._ready = True
            try:
                _write_message(self._proc.stdin, payload)
            except (BrokenPipeError, OSError) as e:
                self._proc.wait()
                raise WriterProcessError(
                    f"the writer process {self._proc.pid} is gone (exit code {self._proc.returncode})"
                ) from e
            reply = self._receive()
        if reply[0] == "ok":
            return reply[1], reply[2]
        raise WriterProcessError(f"in the writer process: {reply[1]}\n{reply[2]}")

    def close(self, timeout: float = 30.0) -> None:
        """Let the child finish and exit (end of input); kill it if it does not."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            proc.stdin.close()
        except OSError:
            pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1:]))
