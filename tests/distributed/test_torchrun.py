"""Multi-process agreement under torchrun with 2 CPU processes on gloo (guarantee 6 of DESIGN.md).

Invariants: every rank saves at the same steps; one manifest covers every rank's files; a signal delivered to ONE
rank makes all ranks commit the same step and exit; SIGKILL of one rank ends the job (no hang) and the relaunched
job resumes; the final weights of an interrupted and resumed job are bit-identical to an uninterrupted job's;
resuming with another number of processes is refused with a clear message.
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

MAX_STEPS = 30


def launch(out: Path, status: Path, *, nproc: int = 2, result: Path | None = None) -> subprocess.Popen:
    status.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
        str(SCRIPTS_DIR / "train_ddp.py"), "--output-dir", str(out), "--status-dir", str(status),
        "--max-steps", str(MAX_STEPS),
    ]  # fmt: skip
    if result is not None:
        cmd += ["--result", str(result)]
    env = subprocess_env({"OMP_NUM_THREADS": "1"})
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen, timeout: float = 180) -> tuple[int, str]:
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
        raise AssertionError(f"torchrun did not end within {timeout} s:\n{output[-4000:]}") from None
    return proc.returncode, output


def events(status: Path, rank: int, kind: str | None = None) -> list[dict]:
    path = status / f"rank{rank}.jsonl"
    if not path.exists():
        return []
    out = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [e for e in out if kind is None or e["event"] == kind]


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"torchrun ended before {what}:\n{proc.communicate()[0][-4000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def last_start(status: Path, rank: int) -> dict:
    return events(status, rank, "start")[-1]


def rank_pid_after_steps(status: Path, rank: int, steps: int, proc) -> int:
    def ready():
        starts = events(status, rank, "start")
        return bool(starts) and any(
            e["pid"] == starts[-1]["pid"] and e["step"] >= steps for e in events(status, rank, "step")
        )

    wait_for(ready, 120, f"rank {rank} to reach step {steps}", proc)
    return last_start(status, rank)["pid"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted 2-process job: its final weights and its per-rank save steps."""
    root = tmp_path_factory.mktemp("ddp_reference")
    result = root / "final.pt"
    code, output = finish(launch(root / "out", root / "status", result=result))
    assert code == 0, output[-4000:]
    return {"root": root, "weights": tinylib.load_weights(result), "output": output}


def test_ranks_save_the_same_steps_and_one_manifest_covers_all_rank_files(reference):
    """Interval saves are asynchronous by default: every rank snapshots at the agreed step and writes its own
    ``rng_state_<rank>.pth`` into the shared staging folder; rank 0's writer commits one manifest over all."""
    output = reference["output"]
    committed_steps = [
        int(s) for s in re.findall(r"\[rank0\] aegis_ckpt[\w.]+ INFO Committed \S+ \(step (\d+)", output)
    ]
    assert len(committed_steps) >= 3 and committed_steps[-1] == MAX_STEPS, output[-4000:]
    assert "async: snapshot" in output
    committed = CheckpointStore(reference["root"] / "out").committed()
    assert committed and committed[-1].step == MAX_STEPS
    for entry in committed:
        manifest = read_manifest(entry.path)
        assert {"rng_state_0.pth", "rng_state_1.pth"} <= set(manifest.files), entry.path
        assert manifest.meta["world_size"] == 2
    assert any(read_manifest(e.path).meta.get("async") for e in committed), "no asynchronous save was kept"
    assert "AFTER TRAIN rank 0" in output and "AFTER TRAIN rank 1" in output


def test_sigterm_to_one_rank_saves_the_same_step_on_all_and_resumes_exactly(reference, tmp_path):
    out, status = tmp_path / "out", tmp_path / "status"
    proc = launch(out, status)
    pid1 = rank_pid_after_steps(status, 1, 8, proc)
    os.kill(pid1, signal.SIGTERM)
    code, output = finish(proc)
    assert code != 0, output[-4000:]
    assert "AFTER TRAIN" not in output
    # Our callback exits inside on_save, before the reporting callback's on_save: read the steps from the logs.
    stopped = {
        int(rank): int(step)
        for rank, step in re.findall(
            r"\[rank(\d)\] aegis_ckpt[\w.]+ WARNING Stopped by SIGTERM: .* at step (\d+)", output
        )
    }
    assert set(stopped) == {0, 1} and stopped[0] == stopped[1], output[-4000:]
    last0 = stopped[0]
    assert CheckpointStore(out).committed()[-1].step == last0
    folder = out / f"checkpoint-{last0}"
    assert verify_checkpoint(folder, full=True).ok
    assert read_manifest(folder).reason == "signal:SIGTERM"
    assert {"rng_state_0.pth", "rng_state_1.pth"} <= set(read_manifest(folder).files)
    assert "exiting with code 143" in output

    # Another number of processes would continue with other RNG streams and data order: refused, clearly.
    code1, output1 = finish(launch(out, tmp_path / "status1", nproc=1))
    assert code1 != 0
    assert f"checkpoint-{last0} was saved by 2 process(es), this run has 1" in output1, output1[-4000:]

    result = tmp_path / "final.pt"
    code2, output2 = finish(launch(out, tmp_path / "status2", result=result))
    assert code2 == 0, output2[-4000:]
    assert last_start(tmp_path / "status2", 0)["step"] == last0
    assert tinylib.weight_mismatches(tinylib.load_weights(result), reference["weights"]) == []


def test_sigkill_of_one_rank_ends_the_job_and_the_relaunch_resumes_exactly(reference, tmp_path):
    out, status = tmp_path / "out", tmp_path / "status"
    proc = launch(out, status)
    wait_for(lambda: bool(CheckpointStore(out).committed()), 120, "a committed checkpoint", proc)
    pid1 = rank_pid_after_steps(status, 1, 8, proc)
    killed_at = time.monotonic()
    os.kill(pid1, signal.SIGKILL)
    code, output = finish(proc, timeout=90)  # the surviving rank must not hang
    assert code != 0
    assert time.monotonic() - killed_at < 60, "the job took too long to end after one rank was killed"
    assert "AFTER TRAIN" not in output
    newest = CheckpointStore(out).committed()[-1].step

    result = tmp_path / "final.pt"
    code2, output2 = finish(launch(out, tmp_path / "status2", result=result))
    assert code2 == 0, output2[-4000:]
    assert last_start(tmp_path / "status2", 0)["step"] == newest
    assert tinylib.weight_mismatches(tinylib.load_weights(result), reference["weights"]) == []
