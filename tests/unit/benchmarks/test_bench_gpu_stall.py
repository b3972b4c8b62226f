"""``benchmarks/bench_gpu_stall.py`` runs where it is meant to be run only when a GPU is lent: here it must say in
one line that there is no CUDA device and exit 0, and its measurement and table must work (with the model on
the CPU), so the script is ready when a GPU is there."""

from __future__ import annotations

import subprocess
import sys

import pytest
from testenv import REPO_ROOT, subprocess_env

SCRIPT = REPO_ROOT / "benchmarks" / "bench_gpu_stall.py"


def _run(*args: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        env=subprocess_env({"CUDA_VISIBLE_DEVICES": ""}),  # no GPU, also on a machine that has one
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_without_cuda_it_prints_one_line_and_exits_0():
    res = _run("--sizes", "125M", "350M", "--repeats", "1", timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("no CUDA device: "), res.stdout
    assert "Traceback" not in res.stderr


@pytest.mark.slow
def test_the_measurement_runs_with_the_model_on_the_cpu():
    res = _run("--device", "cpu", "--sizes", "10M", "--repeats", "1", timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = [line for line in res.stdout.splitlines() if line.startswith("| 10M")]
    assert len(rows) == 1, res.stdout
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert cells[2].endswith(" ms") and cells[3].endswith(" ms/GB"), cells
    assert cells[-1] == "yes", "the snapshot taken with updates still queued equals the live state"
