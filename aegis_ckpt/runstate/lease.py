"""Run state kept in ``<output_dir>/.aegis/``: completion marker, supervisor heartbeat, run lease.

* ``completed.json``: a finished run leaves it; ``aegis-ckpt train`` (and autostart after a reboot) reads it and
  does not train again.
* ``AEGIS_HEARTBEAT_FILE``: the supervisor's liveness file (see ``write_heartbeat``).
* ``run.lock`` + ``run.json``: the run lease. One process at a time holds ``run.lock`` (an OS file lock, released
  by the OS when the process dies, so a stale lease is taken over without guessing). ``run.json`` records who
  holds it (pid, host, boot id), a throttled heartbeat with the step and the last committed checkpoint, and, when
  the process ends normally, a clean-exit record. The next process reads it before writing its own session and
  tells apart a fresh start, a resume after a clean stop, after a crash, after a power loss or reboot (the boot
  id changed; the work between the last commit and the last heartbeat is reported as lost) and an already
  finished run. See ``docs/run-state.md``.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from ..errors import RunLockedError
from ..storage.commit import atomic_write_json
from ..storage.store import AEGIS_DIR

logger = logging.getLogger(__name__)

COMPLETED_NAME = "completed.json"


def completion_path(output_dir: str | os.PathLike) -> Path:
    return Path(output_dir) / AEGIS_DIR / COMPLETED_NAME


def mark_completed(output_dir: str | os.PathLike, *, step: int, checkpoint: str | None) -> None:
    """Record durably that training reached its last step and its final checkpoint is committed."""
    path = completion_path(output_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(
        path,
        {
            "step": step,
            "checkpoint": checkpoint,
            "finished_unix": time.time(),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
    )


def read_completion(output_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The completion record, or None when the run has not finished (or the record is unreadable)."""
    try:
        with open(completion_path(output_dir), encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


# ---- heartbeat for a supervisor ---------------------------------------------------------------------------------
HEARTBEAT_ENV = "AEGIS_HEARTBEAT_FILE"
"""Set by ``aegis-ckpt run`` for its child: the path of a file that the training process rewrites while it makes
progress. A heartbeat older than the supervisor's hang timeout means the run is stuck."""


def heartbeat_path_from_env() -> Path | None:
    value = os.environ.get(HEARTBEAT_ENV)
    return Path(value) if value else None


def write_heartbeat(path: Path, *, step: int, phase: str) -> None:
    """Rewrite the heartbeat file: ``{"unix": ..., "pid": ..., "step": ..., "phase": ...}``. Not fsynced: it
    only has to be visible to a supervisor on the same machine, and a lost heartbeat costs nothing."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps({"unix": time.time(), "pid": os.getpid(), "step": step, "phase": phase}))
    os.replace(tmp, path)


# ---- the run lease ------------------------------------------------------------------------------------------------
RUN_RECORD_NAME = "run.json"
RUN_LOCK_NAME = "run.lock"
RUN_RECORD_FORMAT = "aegis-ckpt-run"
LOCK_WAIT_SEC = 2.0
"""How long ``acquire`` waits for the lock: long enough to ride out a probe by another tool, short enough to
refuse a second trainer at once."""
MAX_FAILURES_KEPT = 100
_BOOT_ID_FILE = "/proc/sys/kernel/random/boot_id"
_BOOT_TIME_PREFIX = "boottime:"
_BOOT_TIME_SLACK_SEC = 5

FRESH = "fresh"
RESUME_CLEAN = "resume_after_clean_stop"
RESUME_CRASH = "resume_after_crash"
RESUME_POWER_LOSS = "resume_after_power_loss"
RESUME_UNRECORDED = "resume_without_run_record"
FINISHED = "already_finished"
START_KINDS = (FRESH, RESUME_CLEAN, RESUME_CRASH, RESUME_POWER_LOSS, RESUME_UNRECORDED, FINISHED)

CLEAN_EXIT_KINDS = ("closed", "finished", "signal", "trainer_end", "exited_without_close")
"""Exit kinds recorded by a process that ended on purpose. ``exception`` is recorded too, but counts as a crash."""


def current_boot_id() -> str:
    """An id that changes on every boot: Linux ``boot_id``, elsewhere the boot time from psutil."""
    try:
        value = Path(_BOOT_ID_FILE).read_text(encoding="ascii").strip()
        if value:
            return value
    except OSError:
        pass
    import psutil

    return f"{_BOOT_TIME_PREFIX}{int(round(psutil.boot_time()))}"


def same_boot(a: str | None, b: str | None) -> bool:
    if not a or not b:
        return False
    if a.startswith(_BOOT_TIME_PREFIX) and b.startswith(_BOOT_TIME_PREFIX):
        # Boot time derived from uptime can wobble by a second; a reboot moves it by far more.
        try:
            return (
                abs(int(a[len(_BOOT_TIME_PREFIX) :]) - int(b[len(_BOOT_TIME_PREFIX) :]))
                <= _BOOT_TIME_SLACK_SEC
            )
        except ValueError:
            return a == b
    return a == b


def _process_create_time(pid: int) -> float | None:
    try:
        import psutil

        return psutil.Process(pid).create_time()
    except Exception:  # no such process, access denied, psutil missing: unknown
        return None


def session_is_alive(session: dict[str, Any]) -> bool:
    """Read-only liveness test of a recorded session (for ``aegis-ckpt status``): same host, same boot, and a
    process with that pid and start time still exists. No lock is touched."""
    if session.get("state") != "running":
        return False
    if session.get("host") != socket.gethostname() or not same_boot(
        session.get("boot_id"), current_boot_id()
    ):
        return False
    created = _process_create_time(int(session.get("pid", -1)))
    recorded = session.get("pid_create_time")
    return created is not None and (recorded is None or abs(created - float(recorded)) < 2.0)


def run_record_path(output_dir: str | os.PathLike) -> Path:
    return Path(output_dir) / AEGIS_DIR / RUN_RECORD_NAME


def read_run_record(output_dir: str | os.PathLike) -> dict[str, Any] | None:
    """``run.json``, or None when there is none (or it is unreadable: it is advisory, checkpoints are not)."""
    try:
        with open(run_record_path(output_dir), encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("format") == RUN_RECORD_FORMAT else None


@dataclass
class RunStart:
    """How the previous process on this output directory ended, as seen by the one starting now."""

    kind: str
    message: str
    previous: dict[str, Any] | None = None
    lost_sec: float | None = None
    """Training time after the last committed checkpoint that the failure threw away (from the last heartbeat;
    the time between that heartbeat and the failure itself is unknown and comes on top)."""
    lost_steps: int | None = None
    downtime_sec: float | None = None
    """From the previous process's last sign of life until now."""

    @property
    def is_failure(self) -> bool:
        return self.kind in (RESUME_CRASH, RESUME_POWER_LOSS)

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "message": self.message,
            "lost_sec": self.lost_sec,
            "lost_steps": self.lost_steps,
            "downtime_sec": self.downtime_sec,
        }


