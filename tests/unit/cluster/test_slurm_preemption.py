"""Preemption notices and requeue decisions, node-local agreement helpers: the pure parts, on real signals and
real folders (the real Slurm runs are in tests/cluster/)."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from aegis_ckpt.cli.status import collect_status, format_status
from aegis_ckpt.cluster.nodes import CommonCheckpointGuard, find_common_resume_checkpoint, newest_intact_step
from aegis_ckpt.cluster.slurm import (
    Preemption,
    RequeueResult,
    preempt_signal_numbers,
    read_job_fields,
    why_not_requeueable,
)
from aegis_ckpt.errors import ConfigError
from aegis_ckpt.options import EmergencyOptions
from aegis_ckpt.policy.retention import Retained, select_prunable
from aegis_ckpt.runstate.lease import RunLease
from aegis_ckpt.storage.commit import commit_checkpoint
from aegis_ckpt.system.signals import SignalWatcher
from aegis_ckpt.system.slurmjob import SlurmJob, current_slurm_job

JOB = SlurmJob(job_id="41", restart_count=0)
RUNNING = {"JobState": "RUNNING", "Requeue": "1", "BatchFlag": "1"}


@pytest.fixture
def restore_signals():
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)}
    yield
    for s, h in saved.items():
        signal.signal(s, h)


def test_slurm_job_from_the_environment():
    assert current_slurm_job({}) is None
    assert current_slurm_job({"SLURM_JOB_ID": "7", "SLURM_RESTART_COUNT": "2"}) == SlurmJob("7", 2)
    array = {"SLURM_JOB_ID": "9", "SLURM_ARRAY_JOB_ID": "8", "SLURM_ARRAY_TASK_ID": "3"}
    assert current_slurm_job(array) == SlurmJob("8_3", 0)


def test_notice_signals_default_to_usr1_and_term_under_slurm_only():
    assert preempt_signal_numbers(None, JOB) == {signal.SIGUSR1, signal.SIGTERM}
    assert preempt_signal_numbers(None, None) == frozenset()
    assert preempt_signal_numbers(["SIGUSR2"], JOB) == {signal.SIGUSR2}
    assert preempt_signal_numbers([], JOB) == frozenset()


def test_preempt_signals_option_is_validated():
    assert EmergencyOptions(preempt_signals=["usr1", "SIGTERM"]).preempt_signals == ("SIGUSR1", "SIGTERM")
    assert EmergencyOptions().preempt_signals is None
    for bad in (["SIGNOPE"], ["SIGKILL"], "SIGUSR1", ["SIG_IGN"]):
        with pytest.raises(ConfigError, match="preempt_signals"):
            EmergencyOptions(preempt_signals=bad)


@pytest.mark.parametrize(
    "fields, reason",
    [
        (RUNNING, ""),
        ({**RUNNING, "Requeue": "0"}, "not requeueable"),
        ({**RUNNING, "BatchFlag": "0"}, "not a batch job"),
        ({**RUNNING, "JobState": "COMPLETING"}, "already ending the job (JobState=COMPLETING"),
        ({**RUNNING, "JobState": "CANCELLED"}, "already ending the job (JobState=CANCELLED"),
    ],
)
def test_requeue_only_a_running_requeueable_batch_job(fields, reason):
    got = why_not_requeueable(fields)
    assert (got == "") if not reason else (reason in got)


def test_scontrol_show_job_fields_are_parsed():
    out = "JobId=41 JobName=aegis-train JobState=RUNNING Reason=None Requeue=1 Restarts=0 BatchFlag=1\n"

    def run(cmd, **kwargs):
        assert cmd == ["scontrol", "show", "job", "-o", "41"]
        return subprocess.CompletedProcess(cmd, 0, stdout=out, stderr="")

    fields = read_job_fields("41", run=run)
    assert fields["JobState"] == "RUNNING" and fields["Requeue"] == "1" and fields["Restarts"] == "0"


class FakeRequeue:
    def __init__(self, result: bool = True):
        self.calls: list[str] = []
        self.result = result

    def __call__(self, job: SlurmJob) -> RequeueResult:
        self.calls.append(job.job_id)
        return RequeueResult(self.result, "" if self.result else "refused")


def test_notice_under_slurm_requeues_once_and_then_ignores_sigterm(restore_signals):
    requeue = FakeRequeue()
    preemption = Preemption(None, job=JOB, requeue=requeue)
    assert preemption.requeue_after(signal.SIGUSR1, step=12, committed=True)
    assert requeue.calls == ["41"]
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN  # Slurm's SIGTERM of the requeue


@pytest.mark.parametrize(
    "job, signum, committed",
    [
        (None, signal.SIGUSR1, True),  # outside Slurm nothing changes
        (JOB, signal.SIGINT, True),  # not a notice: Ctrl+C only stops
        (JOB, signal.SIGUSR1, False),  # never requeue without a committed checkpoint
    ],
)
def test_no_requeue_outside_slurm_for_other_signals_or_without_a_commit(
    job, signum, committed, restore_signals
):
    requeue = FakeRequeue()
    preemption = Preemption(None, requeue=requeue, job=job)
    if job is None:
        preemption.job = None
        preemption.signals = preempt_signal_numbers(None, None)
    assert not preemption.requeue_after(signum, step=12, committed=committed)
    assert requeue.calls == []


def test_refused_requeue_is_not_reported_as_requeued(restore_signals):
    assert not Preemption(None, job=JOB, requeue=FakeRequeue(result=False)).requeue_after(
        signal.SIGTERM, step=3, committed=True
    )


def test_a_repeated_notice_never_ends_the_process_early(restore_signals):
    codes: list[int] = []
    watcher = SignalWatcher(
        signals=[signal.SIGINT], grace_period_sec=None, exit_now=codes.append, notices=[signal.SIGUSR1]
    )
    assert signal.SIGUSR1 in watcher.signals
    watcher.install()
    os.kill(os.getpid(), signal.SIGUSR1)
    os.kill(os.getpid(), signal.SIGUSR1)  # scancel --full: directly and through the batch shell
    assert watcher.triggered == signal.SIGUSR1 and codes == []
    os.kill(os.getpid(), signal.SIGINT)  # a person who insists still gets out at once
    assert codes == [130]
    watcher.uninstall()


def test_status_shows_the_slurm_job_and_restart_of_each_session(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "41")
    for restart in ("0", "1"):
        monkeypatch.setenv("SLURM_RESTART_COUNT", restart)
        lease = RunLease(tmp_path)
        lease.acquire()
        lease.release("signal", step=5)
    assert "Slurm:        job 41 (restarts 0, 1)" in format_status(collect_status(tmp_path))


def _committed(root: Path, step: int) -> Path:
    folder = root / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(os.urandom(64))
    commit_checkpoint(folder, step=step, reason="interval")
    return folder


def test_newest_intact_step_skips_damaged_and_newer_ones(tmp_path):
    for step in (10, 20, 30):
        _committed(tmp_path, step)
    (tmp_path / "checkpoint-20" / "model.safetensors").write_bytes(b"damaged")
    assert newest_intact_step(tmp_path, at_most=30) == 30
    assert newest_intact_step(tmp_path, at_most=29) == 10
    assert newest_intact_step(tmp_path, at_most=9) == 0
    assert find_common_resume_checkpoint(tmp_path) == str(tmp_path / "checkpoint-30")  # one process


def test_retention_keeps_the_last_step_committed_on_every_node(tmp_path):
    guard = CommonCheckpointGuard(tmp_path, active=True)
    guard.start(10)
    guard.confirm(20, committed_here=True)
    guard.confirm(30, committed_here=False)  # one node failed to commit step 30
    assert guard.protected() == [tmp_path / "checkpoint-20"]
    records = [Retained(tmp_path / f"checkpoint-{s}", s, float(s), False) for s in (10, 20, 30, 40, 50)]
    pruned = {r.step for r in select_prunable(records, 2, protect=guard.protected())}
    assert pruned == {10, 30}
    assert CommonCheckpointGuard(tmp_path, active=False).protected() == []


def test_the_sbatch_template_is_shipped_with_the_package_and_parses():
    import aegis_ckpt.cluster

    shipped = Path(aegis_ckpt.cluster.__file__).with_name("train.sbatch")
    launcher = Path(__file__).resolve().parents[3] / "launch" / "slurm" / "train.sbatch"
    assert launcher.resolve() == shipped.resolve()
    assert subprocess.run(["bash", "-n", str(shipped)]).returncode == 0
    text = shipped.read_text()
    assert "#SBATCH --requeue" in text and "#SBATCH --signal=B:USR1@" in text
