"""Preemption and requeue on a real Slurm (single node), through the shipped ``launch/slurm/train.sbatch``.

Invariants: a notice (SIGUSR1 to the batch shell, to every process of the job, or to one torchrun rank only)
commits a checkpoint at the current step, requeues the job, and the rerun (``SLURM_RESTART_COUNT=1``) resumes
from exactly that step and ends with weights bit-identical to an uninterrupted run. A notice from the time limit
(``--signal=B:USR1@N``) does the same. A plain ``scancel`` saves a checkpoint but is not undone by a requeue.
"""

from __future__ import annotations

import os
import re
import signal
import socket
from pathlib import Path

import pytest
from clusterlib import (
    assert_same_weights,
    committed_steps,
    final_weights,
    run_cli,
    train_args,
    wait_until,
)

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

STEPS = 100
COMMITTED_AT = re.compile(r"Committed \S+/checkpoint-(\d+) \(step \d+, [^)]*signal:SIGUSR1")


def log_of(workdir: Path, job_id: str, restart: int) -> str:
    """The training log of one restart: in logs/ of the run's output dir (``--set training.output_dir``)."""
    path = workdir / "run" / "logs" / f"aegis-train-{job_id}-restart{restart}.log"
    return path.read_text(errors="replace") if path.exists() else ""


def notice_step(log: str) -> int:
    found = COMMITTED_AT.findall(log)
    assert found, f"no checkpoint committed for the notice:\n{log[-3000:]}"
    return int(found[-1])


def assert_requeued_and_resumed(
    workdir: Path, job_id: str, fields: dict[str, str], steps: int = STEPS
) -> int:
    """Restart 0 committed at the notice and requeued; restart 1 resumed exactly there and finished."""
    first, second = log_of(workdir, job_id, 0), log_of(workdir, job_id, 1)
    step = notice_step(first)
    assert f"Slurm job {job_id} requeued (restart 1 follows) after the checkpoint at step {step}" in first
    assert f"emergency checkpoint {workdir}/run/checkpoint-{step} committed at step {step}" in first
    assert "exiting with code 0" in first
    assert f"Continuing from {workdir}/run/checkpoint-{step}" in second, second[-3000:]
    assert f"training finished at step {steps}" in second
    assert fields["JobState"] == "COMPLETED" and fields["Restarts"] == "1", fields
    assert not log_of(workdir, job_id, 2)
    # The batch script's own lines are in the training log too, and Slurm's output file (which sbatch opens in
    # the submit dir, before any config is read) is linked beside it.
    assert f"aegis-ckpt: job {job_id} restart 1 on " in second
    assert "aegis-ckpt: training exited with code " in first
    slurm_out = workdir / f"slurm-aegis-train-{job_id}.out"
    link = workdir / "run" / "logs" / slurm_out.name
    assert link.is_symlink() and link.resolve() == slurm_out.resolve(), sorted(link.parent.iterdir())
    return step


def wait_first_commit(slurm, job_id: str, out: Path) -> None:
    wait_until(lambda: committed_steps(out), 120, f"a committed checkpoint of job {job_id}")


def test_notices_to_the_batch_shell_and_to_the_whole_job_requeue_and_resume_to_identical_weights(
    slurm, reference_runs, tmp_path
):
    """Two jobs at once (two cores, two trainings): ``scancel --signal=USR1 --batch`` reaches the batch shell only,
    which forwards it; ``--full`` reaches every process, so training gets the notice twice. Longer runs than the
    other tests: on an idle machine 100 steps end within two seconds, before a notice sent after the first commit
    arrives."""
    steps = 4 * STEPS
    reference_runs.start(steps)
    jobs = {}
    for reach in ("--batch", "--full"):
        workdir = tmp_path / reach.strip("-")
        workdir.mkdir()
        jobs[reach] = (workdir, slurm.submit(workdir, *train_args(workdir / "run", steps)))
    pending = dict(jobs)

    def notice_after_first_commit() -> bool:
        for reach, (workdir, job) in list(pending.items()):
            if committed_steps(workdir / "run"):
                slurm.run("scancel", "--signal=USR1", reach, job)
                del pending[reach]
        return not pending

    wait_until(notice_after_first_commit, 180, "a committed checkpoint in each job")
    for workdir, job in jobs.values():
        fields = slurm.wait_done(job)
        assert_requeued_and_resumed(workdir, job, fields, steps)
        assert_same_weights(final_weights(workdir / "run"), reference_runs.weights(steps))
        status = run_cli("status", str(workdir / "run"))
        assert f"Slurm:        job {job} (restarts 0, 1)" in status.stdout, status.stdout


