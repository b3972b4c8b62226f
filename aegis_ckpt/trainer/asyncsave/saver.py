"""Two-phase saves: a snapshot on the training thread, then persist + commit on a background thread.

::

    training thread (step end)          background thread                 training thread (a later step end)
    ---------------------------         -----------------------------     ----------------------------------
    take_snapshot()  <- only stall  ->  write_snapshot_files(.aegis/      publish(): rename the committed
    submit(job)                         staging/step-N) (directwrite:      staging folder to checkpoint-N,
                                        O_DIRECT, hashed in flight),       fsync, prune
                                        commit_checkpoint(known=digests)
                                        (fsync + manifest inside staging),
                                        read_back (files from disk = manifest)

The staging folder is complete and committed (it carries its manifest) before the rename makes it visible as
``checkpoint-N`` in one atomic step, so the commit protocol's guarantee holds unchanged. Publishing happens on the
training thread, never concurrently with a Trainer save or with retention. At most one save is in flight. A
background failure is reported once, when the job is collected, and then cleared; the previous committed
checkpoint stays the resume point.

The thread is not a daemon: a process that ends normally waits for the write in flight. A process that is killed
leaves a staging folder, which the next resume scan publishes if it was committed, or removes if it was not.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...options import AsyncOptions
from ...storage.commit import Manifest, commit_checkpoint
from ...storage.readback import read_back
from ...storage.space import ensure_space
from ..compat import overridden_save_method, unsupported_reason
from .buffers import SnapshotBuffers
from .hflayout import write_rng_file, write_snapshot, write_snapshot_files
from .snapshot import TrainerSnapshot, take_snapshot
from .writerproc import (
    WriteJob,
    WriterProcess,
    encode_job,
    new_shared_memory_dir,
    shared_memory_free_bytes,
)

logger = logging.getLogger(__name__)


@dataclass
class SaveJob:
    """One asynchronous save, from snapshot to commit inside its staging folder."""

    step: int
    reason: str
    staging: Path
    snapshot: TrainerSnapshot | None
    meta: dict[str, Any]
    snapshot_sec: float
    sha256: bool = False
    payload: bytes | None = None  # the job for a writer process (encoded on the training thread)
    need_bytes: int = 0  # what the write needs free (the snapshot's size); checked before anything is written
    started_unix: float = field(default_factory=time.time)
    write_sec: float = 0.0
    read_back_sec: float = 0.0  # the read-back after the commit (part of write_sec)
    manifest: Manifest | None = None
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)


class AsyncCheckpointWriter:
    """Runs at most one ``SaveJob`` at a time on a background thread that writes and commits in-process."""

    def __init__(self, write: Callable[..., dict | None] | None = None, *, niceness: int = 0):
        """``write(snapshot, folder, sha256=...)`` writes the main process's files and may return digests of
        files it hashed while writing (relative name -> ``FileDigest``); by default ``write_snapshot_files``
        with one reused ``AlignedBuffer``. ``niceness``: added to each job thread's nice value, which also
        lowers its I/O priority (``system.priority``; Linux), so the save yields to training."""
        self._write = write if write is not None else self._write_direct
        self.niceness = niceness
        self.priority = ""  # what the last job thread got, for the log and the tests
        self._buffer = None  # directwrite.AlignedBuffer, made on the first save and kept
        self._job: SaveJob | None = None
        self._thread: threading.Thread | None = None

    @property
    def in_flight(self) -> SaveJob | None:
        return self._job

    @property
    def busy(self) -> bool:
        return self._job is not None and not self._job.done.is_set()

    def submit(self, job: SaveJob) -> None:
        if self._job is not None:
            raise RuntimeError("a save is already in flight; collect it first")
        self._job = job
        self._thread = threading.Thread(
            target=self._run, args=(job,), name=f"aegis-save-{job.step}", daemon=False
        )
        self._thread.start()

    def _aligned_buffer(self):
        """The writer's two aligned slots, made on the first save and reused by every write and read-back."""
        from ...storage.aligned import AlignedBuffer

        if self._buffer is None:
            self._buffer = AlignedBuffer()
        return self._buffer

    def _write_direct(self, snapshot: TrainerSnapshot, folder: Path, *, sha256: bool) -> dict:
        return write_snapshot_files(snapshot, folder, sha256=sha256, buffer=self._aligned_buffer())

    def _persist(self, job: SaveJob) -> Manifest:
        known = None
        if job.snapshot is not None and job.snapshot.is_main:
            known = self._write(job.snapshot, job.staging, sha256=job.sha256)
        return commit_checkpoint(
            job.staging, step=job.step, reason=job.reason, meta=job.meta, sha256=job.sha256, known=known
        )

    def _run(self, job: SaveJob) -> None:
        from ...system.priority import lower_current_thread

        started = time.perf_counter()
        self.priority = lower_current_thread(self.niceness)  # a fresh thread per job: nothing else is lowered
        try:
            if job.error is not None:  # the training thread's part already failed (e.g. a full disk)
                raise job.error
            ensure_space(job.staging, job.need_bytes, what=f"the checkpoint of step {job.step}")
            manifest = self._persist(job)
            # Before it can be published (and so before retention may delete an older checkpoint for it).
            job.read_back_sec = read_back(job.staging, self._aligned_buffer())
            job.manifest = manifest
        except BaseException as e:  # noqa: BLE001 - reported on the training thread when collected
            job.error = e
        finally:
            job.snapshot = None  # drop references to the buffers' views and the model
            job.payload = None
            job.write_sec = time.perf_counter() - started
            job.done.set()

    def close(self) -> None:
        """Nothing to release for a thread; the process writer stops its child here."""

    def collect(self, *, wait: bool = False, timeout: float | None = None) -> SaveJob | None:
        """Return the job if it finished (after waiting for it, if asked), and forget it; else None."""
        job = self._job
        if job is None:
            return None
        if wait:
            job.done.wait(timeout)
        if not job.done.is_set():
            return None
        if self._thread is not None:
            self._thread.join()
        self._job = None
        self._thread = None
        return job


