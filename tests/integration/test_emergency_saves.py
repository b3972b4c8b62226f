"""Emergency saves with real processes and real signals (guarantee 2 of DESIGN.md).

Each test runs ``tests/scripts/train_signals.py`` in a child process, injects one event, and checks what a user
relies on: the exit code (128 + signal number, or 1 after an exception), a committed checkpoint at the step
during which the event came, the user's code after ``trainer.train()`` not running, and a restart that ends with
weights bit-identical to an uninterrupted run.
"""

from __future__ import annotations

import json
import random
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

pytestmark = pytest.mark.slow

MAX_STEPS = 20
SCRIPT = "train_signals.py"


def committed_steps(out: Path) -> list[int]:
    return [e.step for e in CheckpointStore(out).committed()]


def finish_and_compare(run_py, out: Path, tmp_path: Path, reference_weights) -> None:
    """Restart without injection; the run must complete and match an uninterrupted one bit for bit."""
    result = tmp_path / "final.pt"
    res = run_py(SCRIPT, ["--output-dir", out, "--max-steps", MAX_STEPS, "--result", result])
    assert res.returncode == 0, res.stderr[-3000:]
    assert "AFTER TRAIN" in res.stdout
    assert (
        tinylib.weight_mismatches(tinylib.load_weights(result), reference_weights(max_steps=MAX_STEPS)) == []
    )


@pytest.mark.parametrize(
    "signame, resume",
    [("SIGTERM", True), ("SIGINT", True), ("SIGHUP", False), ("SIGUSR1", False)],
)
def test_signal_commits_current_step_and_exits_128_plus_signum(
    signame, resume, run_py, tmp_path, reference_weights
):
    seed = random.randrange(1 << 30)
    step = random.Random(seed).randrange(2, MAX_STEPS - 2)
    out = tmp_path / "run"
    res = run_py(
        SCRIPT,
        [
            "--output-dir",
            out,
            "--max-steps",
            MAX_STEPS,
            "--act",
            "signal",
            "--act-step",
            step,
            "--signal",
            signame,
        ],
    )
    signum = int(getattr(signal, signame))
    context = f"seed={seed} step={step}\n{res.stderr[-3000:]}"
    assert res.returncode == 128 + signum, context
    assert "AFTER TRAIN" not in res.stdout, context
    # The signal arrived during `step`: that step finished and is the committed emergency checkpoint.
    assert committed_steps(out) == [step], context
    folder = out / f"checkpoint-{step}"
    assert verify_checkpoint(folder, full=True).ok
    assert read_manifest(folder).reason == f"signal:{signame}"
    assert f"{signame} received" in res.stderr
    assert f"Stopped by {signame}: emergency checkpoint {folder} committed at step {step}" in res.stderr, (
        context
    )
    assert f"exiting with code {128 + signum}" in res.stderr
    if resume:
        finish_and_compare(run_py, out, tmp_path, reference_weights)


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _events(status: Path) -> list[dict]:
    if not status.exists():
        return []
    return [json.loads(line) for line in status.read_text().splitlines() if line.strip()]