def worker_pid(job_id: str, rank: int) -> int | None:
    """The training process of ``rank`` in the job (torchrun sets RANK in its workers' environment)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            env = dict(
                item.split("=", 1) for item in (proc / "environ").read_text().split("\0") if "=" in item
            )
            cmdline = (proc / "cmdline").read_text()
        except OSError:
            continue
        if env.get("SLURM_JOB_ID") == job_id and env.get("RANK") == str(rank) and "aegis_ckpt" in cmdline:
            if "torch.distributed.run" not in cmdline:
                return int(proc.name)
    return None


def test_torchrun_in_the_job_notice_to_one_rank_requeues_and_resumes(slurm, reference_runs, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    reference_runs.start(STEPS, nproc=2)
    out = tmp_path / "run"
    job = slurm.submit(
        tmp_path,
        *train_args(out, STEPS),
        env={"AEGIS_NPROC_PER_NODE": "2", "AEGIS_RDZV_PORT": str(port)},
    )
    wait_first_commit(slurm, job, out)
    pid = wait_until(lambda: worker_pid(job, 1), 30, "rank 1's process")
    os.kill(pid, signal.SIGUSR1)  # the notice reaches rank 1 only; rank 0 must requeue
    fields = slurm.wait_done(job)
    assert_requeued_and_resumed(tmp_path, job, fields)
    first = log_of(tmp_path, job, 0)
    # Only rank 1 received the signal; rank 0 learned of it through the agreement.
    assert first.count("SIGUSR1 received") == 1, first[-3000:]
    assert_same_weights(final_weights(out), reference_runs.weights(STEPS, nproc=2))


def test_time_limit_notice_requeues_then_plain_scancel_stops_without_requeue(slurm, tmp_path):
    """``--signal=B:USR1@100`` with a two-minute limit: the notice comes within slurmctld's ~30 s sweep, 20-50 s
    into the job. The rerun is then cancelled with a plain ``scancel``: an emergency checkpoint, no requeue."""
    out = tmp_path / "run"
    job = slurm.submit(
        tmp_path, *train_args(out, 100_000), sbatch_options=["--time=2", "--signal=B:USR1@100"]
    )

    def resumed() -> bool:
        fields = slurm.job(job)
        if fields.get("JobState") == "PENDING" and fields.get("Restarts") != "0":
            # The rerun has the same limit and would get its own notice: give it ten minutes instead, so the
            # plain scancel below is what stops it.
            slurm.run("scontrol", "update", f"JobId={job}", "TimeLimit=10", check=False)
            slurm.start_if_waiting(job)
        return "Continuing from" in log_of(tmp_path, job, 1)

    wait_until(resumed, 180, "the requeued run to resume", 0.5)
    step = notice_step(log_of(tmp_path, job, 0))
    assert f"Slurm job {job} requeued (restart 1 follows) after the checkpoint at step {step}" in log_of(
        tmp_path, job, 0
    )
    assert f"Continuing from {out}/checkpoint-{step}" in log_of(tmp_path, job, 1)
    wait_until(lambda: max(committed_steps(out)) > step, 60, "a save after the resume")

    slurm.run("scancel", job)
    fields = slurm.wait_done(job)
    second = log_of(tmp_path, job, 1)
    stopped = re.findall(
        r"Stopped by SIGTERM: emergency checkpoint \S+/checkpoint-(\d+) committed at step", second
    )
    assert stopped, second[-3000:]
    assert int(stopped[0]) > step
    assert f"Slurm job {job} not requeued: Slurm is already ending the job" in second
    assert "exiting with code 143" in second
    assert fields["JobState"] == "CANCELLED" and fields["Restarts"] == "1", fields
    assert not log_of(tmp_path, job, 2)
