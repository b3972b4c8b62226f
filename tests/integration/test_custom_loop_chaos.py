"""A custom loop on RollingCheckpointManager, SIGKILLed at random moments and in the middle of saves.

Invariants proved here:
* after every kill, every ``checkpoint-*`` folder is committed (saves are staged under ``.aegis/`` and renamed
  into place only once committed), and nothing had to be quarantined;
* every restart reports the crash and resumes from the newest committed checkpoint;
* the final weights are bit-identical to an uninterrupted run;
* the audit log parses (a torn last line is tolerated) and covers the events of such a run;
* the finished run, started again, does nothing and says so.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from aegis_ckpt.cli import main as cli_main
from aegis_ckpt.storage.audit import read_audit

pytestmark = [pytest.mark.slow, pytest.mark.chaos]

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "tests" / "scripts" / "custom_loop.py"
STEPS = 240
LOOP_ARGS = ["--steps", str(STEPS), "--interval", "0.2", "--step-sleep", "0.01"]
# 20 ms per fsync'd file (~10 files) stretches a save to ~0.25 s, so random kills land inside saves too.
SLOW_SAVES = ["--slow-fsync", "0.02"]


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    e.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    return e


def start(out: Path, *extra: str, log: Path) -> subprocess.Popen:
    with open(log, "ab") as f:
        return subprocess.Popen(
            [sys.executable, str(SCRIPT), str(out), *LOOP_ARGS, *extra], env=env(), stdout=f, stderr=f
        )


def run(out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), str(out), *LOOP_ARGS, *extra],
        env=env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 120) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.005)
    raise AssertionError("timed out waiting for the training process")


def save_in_progress(out: Path) -> bool:
    staging = out / ".aegis" / "staging"
    try:
        return any(any(d.iterdir()) for d in staging.iterdir())
    except OSError:
        return False


def same_weights(a: Path, b: Path) -> bool:
    x, y = load_file(str(a)), load_file(str(b))
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def test_sigkill_at_random_moments_and_mid_save_resumes_to_identical_weights(tmp_path):
    rng = random.Random(int(os.environ.get("AEGIS_CHAOS_SEED", "20240611")))
    ref = tmp_path / "reference"
    done = run(ref)
    assert done.returncode == 0, done.stderr[-3000:]

    out, log = tmp_path / "killed", tmp_path / "killed.log"
    kills = mid_save = 0
    for attempt in range(12):
        offset = log.stat().st_size if log.exists() else 0
        proc = start(out, *SLOW_SAVES, log=log)
        try:
            # this process's own output (the log holds every attempt's)
            finished = not wait_for(lambda start=offset: b"LOOP: starting" in log.read_bytes()[start:], proc)
            if finished:
                pass
            elif attempt % 2 == 0:  # a random moment once training runs
                time.sleep(rng.uniform(0.05, 1.2))
            else:  # the middle of a save: files are being written or fsynced in staging
                finished = not wait_for(lambda: save_in_progress(out), proc)
            if not finished and proc.poll() is None:
                in_save = save_in_progress(out)
                proc.send_signal(signal.SIGKILL)
                proc.wait(30)
                kills += 1
                mid_save += in_save
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(30)
        # After any kill: only committed checkpoint folders exist, and nothing was damaged.
        folders = sorted(out.glob("checkpoint-*"))
        assert all((p / "aegis_manifest.json").is_file() for p in folders), folders
        assert not (out / ".aegis" / "quarantine").exists()
        if proc.returncode == 0:
            break
        if kills >= 6:
            break
    assert kills >= 4 and mid_save >= 2, (kills, mid_save)

    final = run(out)
    assert final.returncode == 0, final.stderr[-3000:]
    assert same_weights(ref / "final_weights.safetensors", out / "final_weights.safetensors")

    text = log.read_text(errors="replace") + final.stderr
    assert text.count("CRASH detected") == kills
    assert f"LOOP: finished at step {STEPS}" in final.stdout
    audit = read_audit(out / ".aegis" / "audit.jsonl")
    assert len(audit.problems) <= kills  # at most one torn line per kill
    seen = {e["event"] for e in audit.events}
    assert {"start", "crash_detected", "resume", "save", "commit", "prune", "finish", "exit"} <= seen
    assert cli_main(["verify", str(out), "--full"]) == 0

    # Started again after it finished: nothing is trained or saved, and it says so.
    commits_before = sum(e["event"] == "commit" for e in audit.events)
    again = run(out, "--api", "enhanced")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "already finished at step" in again.stderr and "LOOP: already finished" in again.stdout
    assert f"LOOP: starting at step {STEPS}" in again.stdout
    after = read_audit(out / ".aegis" / "audit.jsonl").events
    assert sum(e["event"] == "commit" for e in after) == commits_before
    assert sum(e["event"] == "finish" for e in after) == 1
