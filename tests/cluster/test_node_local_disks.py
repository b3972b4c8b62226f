"""Two nodes with node-local output dirs, without Slurm: two ``torchrun --nnodes 2 --nproc-per-node 1`` launchers
on 127.0.0.1 (node ranks 0 and 1), each writing its own copy of every checkpoint (``save_on_each_node``).

Invariant: after a kill, with the newest checkpoint deleted on one node, both nodes resume from the newest step
intact on every node (never a step one node lacks) and finish with weights bit-identical to an uninterrupted run.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from clusterlib import assert_same_weights, committed_steps, final_weights, train_args, wait_until
from testenv import subprocess_env

pytestmark = [pytest.mark.slow, pytest.mark.distributed]

# Long enough that two interval checkpoints (every second) commit well before the end: on an idle machine 100
# steps of this model take under 3 s, and the first launch then finished before the kill (as in the Slurm tests).
STEPS = 400


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_node(node_rank: int, out: Path, port: int, log: Path) -> subprocess.Popen:
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1",
        f"--node-rank={node_rank}", "--master-addr=127.0.0.1", f"--master-port={port}",
        "-m", "aegis_ckpt", "train", *train_args(out, STEPS, "--set", "training.save_on_each_node=true"),
    ]  # fmt: skip
    with log.open("a") as f:
        return subprocess.Popen(
            cmd, env=subprocess_env(), stdout=f, stderr=subprocess.STDOUT, start_new_session=True
        )


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL a launcher and its workers (torchrun starts each worker in a session of its own)."""
    try:
        family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        family = []
    for p in family:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    proc.wait(30)


def test_nodes_resume_from_the_newest_step_intact_on_every_node(reference_runs, tmp_path):
    reference_runs.start(STEPS, nproc=2)  # in the background, beside the two nodes
    outs = [tmp_path / "node0", tmp_path / "node1"]
    logs = [tmp_path / "node0.log", tmp_path / "node1.log"]
    port = free_port()
    nodes = [launch_node(r, outs[r], port, logs[r]) for r in (0, 1)]
    try:
        common = wait_until(
            lambda: (
                len(set(committed_steps(outs[0])) & set(committed_steps(outs[1]))) >= 2
                or any(n.poll() is not None for n in nodes)
            ),
            240,
            "two checkpoints committed on both nodes",
        )
        assert all(n.poll() is None for n in nodes), "a node ended before it could be killed"
    finally:
        for n in nodes:
            kill_tree(n)
    del common
    assert STEPS not in committed_steps(outs[0]), "training reached its end before the kill: make it longer"
    newest_on_1 = max(committed_steps(outs[1]))
    shutil.rmtree(outs[1] / f"checkpoint-{newest_on_1}")
    expected = max(set(committed_steps(outs[0])) & set(committed_steps(outs[1])))
    assert expected < newest_on_1 <= max(committed_steps(outs[0]))

    starts = [len(log.read_text()) for log in logs]
    port = free_port()
    nodes = [launch_node(r, outs[r], port, logs[r]) for r in (0, 1)]
    for n in nodes:
        n.wait(300)
    resumed = [log.read_text()[start:] for log, start in zip(logs, starts, strict=True)]
    assert [n.returncode for n in nodes] == [0, 0], resumed[0][-3000:] + resumed[1][-3000:]
    assert f"Resuming every node from {outs[0]}/checkpoint-{expected}, the newest checkpoint intact on all nodes" in resumed[0]  # fmt: skip
    for r in (0, 1):
        assert f"Continuing from {outs[r]}/checkpoint-{expected}" in resumed[r], resumed[r][-3000:]
        assert f"training finished at step {STEPS}" in resumed[r]
    assert_same_weights(final_weights(outs[0]), final_weights(outs[1]))
    assert_same_weights(final_weights(outs[0]), reference_runs.weights(STEPS, nproc=2))
