"""The run lease: ``run.lock`` + ``run.json`` in ``<output_dir>/.aegis/``.

One process at a time holds ``run.lock`` (an OS file lock, released by the OS when the process dies, so a
stale lease is taken over without guessing). ``run.json`` records who
  holds it (pid, host, boot id), a throttled heartbeat with the step and the last committed checkpoint, and, when
  the process ends normally, a clean-exit record. The next process reads it before writing its own session and
  tells apart a fresh start, a resume after a clean stop, after a crash, after a power loss or reboot (the boot
  id changed; the work between the last commit and the last heartbeat is reported as lost) and an already
  finished run. See ``docs/run-state.md``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from ..errors import RunLockedError
from ..storage import fsio
from ..storage.layout import AEGIS_DIR, RUN_LOCK_NAME, RUN_OWNER_NAME, RUN_RECORD_NAME
from ..system.boot import current_boot_id, process_create_time, same_boot
from ..system.slurmjob import current_slurm_job
from .completion import read_completion
from .records import read_json_record
from .start import RESUME_POWER_LOSS, RunStart, classify_start, fmt_duration, fmt_local_time

logger = logging.getLogger(__name__)

RUN_RECORD_FORMAT = "aegis-ckpt-run"
LOCK_WAIT_SEC = 2.0
"""How long ``acquire`` waits for the lock: long enough to ride out a probe by another tool, short enough to
refuse a second trainer at once."""
MAX_FAILURES_KEPT = 100
MAX_SLURM_SESSIONS_KEPT = 50
"""Slurm job id and restart count of the newest sessions, for ``aegis-ckpt status``."""


def session_is_alive(session: dict[str, Any]) -> bool:
    """Read-only liveness test of a recorded session (for ``aegis-ckpt status``): same host, same boot, and a
    process with that pid and start time still exists. No lock is touched."""
    if session.get("state") != "running":
        return False
    if session.get("host") != socket.gethostname() or not same_boot(
        session.get("boot_id"), current_boot_id()
    ):
        return False
    created = process_create_time(int(session.get("pid", -1)))
    recorded = session.get("pid_create_time")
    return created is not None and (recorded is None or abs(created - float(recorded)) < 2.0)


def run_record_path(output_dir: str | os.PathLike) -> Path:
    return Path(output_dir) / AEGIS_DIR / RUN_RECORD_NAME


def read_run_record(output_dir: str | os.PathLike) -> dict[str, Any] | None:
    """``run.json``, or None when there is none (or it is unreadable: it is advisory, checkpoints are not)."""
    record = read_json_record(run_record_path(output_dir))
    return record if record is not None and record.get("format") == RUN_RECORD_FORMAT else None


def _read_owner(output_dir: Path) -> dict[str, Any] | None:
    return read_json_record(output_dir / AEGIS_DIR / RUN_OWNER_NAME)


def _write_owner(output_dir: Path) -> None:
    """Say who holds the lock, right after taking it: a process refused meanwhile names it (``run.json`` only
    gets this session once training begins, after the model is built)."""
    owner = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started_unix": time.time(),
        "argv0": os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "",
    }
    try:
        fsio.atomic_write_json(output_dir / AEGIS_DIR / RUN_OWNER_NAME, owner)
    except OSError as e:
        logger.debug("could not write %s: %s", RUN_OWNER_NAME, e)


def _holder_message(output_dir: Path, now_unix: float) -> str:
    """The refusal message for ``output_dir``, naming the lock holder as well as the records allow."""
    session = (read_run_record(output_dir) or {}).get("session")
    owner = _read_owner(output_dir)
    if owner and not (
        session and session.get("state") == "running" and session.get("pid") == owner.get("pid")
    ):
        session = {
            "pid": owner.get("pid"),
            "host": owner.get("host"),
            "started_unix": owner.get("started_unix"),
        }
    return _locked_message(output_dir, session, now_unix)


def _locked_message(output_dir: Path, session: dict[str, Any] | None, now_unix: float) -> str:
    who = "another process"
    if session and "step" not in session:
        who = f"pid {session.get('pid')} on {session.get('host')} (started {fmt_local_time(session.get('started_unix'))})"
    elif session:
        beat = session.get("heartbeat_unix")
        who = (
            f"pid {session.get('pid')} on {session.get('host')} (started {fmt_local_time(session.get('started_unix'))}, "
            f"step {session.get('step')}, last heartbeat {fmt_duration(now_unix - beat) if beat else '?'} ago)"
        )
    return (
        f"{output_dir} is in use by another training run: {who}. Two processes saving into one directory would "
        "prune each other's checkpoints, so this one stops here. Wait for it to finish, stop it, or choose another "
        "output directory."
    )


def _take_lock(output_dir: Path, now_unix: float | None = None) -> FileLock:
    """The run lease's lock of ``output_dir``, acquired; ``RunLockedError`` naming the holder when another
    process keeps it past ``LOCK_WAIT_SEC`` (``now_unix``: the time the message measures from, default: then).

    One lock object per path in this process (is_singleton): a second session in the same interpreter (a new
    Trainer in a notebook) re-enters instead of locking itself out; other processes are refused."""
    lock = FileLock(str(output_dir / AEGIS_DIR / RUN_LOCK_NAME), is_singleton=True, thread_local=False)
    try:
        lock.acquire(timeout=LOCK_WAIT_SEC)
    except Timeout:
        raise RunLockedError(
            _holder_message(output_dir, time.time() if now_unix is None else now_unix)
        ) from None
    return lock


def ensure_not_locked(output_dir: str | os.PathLike) -> None:
    """Raise ``RunLockedError`` when another live process holds the run lease of ``output_dir``. Used before
    anything that moves folders (the resume scan), so a refused second process changes nothing on disk."""
    output_dir = Path(output_dir)
    if not (output_dir / AEGIS_DIR / RUN_LOCK_NAME).exists():
        return
    _take_lock(output_dir).release()


@contextlib.contextmanager
def holding_run_lock(output_dir: str | os.PathLike) -> Iterator[None]:
    """Hold the run lease's lock while this process changes ``output_dir`` outside a training session: the
    resume scan, start-up cleanup, the whole of ``aegis-ckpt train``. A live run refuses it (``RunLockedError``
    naming the holder), and a run starting meanwhile is refused in turn, so no scan can move the folder that
    another process is writing. Re-entrant in one process: ``RunLease.acquire`` inside it takes the same lock.
    """
    output_dir = Path(output_dir)
    (output_dir / AEGIS_DIR).mkdir(parents=True, exist_ok=True)
    lock = _take_lock(output_dir)
    try:
        if lock.lock_counter == 1:
            _write_owner(output_dir)
        yield
    finally:
        lock.release()


class RunLease:
    """This process's claim on an output directory, and its record in ``run.json``.

    Args:
        output_dir: the checkpoint directory.
        heartbeat_every_sec: minimum spacing of heartbeat writes (each is a small fsynced file).
        clock: monotonic time source for the throttle; tests inject a fake one.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        *,
        heartbeat_every_sec: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.output_dir = Path(output_dir)
        self.heartbeat_every_sec = heartbeat_every_sec
        self.clock = clock
        self.session: dict[str, Any] = {}
        self.history: dict[str, Any] = {"sessions": 0, "running_sec": 0.0, "failures": []}
        self.start: RunStart | None = None
        self._lock: FileLock | None = None
        self._last_beat: float | None = None

    @property
    def held(self) -> bool:
        return self._lock is not None

    def acquire(self, *, step: int = 0, has_checkpoints: bool = False) -> RunStart:
        """Take the lease (refusing a live holder), classify how the previous session ended, record ours."""
        fsio.makedirs_durable(self.output_dir / AEGIS_DIR)
        now = time.time()
        lock = _take_lock(self.output_dir, now)
        try:
            if lock.lock_counter == 1:
                _write_owner(self.output_dir)
            record = read_run_record(self.output_dir) or {}
            previous = record.get("session")
            self._refuse_live_foreign_host(previous, now)
            boot = current_boot_id()
            self.start = classify_start(
                previous,
                completion=read_completion(self.output_dir),
                boot_id=boot,
                has_checkpoints=has_checkpoints,
                now_unix=now,
                pid=os.getpid(),
            )
            self.history = self._updated_history(record.get("history"), previous, self.start, now)
            self.session = {
                "state": "running",
                "pid": os.getpid(),
                "pid_create_time": process_create_time(os.getpid()),
                "host": socket.gethostname(),
                "boot_id": boot,
                "argv0": os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "",
                "started_unix": now,
                "heartbeat_unix": now,
                "heartbeat_every_sec": self.heartbeat_every_sec,
                "start_step": step,
                "step": step,
                "last_commit_step": None,
                "last_commit_unix": None,
                "start_kind": self.start.kind,
                "exit": None,
            }
            job = current_slurm_job()
            if job is not None:  # a requeued job is a new session of the same job id, restart count + 1
                self.session["slurm"] = job.to_json_dict()
                self.history["slurm_sessions"] = [
                    *self.history.get("slurm_sessions", []),
                    {**job.to_json_dict(), "started_unix": now},
                ][-MAX_SLURM_SESSIONS_KEPT:]
            self._write()
        except BaseException:
            lock.release()
            raise
        self._lock = lock
        self._last_beat = self.clock()
        return self.start

    def _refuse_live_foreign_host(self, previous: dict[str, Any] | None, now: float) -> None:
        # On a shared network filesystem the OS lock may not reach another machine: trust a fresh heartbeat.
        if not previous or previous.get("state") != "running" or previous.get("host") == socket.gethostname():
            return
        beat = float(previous.get("heartbeat_unix") or 0)
        every = float(previous.get("heartbeat_every_sec") or 30.0)
        if now - beat < 3 * every:
            raise RunLockedError(_locked_message(self.output_dir, previous, now))

    @staticmethod
    def _updated_history(
        history: dict[str, Any] | None, previous: dict[str, Any] | None, start: RunStart, now: float
    ) -> dict[str, Any]:
        h = {"sessions": 0, "running_sec": 0.0, "failures": []}
        if isinstance(history, dict):
            kept = ("sessions", "running_sec", "failures", "slurm_sessions")
            h.update({k: history[k] for k in kept if k in history})
        if previous:
            end = max(
                float(previous.get("heartbeat_unix") or 0),
                float((previous.get("exit") or {}).get("unix") or 0),
            )
            h["running_sec"] = float(h["running_sec"]) + max(
                0.0, end - float(previous.get("started_unix") or end)
            )
        h["sessions"] = int(h["sessions"]) + 1
        if start.is_failure:
            failure = {
                "kind": "power_loss" if start.kind == RESUME_POWER_LOSS else "crash",
                "detected_unix": now,
            }
            failure.update({k: v for k, v in start.to_json_dict().items() if k != "kind"})
            if previous:
                failure["last_heartbeat_unix"] = previous.get("heartbeat_unix")
                failure["last_commit_step"] = previous.get("last_commit_step")
            h["failures"] = (list(h["failures"]) + [failure])[-MAX_FAILURES_KEPT:]
        h["last_start"] = {**start.to_json_dict(), "unix": now}
        return h

    @property
    def failures(self) -> int:
        return len(self.history.get("failures", []))

    @property
    def running_sec(self) -> float:
        """Training time on record, this session included."""
        ongoing = time.time() - float(self.session.get("started_unix", time.time())) if self.held else 0.0
        return float(self.history.get("running_sec", 0.0)) + ongoing

    def _write(self) -> None:
        fsio.atomic_write_json(
            run_record_path(self.output_dir),
            {"format": RUN_RECORD_FORMAT, "version": 1, "session": self.session, "history": self.history},
        )

    def heartbeat(self, step: int, *, force: bool = False) -> None:
        """Record progress; throttled to one write per ``heartbeat_every_sec`` unless ``force``."""
        if not self.held:
            return
        now = self.clock()
        if not force and self._last_beat is not None and now - self._last_beat < self.heartbeat_every_sec:
            return
        self._last_beat = now
        self.session["step"] = int(step)
        self.session["heartbeat_unix"] = time.time()
        try:
            self._write()
        except OSError as e:
            logger.warning("Could not update the run lease %s: %s", run_record_path(self.output_dir), e)

    def record_commit(self, step: int) -> None:
        """A checkpoint of ``step`` committed: from here on, a failure loses only the work after it."""
        if not self.held:
            return
        self.session["last_commit_step"] = int(step)
        self.session["last_commit_unix"] = time.time()
        self.heartbeat(step, force=True)

    def release(self, kind: str, *, step: int | None = None, detail: str = "") -> None:
        """Write the exit record and give the lease up. ``kind``: one of ``CLEAN_EXIT_KINDS`` or
        ``"exception"``."""
        if not self.held:
            return
        now = time.time()
        if step is not None:
            self.session["step"] = int(step)
        self.session["state"] = "exited"
        self.session["heartbeat_unix"] = now
        self.session["exit"] = {"kind": kind, "unix": now, "step": self.session.get("step"), "detail": detail}
        try:
            self._write()
        except OSError as e:
            logger.warning(
                "Could not write the clean-exit record %s: %s", run_record_path(self.output_dir), e
            )
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.release()
