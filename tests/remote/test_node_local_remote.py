"""Two nodes with node-local output dirs mirroring to the real S3 server: two ``torchrun --nnodes 2
--nproc-per-node 1`` launchers on 127.0.0.1 (as in ``tests/cluster/test_node_local_disks.py``), each node holding
files of every checkpoint that the other lacks (its rank's ``rng_state_<rank>.pth``).

Invariants: a remote copy gets its manifest only once every node uploaded its share (the manifest lists every
rank's files), so a fresh output dir resumes from it to weights bit-identical to an uninterrupted run; a step that
lacks one node's files never gets a manifest and is never resumed from. A rerun of the finished run completes a
remote commit of the last step that was cut short (every node uploads its share again). Fresh nodes with
node-local dirs resume from the remote copy with no manual step: each fetches its own share.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from remotelib import remote_steps
from testenv import REPO_ROOT, subprocess_env

from aegis_ckpt import find_resume_checkpoint
from aegis_ckpt.runstate.completion import completion_path, read_completion
from aegis_ckpt.storage.layout import MANIFEST_NAME
from aegis_ckpt.train.builders import TOKENIZER_CACHE_DIR

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cluster"))
from clusterlib import assert_same_weights, final_weights, torchrun_standalone_cmd, train_args  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.distributed]

STEPS = 120  # long enough for remote copies to be committed while training runs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_nodes(outs: list[Path], url: str, env1: dict[str, str] | None = None, *extra: str) -> list[str]:
    """Both nodes to the end of training; returns their logs."""
    port = free_port()
    procs = []
    for rank, out in enumerate(outs):
        cmd = [
            sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1",
            f"--node-rank={rank}", "--master-addr=127.0.0.1", f"--master-port={port}",
            "-m", "aegis_ckpt", "train", *train_args(out, STEPS, "--set", "training.save_on_each_node=true",
            "--set", f"remote.url={url}", "--set", "remote.max_keep=50", *extra),
        ]  # fmt: skip
        env = subprocess_env(env1 if rank == 1 else None)
        procs.append(
            subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        )
    logs = [p.communicate(timeout=420)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    return logs


def withdraw_newer(s3, url: str, step: int) -> None:
    """Withdraw every remote copy newer than ``step`` (its manifest), so that ``step`` is the newest one."""
    root = url.removeprefix("s3://")
    for newer, committed in remote_steps(s3, url).items():
        if newer > step and committed:
            s3.rm_file(f"{root}/checkpoint-{newer}/{MANIFEST_NAME}")


def test_every_node_uploads_its_share_and_a_fresh_dir_resumes_to_identical_weights(tmp_path, bucket_url, s3):
    outs = [tmp_path / "node0", tmp_path / "node1"]
    logs = run_nodes(outs, bucket_url)
    root = bucket_url.removeprefix("s3://")
    steps = remote_steps(s3, bucket_url)
    committed = sorted(step for step, done in steps.items() if done)
    # The final step, and at least one step committed while training ran (the pipelined agreement at work).
    assert STEPS in committed and len(committed) >= 2, (steps, logs[0][-3000:])
    for step in committed:  # every rank's own files are in the remote copy, not only rank 0's
        manifest = json.loads(s3.cat_file(f"{root}/checkpoint-{step}/{MANIFEST_NAME}"))
        assert {"rng_state_0.pth", "rng_state_1.pth", "model.safetensors"} <= manifest["files"].keys()
    assert "Committed the remote copy of checkpoint-" in logs[0]
    assert not (outs[0] / f"checkpoint-{committed[0]}" / "rng_state_1.pth").exists()  # node-local indeed

    # The remote commit of the last step cut short (no manifest, and node 1's share never arrived): a rerun of
    # the finished run trains nothing but completes it, node 1 uploading its share again.
    last = f"{root}/checkpoint-{STEPS}"
    for name in (MANIFEST_NAME, "aegis_part_rank1.json", "rng_state_1.pth"):
        s3.rm_file(f"{last}/{name}")
    logs = run_nodes(outs, bucket_url)
    assert f"Committed the remote copy of checkpoint-{STEPS}" in logs[0], logs[0][-3000:]
    assert remote_steps(s3, bucket_url)[STEPS]
    manifest = json.loads(s3.cat_file(f"{last}/{MANIFEST_NAME}"))
    assert {"rng_state_0.pth", "rng_state_1.pth"} <= manifest["files"].keys()
    node1_rng = (outs[1] / f"checkpoint-{STEPS}" / "rng_state_1.pth").read_bytes()
    assert s3.cat_file(f"{last}/rng_state_1.pth") == node1_rng

    # One node lacks the completion record (killed before it wrote it): both nodes take the same path, not one the
    # finished one and the other the training one, whose collectives would not match.
    before = final_weights(outs[0])
    completion_path(outs[1]).unlink()
    run_nodes(outs, bucket_url)
    assert read_completion(outs[1])["step"] == STEPS
    assert_same_weights(final_weights(outs[0]), before)
    assert_same_weights(final_weights(outs[1]), before)

    # A fresh machine resumes from a mid-run remote copy: the newer ones are withdrawn (manifest first).
    mid = max(step for step in committed if step < STEPS)
    withdraw_newer(s3, bucket_url, mid)
    fresh = tmp_path / "fresh"
    # Two ranks sharing a fresh output dir can race to build the tokenizer cache there (a race of ``aegis-ckpt
    # train`` outside what this test checks): give the fresh dir the run's tokenizer, which the build reproduces.
    shutil.copytree(outs[0] / TOKENIZER_CACHE_DIR, fresh / TOKENIZER_CACHE_DIR)
    cmd = torchrun_standalone_cmd(fresh, STEPS, nproc=2) + ["--set", f"remote.url={bucket_url}"]
    proc = subprocess.run(
        cmd, env=subprocess_env(), capture_output=True, text=True, timeout=420, cwd=REPO_ROOT
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert f"Continuing from {fresh}/checkpoint-{mid}" in out, out[-3000:]
    assert f"training finished at step {STEPS}" in out
    assert_same_weights(final_weights(fresh), final_weights(outs[0]))
    assert_same_weights(final_weights(outs[1]), final_weights(outs[0]))

    # Fresh nodes with node-local dirs: each fetches its own share of the newest remote copy, then both resume.
    withdraw_newer(s3, bucket_url, mid)  # what the shared-dir run above uploaded after resuming
    fresh_nodes = [tmp_path / "fresh0", tmp_path / "fresh1"]
    logs = run_nodes(fresh_nodes, bucket_url)
    for rank in (0, 1):
        assert f"Downloaded checkpoint-{mid} from s3://" in logs[rank], logs[rank][-3000:]
        assert f"Continuing from {fresh_nodes[rank]}/checkpoint-{mid}" in logs[rank], logs[rank][-3000:]
        assert_same_weights(final_weights(fresh_nodes[rank]), final_weights(outs[0]))
        # Each node fetched its own share only: its rank's RNG state, not the other node's.
        assert f"share of remote checkpoint-{mid} holds the RNG states of rank(s) [{rank}]" in logs[rank]


def test_a_step_missing_one_nodes_files_gets_no_manifest(tmp_path, bucket_url, s3):
    # Node 1 cannot reach the remote at all: its share of every step never arrives.
    dead = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"}
    outs = [tmp_path / "node0", tmp_path / "node1"]
    logs = run_nodes(
        outs, bucket_url, dead, "--set", "remote.flush_timeout_sec=10", "--set", "remote.attempts=2"
    )
    steps = remote_steps(s3, bucket_url)
    assert steps, logs[0][-3000:]  # node 0 uploaded its files ...
    assert not any(steps.values()), steps  # ... but no step is complete, so none has a manifest
    assert "Committed the remote copy" not in logs[0]
    assert find_resume_checkpoint(tmp_path / "fresh", remote_url=bucket_url) is None