def test_second_sigint_during_save_exits_at_once(tmp_path, reference_weights, run_py):
    """A second Ctrl+C while the emergency save is being written ends the process at once; that half-written
    folder is never committed, and the restart quarantines it and resumes from the previous committed one."""
    out = tmp_path / "run"
    # First run: quick interval saves; killed (SIGKILL) once one is committed.
    first = run_py(
        SCRIPT,
        ["--output-dir", out, "--max-steps", MAX_STEPS, "--save-interval", 0.3, "--step-sleep", 0.1],
        kill_after=lambda: bool(committed_steps(out)),
    )
    assert first.killed and committed_steps(out), first.stderr[-3000:]
    resumed_from = committed_steps(out)[-1]

    # Second run: every save takes 60 s. Ctrl+C once training runs, and again once the save has started.
    status = tmp_path / "status.jsonl"
    cmd = [
        sys.executable, str(SCRIPTS_DIR / SCRIPT), "--output-dir", str(out), "--max-steps", str(MAX_STEPS),
        "--step-sleep", "0.1", "--slow-save", "60", "--status", str(status),
    ]  # fmt: skip
    child = subprocess.Popen(
        cmd, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        _wait_for(lambda: any(e["event"] == "train_begin" for e in _events(status)), 60, "training to start")
        child.send_signal(signal.SIGINT)
        _wait_for(
            lambda: any(e["event"] == "saving" for e in _events(status)), 30, "the emergency save to start"
        )
        saving_step = next(e["step"] for e in _events(status) if e["event"] == "saving")
        sent = time.monotonic()
        child.send_signal(signal.SIGINT)
        _, stderr = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    assert child.returncode == 130, stderr[-3000:]
    assert time.monotonic() - sent < 20, "the second SIGINT did not end the process at once"
    assert "second stop request" in stderr
    assert not (out / f"checkpoint-{saving_step}" / "aegis_manifest.json").exists()
    assert committed_steps(out) == [resumed_from]
    finish_and_compare(run_py, out, tmp_path, reference_weights)
    quarantined = CheckpointStore(out).quarantined()
    assert any(f"checkpoint-{saving_step}" in q["original_path"] for q in quarantined), quarantined


def test_grace_period_expiry_exits_without_hanging(run_py, tmp_path):
    out = tmp_path / "run"
    res = run_py(
        SCRIPT,
        ["--output-dir", out, "--max-steps", MAX_STEPS, "--act", "signal", "--act-step", 4,
         "--slow-save", 60, "--grace", 1.5],
        timeout=45,
    )  # fmt: skip
    assert res.returncode == 143, res.stderr[-3000:]
    assert "did not finish within 1.5 s of SIGTERM" in res.stderr, res.stderr[-2000:]
    assert res.seconds < 40
    assert committed_steps(out) == []
    assert "AFTER TRAIN" not in res.stdout


def test_exception_in_forward_saves_last_completed_step_then_reraises(run_py, tmp_path, reference_weights):
    out = tmp_path / "run"
    res = run_py(
        SCRIPT, ["--output-dir", out, "--max-steps", MAX_STEPS, "--act", "forward-exception", "--act-step", 8]
    )
    assert res.returncode == 1, res.stderr[-3000:]
    assert "RuntimeError: injected failure in the forward pass of step 8" in res.stderr  # the original error
    assert "AFTER TRAIN" not in res.stdout
    assert committed_steps(out) == [7]
    assert read_manifest(out / "checkpoint-7").reason == "exception:RuntimeError"
    # The forward pass of step 8 drew from the RNG before failing; the checkpoint holds the generators as they
    # were at the end of step 7, so the restart is exact.
    finish_and_compare(run_py, out, tmp_path, reference_weights)


def test_exception_from_a_callback_saves_and_reraises(run_py, tmp_path):
    out = tmp_path / "run"
    res = run_py(
        SCRIPT, ["--output-dir", out, "--max-steps", MAX_STEPS, "--act", "exception", "--act-step", 7]
    )
    assert res.returncode == 1, res.stderr[-3000:]
    assert "RuntimeError: injected failure after step 7" in res.stderr
    assert "AFTER TRAIN" not in res.stdout
    assert committed_steps(out) == [7]
    assert "RuntimeError escaped training at step 7: saving an emergency checkpoint" in res.stderr


def test_exception_inside_optimizer_update_saves_nothing(run_py, tmp_path):
    out = tmp_path / "run"
    res = run_py(
        SCRIPT,
        ["--output-dir", out, "--max-steps", MAX_STEPS, "--act", "optimizer-exception", "--act-step", 6],
    )
    assert res.returncode == 1
    assert "injected failure inside the optimizer update of step 6" in res.stderr
    assert "half-updated" in res.stderr
    assert committed_steps(out) == []


def test_keyboard_interrupt_escaping_training_saves_last_step(run_py, tmp_path):
    out = tmp_path / "run"
    res = run_py(
        SCRIPT,
        ["--output-dir", out, "--max-steps", MAX_STEPS, "--act", "keyboard-interrupt", "--act-step", 6],
    )
    assert res.returncode != 0
    assert "KeyboardInterrupt" in res.stderr
    assert committed_steps(out) == [5]  # raised at the beginning of step 6: step 5 is the last completed one


def test_existing_handler_is_chained_and_restored(run_py, tmp_path):
    marker = tmp_path / "user_handler.txt"
    out = tmp_path / "run"
    res = run_py(
        SCRIPT,
        [
            "--output-dir",
            out,
            "--max-steps",
            MAX_STEPS,
            "--act",
            "signal",
            "--act-step",
            3,
            "--user-handler",
            marker,
        ],
    )
    assert res.returncode == 143, res.stderr[-3000:]
    assert marker.read_text() == "user handler saw SIGTERM\n"
    assert committed_steps(out) == [3]
    done = run_py(SCRIPT, ["--output-dir", tmp_path / "other", "--max-steps", 4, "--user-handler", marker])
    assert done.returncode == 0
    assert "HANDLER RESTORED" in done.stdout


def test_enable_jit_checkpoint_is_bypassed_not_doubled(run_py, tmp_path):
    out = tmp_path / "run"
    res = run_py(
        SCRIPT, ["--output-dir", out, "--max-steps", MAX_STEPS, "--act", "signal", "--act-step", 4, "--jit"]
    )
    assert res.returncode == 143, res.stderr[-3000:]
    assert "enable_jit_checkpoint=True: aegis-ckpt handles SIGTERM itself" in res.stderr
    assert committed_steps(out) == [4]
    assert not list(out.rglob("checkpoint-is-incomplete.txt"))
    time.sleep(3.5)  # the JIT handler's 3 s timer would have fired by now in a process that kept running
    assert [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-4"]
    # After a normal run the Trainer's original SIGTERM disposition is back (the JIT callback restores it).
    done = run_py(SCRIPT, ["--output-dir", tmp_path / "other", "--max-steps", 3, "--jit"])
    assert done.returncode == 0
    assert "SIGTERM HANDLER AFTER TRAIN: <Handlers.SIG_DFL: 0>" in done.stdout