class ProcessCheckpointWriter(AsyncCheckpointWriter):
    """Hands each job to a low-priority writer process (``writerproc``); the thread here waits on a pipe and
    then reads the committed folder back, at the process's niceness too."""

    def __init__(self, niceness: int = 19):
        super().__init__(niceness=niceness)
        self.process = WriterProcess(niceness)

    def _persist(self, job: SaveJob) -> Manifest:
        if job.payload is None:
            raise RuntimeError("a process-writer job needs its encoded payload")
        manifest, _ = self.process.run(job.payload)
        return manifest

    def close(self) -> None:
        self.collect(wait=True)
        self.process.close()


def _has_shared_memory() -> bool:
    from .writerproc import shared_memory_root

    return shared_memory_root() is not None


RAM_CHECK_PERIOD_SEC = 2.0  # between saves, a stale answer is at most this old


def estimate_snapshot_bytes(model, optimizer) -> int:
    """Bytes a snapshot copies: the model's state dict (tied weights once) and the optimizer's tensors."""
    import torch

    seen = set()
    total = 0
    for t in model.state_dict().values():
        if isinstance(t, torch.Tensor):
            key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
            if key not in seen:
                seen.add(key)
                total += t.numel() * t.element_size()
    if optimizer is not None:
        for per_param in optimizer.state_dict().get("state", {}).values():
            for v in per_param.values():
                if isinstance(v, torch.Tensor):
                    total += v.numel() * v.element_size()
    return total


