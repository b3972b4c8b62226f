"""A custom DDP loop on the seed API under ``accelerate launch`` with 2 CPU processes (gloo).

accelerate's ``MULTI_CPU`` type starts several processes only through MPI, so the config uses accelerate's
torchrun-based launcher (as ``test_accelerate_launch.py`` does); the script initializes gloo itself.

Invariants: SIGTERM to the launcher (``kill``, a service stop) reaches both ranks, which stop at the same step,
commit one checkpoint holding both ranks' files and exit with 128 + 15; the relaunch resumes both ranks from it
and finishes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from loopddplib import SCRIPT_ARGS, STEPS, assert_collective_checkpoint, events, finish, steps_done, wait_for
from testenv import SCRIPTS_DIR, subprocess_env

from aegis_ckpt.storage.commit import read_manifest
from aegis_ckpt.storage.store import CheckpointStore

pytestmark = [pytest.mark.slow, pytest.mark.distributed]

CONFIG = """\
compute_environment: LOCAL_MACHINE
distributed_type: MULTI_GPU
num_processes: 2
num_machines: 1
machine_rank: 0
main_process_port: 0
gpu_ids: all
mixed_precision: 'no'
rdzv_backend: static
same_network: true
"""


def launch(tmp_path: Path, out: Path, status: Path) -> subprocess.Popen:
    config = tmp_path / "accelerate_2cpu.yaml"
    config.write_text(CONFIG)
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
        str(SCRIPTS_DIR / "custom_loop_ddp.py"), str(out), "--status-dir", str(status), *SCRIPT_ARGS,
    ]  # fmt: skip
    return subprocess.Popen(
        cmd, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip


def test_sigterm_to_accelerate_launch_stops_both_ranks_at_one_step_and_resumes(tmp_path):
    out, status = tmp_path / "out", tmp_path / "status"
    proc = launch(tmp_path, out, status)
    wait_for(
        lambda: steps_done(status, 0) >= 10 and steps_done(status, 1) >= 10,
        "both ranks at step 10",
        proc,
        status,
    )
    os.kill(proc.pid, signal.SIGTERM)  # the launcher: it forwards the signal to both ranks
    code, output = finish(proc, status, timeout=120)
    assert code != 0, output[-4000:]
    exits = [events(status, rank, "exit") for rank in (0, 1)]
    assert all(len(e) == 1 for e in exits), output[-4000:]
    assert exits[0][0]["code"] == exits[1][0]["code"] == 128 + signal.SIGTERM, output[-4000:]
    stopped = exits[0][0]["step"]
    assert exits[1][0]["step"] == stopped < STEPS
    newest = CheckpointStore(out).committed()[-1]
    assert newest.step == stopped and read_manifest(newest.path).reason == "signal:SIGTERM"
    assert_collective_checkpoint(newest.path)

    status2 = tmp_path / "status2"
    code, output = finish(launch(tmp_path, out, status2), status2)
    assert code == 0, output[-4000:]
    assert [events(status2, rank, "start")[-1]["step"] for rank in (0, 1)] == [stopped, stopped]
    assert f"RANK 0 FINISHED AT STEP {STEPS}" in output and f"RANK 1 FINISHED AT STEP {STEPS}" in output