def _fmt_sec(sec: float | None) -> str:
    if sec is None:
        return "unknown"
    sec = max(0.0, sec)
    if sec < 120:
        return f"{sec:.0f} s"
    if sec < 7200:
        return f"{sec / 60:.1f} min"
    return f"{sec / 3600:.1f} h"


def _fmt_unix(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "?"


def classify_start(
    previous: dict[str, Any] | None,
    *,
    completion: dict[str, Any] | None,
    boot_id: str,
    has_checkpoints: bool,
    now_unix: float,
    pid: int | None = None,
) -> RunStart:
    """Decide how the previous session ended (pure: every input is passed in)."""
    if completion is not None:
        return RunStart(
            FINISHED,
            f"this run already finished at step {completion.get('step')} ({completion.get('finished_at', '?')}); "
            "nothing to do (delete .aegis/completed.json to train again)",
            previous,
        )
    if previous is None:
        if has_checkpoints:
            return RunStart(
                RESUME_UNRECORDED, "checkpoints found but no run record (written by an older version?)"
            )
        return RunStart(FRESH, "fresh start: no previous run in this directory")
    last_alive = max(
        float(previous.get("heartbeat_unix") or 0), float((previous.get("exit") or {}).get("unix") or 0)
    )
    downtime = now_unix - last_alive if last_alive else None
    safe_since = max(float(previous.get("last_commit_unix") or 0), float(previous.get("started_unix") or 0))
    lost_sec = max(0.0, last_alive - safe_since) if last_alive and safe_since else None
    commit_step = previous.get("last_commit_step")
    if commit_step is None:
        commit_step = previous.get("start_step")  # nothing committed in that session: it began from there
    lost_steps = (
        max(0, int(previous["step"]) - int(commit_step))
        if previous.get("step") is not None and commit_step is not None
        else None
    )
    exit_record = previous.get("exit")
    where = f"pid {previous.get('pid')} on {previous.get('host')}"
    if previous.get("state") == "exited" and exit_record:
        kind = exit_record.get("kind")
        if kind == "exception":
            return RunStart(
                RESUME_CRASH,
                f"the previous process ({where}) stopped on an unhandled exception "
                f"({exit_record.get('detail') or 'unknown'}) at step {exit_record.get('step')}",
                previous,
                lost_sec,
                lost_steps,
                downtime,
            )
        return RunStart(
            RESUME_CLEAN,
            f"resuming after a clean stop ({kind}) at step {exit_record.get('step')}, {_fmt_unix(exit_record.get('unix'))}",
            previous,
            0.0,
            0,
            downtime,
        )
    if pid is not None and previous.get("pid") == pid and same_boot(previous.get("boot_id"), boot_id):
        return RunStart(
            RESUME_CLEAN, "a previous session of this same process did not end; continuing", previous, 0.0, 0
        )
    beat_every = float(previous.get("heartbeat_every_sec") or 0)
    span = (
        f"{_fmt_sec(lost_sec)} to {_fmt_sec(lost_sec + beat_every)}"
        if lost_sec is not None and beat_every
        else f"about {_fmt_sec(lost_sec)}"
    )
    lost = (
        f"{span} of training (at least {lost_steps if lost_steps is not None else '?'} steps) after the last "
        f"committed checkpoint (step {commit_step}) was lost"
    )
    if not same_boot(previous.get("boot_id"), boot_id):
        return RunStart(
            RESUME_POWER_LOSS,
            f"POWER LOSS OR REBOOT detected: the previous process ({where}) was still running when the machine went "
            f"down (last heartbeat {_fmt_unix(last_alive)}, step {previous.get('step')}); {lost}; down for "
            f"{_fmt_sec(downtime)}",
            previous,
            lost_sec,
            lost_steps,
            downtime,
        )
    return RunStart(
        RESUME_CRASH,
        f"CRASH detected: the previous process ({where}) ended without a clean exit record (killed, out of memory "
        f"or a hard crash; last heartbeat {_fmt_unix(last_alive)}, step {previous.get('step')}); {lost}",
        previous,
        lost_sec,
        lost_steps,
        downtime,
    )


def _locked_message(output_dir: Path, session: dict[str, Any] | None, now_unix: float) -> str:
    who = "another process"
    if session:
        beat = session.get("heartbeat_unix")
        who = (
            f"pid {session.get('pid')} on {session.get('host')} (started {_fmt_unix(session.get('started_unix'))}, "
            f"step {session.get('step')}, last heartbeat {_fmt_sec(now_unix - beat) if beat else '?'} ago)"
        )
    return (
        f"{output_dir} is in use by another training run: {who}. Two processes saving into one directory would "
        "prune each other's checkpoints, so this one stops here. Wait for it to finish, stop it, or choose another "
        "output directory."
    )


def _lock(output_dir: Path) -> FileLock:
    # One lock object per path in this process (is_singleton): a second session in the same interpreter (a new
    # Trainer in a notebook) re-enters instead of locking itself out; other processes are refused.
    return FileLock(str(output_dir / AEGIS_DIR / RUN_LOCK_NAME), is_singleton=True, thread_local=False)


def ensure_not_locked(output_dir: str | os.PathLike) -> None:
    """Raise ``RunLockedError`` when another live process holds the run lease of ``output_dir``. Used before
    anything that moves folders (the resume scan), so a refused second process changes nothing on disk."""
    output_dir = Path(output_dir)
    if not (output_dir / AEGIS_DIR / RUN_LOCK_NAME).exists():
        return
    lock = _lock(output_dir)
    try:
        lock.acquire(timeout=LOCK_WAIT_SEC)
    except Timeout:
        record = read_run_record(output_dir)
        raise RunLockedError(
            _locked_message(output_dir, (record or {}).get("session"), time.time())
        ) from None
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
        (self.output_dir / AEGIS_DIR).mkdir(parents=True, exist_ok=True)
        lock = _lock(self.output_dir)
        now = time.time()
        try:
            lock.acquire(timeout=LOCK_WAIT_SEC)
        except Timeout:
            record = read_run_record(self.output_dir)
            raise RunLockedError(
                _locked_message(self.output_dir, (record or {}).get("session"), now)
            ) from None
        try:
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
                "pid_create_time": _process_create_time(os.getpid()),
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
            h.update({k: history[k] for k in ("sessions", "running_sec", "failures") if k in history})
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
        atomic_write_json(
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


class SupervisorHeartbeat:
    """Writes the supervisor's heartbeat file (``AEGIS_HEARTBEAT_FILE``) at most every ``every_sec`` seconds, or
    at once when forced (train begin, around saves, train end). Without a supervisor it does nothing."""

    def __init__(self, clock, every_sec: float = 5.0, path: Path | None = None):
        self.path = path if path is not None else heartbeat_path_from_env()
        self.clock = clock
        self.every_sec = every_sec
        self._last: float | None = None

    def beat(self, step: int, phase: str, *, force: bool = False) -> None:
        if self.path is None:
            return
        now = self.clock()
        if not force and self._last is not None and now - self._last < self.every_sec:
            return
        self._last = now
        try:
            write_heartbeat(self.path, step=step, phase=phase)
        except OSError as e:
            logger.debug("heartbeat not written: %s", e)
