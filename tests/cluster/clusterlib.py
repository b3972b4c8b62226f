"""Helpers of the cluster tests: the shrunk tiny config, weight comparison, the test Slurm cluster's commands and
the shared uninterrupted reference runs (imported as ``clusterlib``; the fixtures are in ``conftest.py``)."""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from testenv import REPO_ROOT, subprocess_env

CLUSTER_SCRIPT = Path(__file__).with_name("slurm_cluster.sh")
SBATCH = REPO_ROOT / "launch" / "slurm" / "train.sbatch"
TINY = REPO_ROOT / "configs" / "tiny.yaml"
SMALL = [
    "--set", "model.config={n_layer: 2, n_head: 2, n_embd: 32}",
    "--set", "tokenizer.vocab_size=300",
    "--set", "data.block_size=32",
    "--set", "data.max_samples=400",
    "--set", "training.per_device_train_batch_size=4",
    "--set", "training.logging_steps=5",
    "--set", "training.warmup_steps=2",
    "--set", "checkpoint.save_interval_sec=1",
]  # fmt: skip
"""The shipped tiny config shrunk to a few seconds of training (as in the train-command tests)."""


def train_args(output_dir: Path, max_steps: int, *extra: str) -> list[str]:
    return [str(TINY), *SMALL, "--set", f"training.max_steps={max_steps}", "--set", f"training.output_dir={output_dir}", *extra]  # fmt: skip


def final_weights(output_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(output_dir / "final_model" / "model.safetensors"))


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), f"tensor {name} differs"


def committed_steps(output_dir: Path) -> list[int]:
    return sorted(
        int(p.name.split("-")[1])
        for p in output_dir.glob("checkpoint-*")
        if (p / "aegis_manifest.json").is_file()
    )


def wait_until(predicate, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


@dataclass
class SlurmCluster:
    conf: str
    state_dir: Path

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return subprocess_env({"SLURM_CONF": self.conf, "AEGIS_PYTHON": sys.executable, **(extra or {})})

    def run(self, *cmd: str, check: bool = True) -> str:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=self.env(), timeout=60)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} failed: {proc.stderr}")
        return proc.stdout

    def submit(self, workdir: Path, *args: str, sbatch_options=(), env: dict[str, str] | None = None) -> str:
        """``sbatch`` the shipped template in ``workdir`` (Slurm's output file goes there, the training logs to
        logs/ of the run's output dir); returns the job id."""
        proc = subprocess.run(
            ["sbatch", "--parsable", f"--chdir={workdir}", *sbatch_options, str(SBATCH), *args],
            capture_output=True, text=True, env=self.env(env), timeout=60,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip().split(";")[0]

    def job(self, job_id: str) -> dict[str, str]:
        fields: dict[str, str] = {}
        for word in self.run("scontrol", "show", "job", "-o", job_id).split():
            key, _, value = word.partition("=")
            fields.setdefault(key, value)
        return fields

    def start_if_waiting(self, job_id: str) -> dict[str, str]:
        """A requeued job waits for its BeginTime (cred_expire): start it at once, so a requeue costs no idle
        seconds."""
        fields = self.job(job_id)
        if fields.get("JobState") == "PENDING" and fields.get("Reason") == "BeginTime":
            self.run("scontrol", "update", f"JobId={job_id}", "StartTime=now", check=False)
        return fields

    def wait_done(self, job_id: str, timeout: float = 180) -> dict[str, str]:
        """Wait until the job has ended for good (through any requeues)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            fields = self.start_if_waiting(job_id)
            if fields.get("JobState") in (
                "COMPLETED",
                "FAILED",
                "CANCELLED",
                "TIMEOUT",
                "NODE_FAIL",
                "OUT_OF_MEMORY",
            ):
                return fields
            time.sleep(0.2)
        self.run("scancel", "--full", job_id, check=False)
        raise AssertionError(f"job {job_id} did not end within {timeout:.0f} s: {self.job(job_id)}")


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "aegis_ckpt", *args], capture_output=True, text=True, env=subprocess_env(),
        timeout=timeout,
    )  # fmt: skip


def torchrun_standalone_cmd(output_dir: Path, max_steps: int, nproc: int = 2) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", "-m", "aegis_ckpt", "train", *train_args(output_dir, max_steps)]  # fmt: skip


class ReferenceRuns:
    """Uninterrupted runs, started once per session in the background (they overlap with the Slurm jobs: two
    cores do two runs at once) and shared by every test that compares against them."""

    def __init__(self, root: Path):
        self.root = root
        self._runs: dict[tuple[int, int], tuple[Path, subprocess.Popen]] = {}
        self._weights: dict[tuple[int, int], dict[str, torch.Tensor]] = {}

    def start(self, max_steps: int, nproc: int = 1) -> None:
        key = (max_steps, nproc)
        if key in self._runs:
            return
        out = self.root / f"ref-{max_steps}-{nproc}"
        if nproc == 1:
            cmd = [sys.executable, "-m", "aegis_ckpt", "train", *train_args(out, max_steps)]
        else:
            cmd = torchrun_standalone_cmd(out, max_steps, nproc)
        proc = subprocess.Popen(
            cmd, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self._runs[key] = (out, proc)

    def weights(self, max_steps: int, nproc: int = 1) -> dict[str, torch.Tensor]:
        key = (max_steps, nproc)
        if key not in self._weights:
            self.start(max_steps, nproc)
            out, proc = self._runs[key]
            output, _ = proc.communicate(timeout=600)
            assert proc.returncode == 0, output[-3000:]
            self._weights[key] = final_weights(out)
        return self._weights[key]

    def stop(self) -> None:
        for _, proc in self._runs.values():
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
