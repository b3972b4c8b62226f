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

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from loopddplib import (
    SCRIPT_ARGS,
    STEPS,
    assert_collective_checkpoint,
    assert_same_weights,
    events,
    finish,
    load_weights,
    power_cut,
    steps_done,
    wait_for,
)
from testenv import SCRIPTS_DIR, subprocess_env

from aegis_ckpt.storage.commit import read_manifest
from aegis_ckpt.storage.store import CheckpointStore

pytestmark = [pytest.mark.slow, pytest.mark.distributed]


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


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted 2-process run: its output directory, final weights and log."""
    root = tmp_path_factory.mktemp("loop_ddp_reference")
    result = root / "final.safetensors"
    code, output = finish(launch(root / "out", root / "status", result=result), root / "status")
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
    assert reasons.get(STEPS) in ("final", "interval") and list(reasons.values()).count("interval") >= 2, (
        reasons
    )
    for entry in committed:
        assert_collective_checkpoint(entry.path)
    # One writer per shared file: only rank 0 commits, publishes and logs it.
    assert "[rank0] aegis_ckpt.runstate.saves INFO Committed" in output
    assert "[rank1] aegis_ckpt.runstate.saves" not in output


def test_sigkill_of_the_whole_group_resumes_both_ranks_bit_identical(reference, tmp_path):
    out, status = tmp_path / "out", tmp_path / "status"
    proc = launch(out, status)
    wait_for(lambda: bool(CheckpointStore(out).committed()), "a committed checkpoint", proc, status)
    newest = CheckpointStore(out).committed()[-1].step
    wait_for(lambda: steps_done(status, 1) >= newest + 3, "steps after the commit", proc, status)
    power_cut(proc, status)
    newest = CheckpointStore(out).committed()[-1].step
    assert newest < STEPS

    status2, result = tmp_path / "status2", tmp_path / "final.safetensors"
    code, output = finish(launch(out, status2, result=result), status2)
    assert code == 0, output[-4000:]
    assert [events(status2, rank, "start")[-1]["step"] for rank in (0, 1)] == [newest, newest], output[-4000:]
    assert_same_weights(load_weights(result), reference["weights"])


def test_sigterm_to_one_rank_stops_both_at_the_same_step_and_resumes_exactly(reference, tmp_path):
    out, status = tmp_path / "out", tmp_path / "status"
    proc = launch(out, status)
    wait_for(lambda: steps_done(status, 1) >= 10, "rank 1 at step 10", proc, status)
    os.kill(events(status, 1, "start")[-1]["pid"], signal.SIGTERM)  # rank 1 only
    code, output = finish(proc, status, timeout=120)
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
    code, output = finish(launch(out, status2, result=result), status2)
    assert code == 0, output[-4000:]
    assert [events(status2, rank, "start")[-1]["step"] for rank in (0, 1)] == [stopped, stopped]
    assert_same_weights(load_weights(result), reference["weights"])
