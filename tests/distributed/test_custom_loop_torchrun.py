"""A custom DDP loop on the seed API under ``torchrun --nproc_per_node 2`` (gloo, CPU): the managers' rank
agreement, one writer per file and resume on every rank.

Invariants: every interval save is collective and its one manifest covers each rank's own generators
(``rng_state_<rank>.pth``, written by that rank); a SIGKILL of the whole process group loses only the work since
the newest commit, and the relaunch resumes both ranks from that commit and ends bit-identical to an
uninterrupted run; SIGTERM to ONE rank stops both ranks at the same step with one committed checkpoint holding
both ranks' files, and both exit with 128 + 15. Rank 1 writes its files slowly in every run
(``--slow-rank-write``), so a commit that does not wait for every rank would miss them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from testenv import SCRIPTS_DIR, subprocess_env

from aegis_ckpt.loop.loopstate import read_loop_state
from aegis_ckpt.storage.commit import read_manifest, verify_checkpoint
from aegis_ckpt.storage.store import CheckpointStore

pytestmark = [pytest.mark.slow, pytest.mark.distributed]

STEPS = 100
SCRIPT_ARGS = [
    "--steps",
    str(STEPS),
    "--interval",
    "0.3",
    "--step-sleep",
    "0.03",
    "--slow-rank-write",
    "1:0.2",
]
RNG_FILES = {"rng_state_0.pth", "rng_state_1.pth"}


def launch(out: Path, status: Path, *, result: Path | None = None) -> subprocess.Popen:
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        str(SCRIPTS_DIR / "custom_loop_ddp.py"), str(out), "--status-dir", str(status), *SCRIPT_ARGS,
    ]  # fmt: skip
    if result is not None:
        cmd += ["--result", str(result)]
    # A session of its own, so a power cut can kill torchrun and both ranks at once.
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
        raise AssertionError(
            f"torchrun did not end within {timeout} s (a rank waits for another):\n{output[-4000:]}"
        ) from None
    return proc.returncode, output


def events(status: Path, rank: int, kind: str) -> list[dict]:
    path = status / f"rank{rank}.jsonl"
    if not path.exists():
        return []
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [e for e in lines if e["event"] == kind]


def wait_for(predicate, what: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"torchrun ended before {what}:\n{proc.communicate()[0][-4000:]}")
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def steps_done(status: Path, rank: int) -> int:
    done = events(status, rank, "step")
    return done[-1]["step"] if done else 0


def power_cut(proc: subprocess.Popen, status: Path) -> None:
    """SIGKILL both ranks and torchrun at once (torchrun starts each worker in a session of its own)."""
    for rank in (0, 1):
        os.kill(events(status, rank, "start")[-1]["pid"], signal.SIGKILL)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def assert_same_weights(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert got.keys() == want.keys()
    differ = [k for k in want if not torch.equal(got[k], want[k])]
    assert differ == [], f"weights differ from the uninterrupted run: {differ}"


def assert_collective_checkpoint(folder: Path) -> None:
    """One manifest over the shared files and every rank's own generators, each written by its rank."""
    assert verify_checkpoint(folder, full=True).ok, folder
    manifest = read_manifest(folder)
    assert RNG_FILES <= set(manifest.files), (folder, sorted(manifest.files))
    assert {"model.safetensors", "optimizer.pt", "scheduler.pt", "aegis_loop_state.json"} <= set(
        manifest.files
    )
    assert manifest.meta["world_size"] == 2
    assert read_loop_state(folder)["world_size"] == 2
    states = [torch.load(folder / name, weights_only=True) for name in sorted(RNG_FILES)]
    assert not torch.equal(states[0]["cpu"], states[1]["cpu"]), "both RNG files hold one rank's generators"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted 2-process run: its output directory, final weights and log."""
    root = tmp_path_factory.mktemp("loop_ddp_reference")
    result = root / "final.safetensors"
    code, output = finish(launch(root / "out", root / "status", result=result))
    assert code == 0, output[-4000:]
    return {"out": root / "out", "weights": load_weights(result), "output": output}


def test_every_save_is_collective_and_its_manifest_covers_each_ranks_rng_file(reference):
    output = reference["output"]
    assert f"RANK 0 FINISHED AT STEP {STEPS}" in output and f"RANK 1 FINISHED AT STEP {STEPS}" in output, (
        output[-4000:]
    )
    committed = CheckpointStore(reference["out"]).committed()
    reasons = {e.step: read_manifest(e.path).reason for e in committed}
    # The last step is committed (by finish(), or by an interval save of that very step that finish() found).
    assert reasons.get(STEPS) in ("final", "interval") and list(reasons.values()).count("interval") >= 2, reasons
    for entry in committed:
        assert_collective_checkpoint(entry.path)
    # One writer per shared file: only rank 0 commits, publishes and logs it.
    assert "[rank0] aegis_ckpt.runstate.saves INFO Committed" in output
    assert "[rank1] aegis_ckpt.runstate.saves" not in output


def test_sigkill_of_the_whole_group_resumes_both_ranks_bit_identical(reference, tmp_path):
    out, status = tmp_path / "out", tmp_path / "status"
    proc = launch(out, status)
    wait_for(lambda: bool(CheckpointStore(out).committed()), "a committed checkpoint", proc)
    newest = CheckpointStore(out).committed()[-1].step
    wait_for(lambda: steps_done(status, 1) >= newest + 3, "steps after the commit", proc)
    power_cut(proc, status)
    newest = CheckpointStore(out).committed()[-1].step
    assert newest < STEPS

    status2, result = tmp_path / "status2", tmp_path / "final.safetensors"
    code, output = finish(launch(out, status2, result=result))
    assert code == 0, output[-4000:]
    assert [events(status2, rank, "start")[-1]["step"] for rank in (0, 1)] == [newest, newest], output[-4000:]
    assert_same_weights(load_weights(result), reference["weights"])


def test_sigterm_to_one_rank_stops_both_at_the_same_step_and_resumes_exactly(reference, tmp_path):
    out, status = tmp_path / "out", tmp_path / "status"
    proc = launch(out, status)
    wait_for(lambda: steps_done(status, 1) >= 10, "rank 1 at step 10", proc)
    os.kill(events(status, 1, "start")[-1]["pid"], signal.SIGTERM)  # rank 1 only
    code, output = finish(proc, timeout=120)
    assert code != 0, output[-4000:]
    exits = {rank: events(status, rank, "exit") for rank in (0, 1)}
    assert all(len(e) == 1 for e in exits.values()), output[-4000:]
    assert exits[0][0]["code"] == exits[1][0]["code"] == 128 + signal.SIGTERM
    stopped = exits[0][0]["step"]
    assert exits[1][0]["step"] == stopped and stopped < STEPS
    assert f"RANK 0 EXIT 143 AT STEP {stopped}" in output and f"RANK 1 EXIT 143 AT STEP {stopped}" in output
    newest = CheckpointStore(out).committed()[-1]
    assert newest.step == stopped
    assert read_manifest(newest.path).reason == "signal:SIGTERM"
    assert_collective_checkpoint(newest.path)
    assert not any((out / ".aegis" / "staging").glob("*")), "a staging folder was left behind"

    status2, result = tmp_path / "status2", tmp_path / "final.safetensors"
    code, output = finish(launch(out, status2, result=result))
    assert code == 0, output[-4000:]
    assert [events(status2, rank, "start")[-1]["step"] for rank in (0, 1)] == [stopped, stopped]
    assert_same_weights(load_weights(result), reference["weights"])