class AsyncSaver:
    """The training-thread side of asynchronous saves for the Trainer callback: whether they are possible in this
    setup, the snapshot every rank takes at the agreed step, and the hand-over to the background writer. What a
    finished save becomes (publish, log, audit, prune) stays with the callback."""

    def __init__(self, options: AsyncOptions):
        self.options = options
        self.writer: AsyncCheckpointWriter = AsyncCheckpointWriter(niceness=options.thread_niceness)
        self.buffers = SnapshotBuffers()
        self.off_reason: str | None = None
        self.uses_process = False
        self.max_shard_bytes: int | None = None  # the weights' shard size (None: save_pretrained's default)
        self._deferred_since_step: int | None = None
        self._ram_checked_at: float | None = None

    @property
    def enabled(self) -> bool:
        return self.off_reason is None

    @property
    def busy(self) -> bool:
        return self.writer.busy

    def choose_mode(self, trainer) -> None:
        """Decide once per training run, and say so once."""
        self._deferred_since_step = None
        self._ram_checked_at = None
        if not self.options.enabled:
            self.off_reason = "async_save=False"
            return
        self.off_reason = unsupported_reason(trainer)
        if self.off_reason:
            # A warning only where the user can change something (pass the callback to the Trainer, or accept
            # that a subclass's save stays synchronous); adapters, DeepSpeed, FSDP, quantized models: info.
            actionable = trainer is None or overridden_save_method(trainer) is not None
            logger.log(
                logging.WARNING if actionable else logging.INFO,
                "Saving synchronously (the Trainer's own save, committed the same way): %s.",
                self.off_reason,
            )
            return
        use_process, why = self._process_writer_wanted(trainer)
        if use_process != self.uses_process or (use_process and self.buffers.shm_dir is None):
            self.close()
            if use_process:
                self.buffers = SnapshotBuffers(new_shared_memory_dir())
                self.writer = ProcessCheckpointWriter(self.options.writer_niceness)
                atexit.register(self.close)
            else:
                self.buffers = SnapshotBuffers()
                self.writer = AsyncCheckpointWriter(niceness=self.options.thread_niceness)
            self.uses_process = use_process
        if use_process:
            self.writer.process.start()  # imports torch at low priority while training starts
        logger.info(
            "Asynchronous saves: training pauses only to copy the state to CPU memory; %s writes in the "
            "background (%s)",
            f"a writer process (nice {self.options.writer_niceness})"
            if use_process
            else f"a thread (nice +{self.options.thread_niceness})",
            why,
        )

    def _process_writer_wanted(self, trainer) -> tuple[bool, str]:
        if self.options.writer == "thread":
            return False, "writer: thread"
        if not _has_shared_memory():
            logger.warning("writer: process needs /dev/shm; writing on a thread instead")
            return False, "no /dev/shm"
        if not trainer.args.should_save:
            return False, "this rank writes no files"
        model = trainer.accelerator.unwrap_model(trainer.model, keep_torch_compile=False)
        need = estimate_snapshot_bytes(model, trainer.optimizer)
        free = shared_memory_free_bytes()
        if need > free:
            logger.warning(
                "/dev/shm has %.1f GiB free and a snapshot needs ~%.1f GiB: writing on a thread instead",
                free / 2**30,
                need / 2**30,
            )
            return False, "/dev/shm too small"
        if any(p.device.type != "cpu" for p in model.parameters()):
            logger.warning("writer: process uses unpinned shared memory: copies from the GPU are slower")
        return True, "writer: process"

    def close(self) -> None:
        """Wait for the save in flight, stop the writer process and free the shared memory."""
        self.writer.close()
        if self.buffers.shm_dir is not None:
            self.buffers.clear()

    def fits_in_ram(self, trainer, args, *, now: float, urgent: bool) -> bool:
        """Checked before the first snapshot only (later ones reuse its buffers); a refusal is final.

        The check walks the state dicts and reads /proc/meminfo: about a millisecond, which is several percent
        of a small model's step. So until the first snapshot it runs at most every ``RAM_CHECK_PERIOD_SEC``, and
        always when ``urgent`` (this rank is about to save)."""
        if self.buffers.nbytes or trainer is None or not self.enabled:
            return True
        if (
            not urgent
            and self._ram_checked_at is not None
            and now - self._ram_checked_at < RAM_CHECK_PERIOD_SEC
        ):
            return True
        self._ram_checked_at = now  # also on ranks that write nothing: the rate limit applies to them too
        if not args.should_save:  # a property that reads the environment: not on every step
            return True
        import psutil

        model = trainer.accelerator.unwrap_model(trainer.model, keep_torch_compile=False)
        need = estimate_snapshot_bytes(model, trainer.optimizer)
        memory = psutil.virtual_memory()
        if memory.available - need >= self.options.min_free_ram_fraction * memory.total:
            return True
        self.off_reason = (
            f"an asynchronous snapshot needs ~{need / 2**30:.1f} GiB of RAM and {memory.available / 2**30:.1f} GiB "
            f"is available (keeping {self.options.min_free_ram_fraction:.0%} free)"
        )
        logger.warning("Saving synchronously from now on: %s.", self.off_reason)
        return False

    def defer(self, step: int, *, busy_on_some_rank: bool, wait_for_writer: Callable[[], None]) -> bool:
        """A save is due: True if it must wait for a later step end because the writer is still busy
        (``when_busy="skip"``); with ``"wait"``, block in ``wait_for_writer`` and return False."""
        if busy_on_some_rank or self.writer.busy:
            if self.options.when_busy == "skip":
                if self._deferred_since_step is None:
                    self._deferred_since_step = step
                    logger.info("Save due at step %d deferred: the previous one is still being written", step)
                return True  # the policy stays due: retried at the next step end
            wait_for_writer()
        if self._deferred_since_step is not None:
            logger.info(
                "Deferred save taken at step %d (%d steps late)", step, step - self._deferred_since_step
            )
            self._deferred_since_step = None
        return False

    def start(self, trainer, staging: Path, *, step: int, reason: str, meta: dict, sha256: bool) -> int:
        """Snapshot on this thread (the only stall), then hand the write and commit to the background writer.
        Every rank takes part: each writes its own RNG file into the shared staging folder (prepared by the
        main process) on this thread, and the main process's writer commits once all of them are there.
        Returns the bytes copied."""
        from ... import distributed
        from ...storage import fsio

        started = time.perf_counter()
        distributed.barrier()  # the main process has emptied and created the staging folder
        snapshot = take_snapshot(trainer, self.buffers)
        snapshot.max_shard_bytes = self.max_shard_bytes
        if not snapshot.is_main:
            write_rng_file(snapshot, staging)
            fsio.fsync_file(staging / snapshot.rng_file)
        distributed.barrier()
        snapshot_sec = time.perf_counter() - started
        if snapshot.is_main:
            payload = None
            failed: OSError | None = None
            if self.uses_process:
                # The small files are written here (milliseconds); the weights and the optimizer state go to the
                # writer process as references into shared memory.
                large: list = []
                try:
                    write_snapshot(snapshot, staging, defer_large=large)
                except OSError as e:  # reported when the job is collected, like a failure of the writer
                    failed = e
                payload = encode_job(WriteJob(str(staging), large, step, reason, meta, sha256), self.buffers)
                snapshot = None
            self.writer.submit(
                SaveJob(
                    step=step,
                    reason=reason,
                    staging=staging,
                    snapshot=snapshot,
                    meta=meta,
                    snapshot_sec=time.perf_counter() - started,
                    sha256=sha256,
                    payload=payload,
                    need_bytes=self.buffers.copied_bytes,
                    error=failed,
                )
            )
        logger.debug(
            "step %d: snapshot of %.1f MB in %.3f s", step, self.buffers.copied_bytes / 1e6, snapshot_sec
        )
        return self.buffers.copied_bytes
