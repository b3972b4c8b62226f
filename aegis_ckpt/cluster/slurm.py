"""Preemption notices under Slurm: after the emergency checkpoint, requeue the job and exit cleanly.

Slurm warns a job before it ends it: ``sbatch --signal=USR1@60`` before the time limit, a preemption's
``SIGTERM`` grace period, or an operator's ``scancel --signal=USR1``. The signal watcher treats such a notice like
any other stop (every rank finishes the step, the checkpoint is committed), and then ``Preemption.requeue_after``
asks Slurm to run the job again: ``scontrol requeue $SLURM_JOB_ID`` from rank 0, only when

* the job is requeueable (``Requeue=1``: ``sbatch --requeue`` or ``JobRequeue=1``) and a batch job, and
* Slurm is not already ending it on its own (``JobState=RUNNING``): after a plain ``scancel`` the state is
  ``COMPLETING``/``CANCELLED``, and requeueing would undo the cancel.

The requeued job starts again with ``SLURM_RESTART_COUNT`` one higher and resumes from the newest intact
checkpoint. The process then exits with ``EXIT_REQUEUED`` (0): Slurm records the job as requeued, not failed.
Slurm sends ``SIGTERM`` to every process of the job as it requeues it; that signal is ignored from then on (the
checkpoint is safe, the process is already leaving), as submitit does.

Outside Slurm (no ``SLURM_JOB_ID``) nothing here runs.
"""

from __future__ import annotations

import logging
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .. import distributed
from ..system.platform import signal_name
from ..system.slurmjob import SlurmJob, current_slurm_job

logger = logging.getLogger(__name__)

SLURM_DEFAULT_PREEMPT_SIGNALS = ("SIGUSR1", "SIGTERM")
"""Notices under Slurm when ``preempt_signals`` is not set: ``--signal=USR1@N`` and preemption's SIGTERM."""
SCONTROL_TIMEOUT_SEC = 30.0

Runner = Callable[..., subprocess.CompletedProcess]


def signal_number(name: str) -> int:
    """``"SIGUSR1"``, ``"USR1"`` or ``"10"`` -> 10; ValueError for a name this platform lacks."""
    text = str(name).strip().upper()
    if text.isdigit():
        return int(text)
    sig = getattr(signal, text if text.startswith("SIG") else "SIG" + text, None)
    if not isinstance(sig, int):
        raise ValueError(f"unknown signal {name!r}")
    return int(sig)


def preempt_signal_numbers(names: Iterable[str] | None, job: SlurmJob | None) -> frozenset[int]:
    """The notice signals in effect: the configured ones, else SIGUSR1 and SIGTERM under Slurm, else none."""
    if names is None:
        names = SLURM_DEFAULT_PREEMPT_SIGNALS if job is not None else ()
    return frozenset(signal_number(n) for n in names)


@dataclass(frozen=True)
class RequeueResult:
    requeued: bool
    reason: str
    """Why not (empty when requeued)."""


def read_job_fields(job_id: str, *, run: Runner = subprocess.run) -> dict[str, str]:
    """``scontrol show job -o JOB`` as a dict of its ``Key=Value`` fields."""
    proc = run(
        ["scontrol", "show", "job", "-o", job_id],
        capture_output=True,
        text=True,
        timeout=SCONTROL_TIMEOUT_SEC,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"scontrol show job {job_id} failed: {(proc.stderr or proc.stdout).strip()}")
    fields: dict[str, str] = {}
    for word in proc.stdout.split():
        key, sep, value = word.partition("=")
        if sep and key not in fields:
            fields[key] = value
    return fields


def why_not_requeueable(fields: dict[str, str]) -> str:
    """Empty when ``scontrol requeue`` should run for a job with these fields, else the reason it should not."""
    if fields.get("Requeue") != "1":
        return "the job is not requeueable (submit it with sbatch --requeue)"
    if fields.get("BatchFlag", "1") != "1":
        return "it is not a batch job (only sbatch jobs can be requeued)"
    state = fields.get("JobState", "?")
    if state != "RUNNING":
        return f"Slurm is already ending the job (JobState={state}: cancelled, timed out or preempted)"
    return ""


def requeue_job(job: SlurmJob, *, run: Runner = subprocess.run) -> RequeueResult:
    """Ask Slurm to run ``job`` again, if it can and should (see the module docstring)."""
    if shutil.which("scontrol") is None:
        return RequeueResult(False, "scontrol is not on PATH")
    try:
        reason = why_not_requeueable(read_job_fields(job.job_id, run=run))
        if reason:
            return RequeueResult(False, reason)
        proc = run(
            ["scontrol", "requeue", job.job_id], capture_output=True, text=True, timeout=SCONTROL_TIMEOUT_SEC
        )
    except (OSError, RuntimeError, subprocess.SubprocessError) as e:
        return RequeueResult(False, str(e))
    if proc.returncode != 0:
        return RequeueResult(False, f"scontrol requeue failed: {(proc.stderr or proc.stdout).strip()}")
    return RequeueResult(True, "")


def ignore_sigterm() -> None:
    """Slurm sends SIGTERM to the whole job as it requeues it: from now on the process is only leaving."""
    try:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    except (OSError, ValueError):  # not the main thread: the default action then ends an exiting process
        pass


class Preemption:
    """The notice signals of this run and what follows their checkpoint.

    Args:
        names: the configured ``preempt_signals`` (None: SIGUSR1 and SIGTERM under Slurm, none elsewhere).
        job: the Slurm job (default: from the environment).
        requeue: how to requeue (a seam for tests; the default runs ``scontrol``).
    """

    def __init__(
        self,
        names: Iterable[str] | None,
        *,
        job: SlurmJob | None = None,
        requeue: Callable[[SlurmJob], RequeueResult] = requeue_job,
    ):
        self.job = job if job is not None else current_slurm_job()
        self.signals = preempt_signal_numbers(names, self.job)
        self._requeue = requeue

    def is_notice(self, signum: int) -> bool:
        return int(signum) in self.signals

    def requeue_after(self, signum: int, *, step: int, committed: bool) -> bool:
        """Called on every rank once the emergency checkpoint of ``step`` is written. Under Slurm, after a
        notice, rank 0 requeues the job; True on every rank when it did (one collective, so all ranks exit
        the same way)."""
        if self.job is None or not self.is_notice(signum):
            return False
        requeued = False
        if distributed.rank() == 0:
            if not committed:
                logger.error(
                    "Slurm job %s not requeued: the checkpoint at step %d did not commit",
                    self.job.job_id,
                    step,
                )
            else:
                ignore_sigterm()  # before asking: the requeue's SIGTERM may arrive before scontrol returns
                result = self._requeue(self.job)
                requeued = result.requeued
                if requeued:
                    logger.warning(
                        "%s was a preemption notice: Slurm job %s requeued (restart %d follows) after the "
                        "checkpoint at step %d",
                        signal_name(signum),
                        self.job.job_id,
                        self.job.restart_count + 1,
                        step,
                    )
                else:
                    logger.warning("Slurm job %s not requeued: %s", self.job.job_id, result.reason)
        requeued = distributed.agree_any(requeued)
        if requeued:
            ignore_sigterm()
        return requeued
