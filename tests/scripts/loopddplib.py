"""What the custom-loop tests under torchrun and accelerate launch share (``tests/scripts/custom_loop_ddp.py``
runs the loop): its arguments, waiting on the ranks' status files, a power cut of the whole job, and the checks
of a collective checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import torch

from aegis_ckpt.loop.loopstate import read_loop_state
from aegis_ckpt.storage.commit import read_manifest, verify_checkpoint

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


def finish(proc: subprocess.Popen, status: Path, timeout: float = 180) -> tuple[int, str]:
    """Wait for the launcher; past ``timeout`` (a rank waiting for another forever) kill the job and fail."""
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        output = power_cut(proc, status)
        raise AssertionError(f"the job did not end within {timeout} s:\n{output[-4000:]}") from None
    return proc.returncode, output


def events(status: Path, rank: int, kind: str) -> list[dict]:
    path = status / f"rank{rank}.jsonl"
    if not path.exists():
        return []
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [e for e in lines if e["event"] == kind]


def wait_for(predicate, what: str, proc: subprocess.Popen, status: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"the job ended before {what}:\n{proc.communicate()[0][-4000:]}")
        if time.monotonic() > deadline:
            power_cut(proc, status)
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def steps_done(status: Path, rank: int) -> int:
    done = events(status, rank, "step")
    return done[-1]["step"] if done else 0


def power_cut(proc: subprocess.Popen, status: Path) -> str:
    """SIGKILL both ranks and the launcher at once (torchrun starts each worker in a session of its own);
    returns the launcher's output."""
    for rank in (0, 1):
        starts = events(status, rank, "start")
        if starts:
            try:
                os.kill(starts[-1]["pid"], signal.SIGKILL)
            except ProcessLookupError:
                pass
    os.killpg(proc.pid, signal.SIGKILL)
    return proc.communicate()[0]


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
