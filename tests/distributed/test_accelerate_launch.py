"""``accelerate launch`` with a 2-process CPU config.

accelerate's ``MULTI_CPU`` type starts several processes only through MPI (``mpirun_hostfile``); without it,
``accelerate launch --cpu --num_processes 2`` starts ONE process (see docs/integrations.md). The config that runs
2 CPU processes anywhere uses accelerate's torchrun-based launcher; the script asks for the CPU
(``TrainingArguments(use_cpu=True)``), so the processes train on CPU over gloo. The test writes that config.

Invariants: both ranks save the same steps (one manifest covers both ranks' files; interval saves are
asynchronous); SIGTERM to the launcher (``kill``, a service stop) reaches every rank,
which commit the same step and exit 143; SIGKILL of the whole process group (a power cut) loses at most the work
since the newest commit; the relaunched job resumes from the newest committed checkpoint and ends bit-identical
to an uninterrupted job.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tinylib
from testenv import SCRIPTS_DIR, subprocess_env

from aegis_ckpt.storage.commit import read_manifest, verify_checkpoint
from aegis_ckpt.storage.store import CheckpointStore

pytestmark = [pytest.mark.slow, pytest.mark.distributed]

MAX_STEPS = 40
CONFIG = """\
# 2 processes on one machine through accelerate's torchrun-based launcher. The training script asks for the CPU
# (TrainingArguments(use_cpu=True)), so each process trains on CPU and they talk over gloo.
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


def launch(tmp_path: Path, out: Path, status: Path, *, result: Path | None = None) -> subprocess.Popen:
    tmp_path.mkdir(parents=True, exist_ok=True)
    config = tmp_path / "accelerate_2cpu.yaml"
    config.write_text(CONFIG)
    status.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
        str(SCRIPTS_DIR / "train_ddp.py"), "--output-dir", str(out), "--status-dir", str(status),
        "--max-steps", str(MAX_STEPS), "--save-interval", "0.4", "--step-sleep", "0.05",
    ]  # fmt: skip
    if result is not None:
        cmd += ["--result", str(result)]
    # A session of its own, so the power-cut test can kill the launcher's whole group.
    return subprocess.Popen(
        cmd, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip


def finish(proc: subprocess.Popen, timeout: float = 180) -> tuple[int, str]:
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        raise AssertionError(f"accelerate launch did not end within {timeout} s:\n{output[-4000:]}") from None
    return proc.returncode, output


def events(status: Path, rank: int, kind: str) -> list[dict]:
    path = status / f"rank{rank}.jsonl"
    if not path.exists():
        return []
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [e for e in lines if e["event"] == kind]


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"accelerate launch ended before {what}:\n{proc.communicate()[0][-4000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_accelerate_launch_two_cpu_processes_sigterm_power_cut_and_exact_resume(tmp_path):
    # The uninterrupted reference job.
    ref_root = tmp_path / "ref"
    ref_result = ref_root / "final.pt"
    code, output = finish(launch(ref_root, ref_root / "out", ref_root / "status", result=ref_result))
    assert code == 0, output[-4000:]
    # Interval saves are asynchronous (no on_save event): count the commits in rank 0's log. Each manifest
    # covering both ranks' RNG files shows that both ranks saved the same step.
    commits = re.findall(r"\[rank0\] aegis_ckpt[\w.]+ INFO Committed \S+ \(step (\d+)", output)
    assert len(commits) >= 3 and int(commits[-1]) == MAX_STEPS, output[-4000:]
    assert events(ref_root / "status", 1, "start"), "only one process ran"
    committed = CheckpointStore(ref_root / "out").committed()
    for entry in committed:
        manifest = read_manifest(entry.path)
        assert manifest.meta["world_size"] == 2
        assert {"rng_state_0.pth", "rng_state_1.pth"} <= set(manifest.files)
    assert any(read_manifest(e.path).meta.get("async") for e in committed), "no asynchronous save was kept"

    # SIGTERM to the launcher, as `kill <pid>` or a service stop does: every rank commits the same step, exits 143.
    out, status = tmp_path / "out", tmp_path / "status"
    proc = launch(tmp_path, out, status)
    wait_for(lambda: len(events(status, 1, "step")) >= 5, 120, "rank 1 to run 5 steps", proc)
    os.kill(proc.pid, signal.SIGTERM)
    code, output = finish(proc)
    assert code != 0, output[-4000:]
    assert "AFTER TRAIN" not in output
    stopped = dict(
        re.findall(r"\[rank(\d)\] aegis_ckpt[\w.]+ WARNING Stopped by SIGTERM: .* at step (\d+)", output)
    )
    assert set(stopped) == {"0", "1"} and stopped["0"] == stopped["1"], output[-4000:]
    assert output.count("exiting with code 143") == 2, output[-4000:]
    term_step = int(stopped["0"])
    folder = out / f"checkpoint-{term_step}"
    assert CheckpointStore(out).committed()[-1].step == term_step
    assert read_manifest(folder).reason == "signal:SIGTERM"
    assert verify_checkpoint(folder, full=True).ok

    # Power cut: SIGKILL the launcher and both workers at once, after a newer commit and a step beyond it.
    status2 = tmp_path / "status2"
    proc = launch(tmp_path, out, status2)

    def newer_commit_then_more_steps() -> bool:
        newest = max((e.step for e in CheckpointStore(out).committed()), default=0)
        steps = [e["step"] for e in events(status2, 0, "step")]
        return newest > term_step and bool(steps) and steps[-1] > newest

    wait_for(newer_commit_then_more_steps, 120, "a newer commit", proc)
    # torchrun starts each worker in a session of its own: kill them by pid, with the launcher's group.
    workers = [events(status2, r, "start")[-1]["pid"] for r in (0, 1)]
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    os.killpg(proc.pid, signal.SIGKILL)
    finish(proc)
    assert events(status2, 0, "start")[-1]["step"] == term_step
    newest = CheckpointStore(out).committed()[-1].step
    assert term_step < newest < MAX_STEPS, (term_step, newest)

    # Relaunch: resumes from the newest committed checkpoint and ends bit-identical to the reference.
    result = tmp_path / "final.pt"
    code, output = finish(launch(tmp_path, out, tmp_path / "status3", result=result))
    assert code == 0, output[-4000:]
    assert [events(tmp_path / "status3", r, "start")[-1]["step"] for r in (0, 1)] == [newest, newest]
    mismatches = tinylib.weight_mismatches(tinylib.load_weights(result), tinylib.load_weights(ref_result))
    assert mismatches == [], mismatches[:5]


def test_accelerate_cpu_launcher_that_starts_one_of_two_processes_is_reported(tmp_path):
    """``accelerate launch --cpu --num_processes 2`` starts one process (no MPI here): the callback says so when
    the Trainer is built, instead of letting the user believe two processes train."""
    script = tmp_path / "build_trainer.py"
    script.write_text(
        "import tinylib\n"
        "from aegis_ckpt import AegisCheckpointCallback\n"
        "trainer = tinylib.make_trainer(__import__('sys').argv[1], [AegisCheckpointCallback()])\n"
        "print('WORLD SIZE', trainer.args.world_size, flush=True)\n"
    )
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", str(script), str(tmp_path / "out"),
    ]  # fmt: skip
    res = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("WORLD SIZE 1") == 1
    assert "accelerate launch was asked for several CPU processes but started only this one" in res.stderr
