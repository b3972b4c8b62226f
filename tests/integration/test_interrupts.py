"""Ctrl+C at any moment exits 130 with one line and no traceback, so a supervisor never takes a stop for a crash.

Real SIGINTs to real processes, on both paths: ``aegis-ckpt train`` (the CLI entry point) and a user's script with
the callback (tests/scripts/interrupt_train.py). Two moments each: before the first step (while the run is being
built, or inside ``trainer.train()`` before training begins), and a burst of further Ctrl+C after the emergency
checkpoint, while the process is on its way out.
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
from testenv import REPO_ROOT, SCRIPTS_DIR, subprocess_env, with_default_sigint

from aegis_ckpt.storage.layout import AEGIS_DIR, MANIFEST_NAME, RUN_OWNER_NAME

pytestmark = pytest.mark.slow

TINY = REPO_ROOT / "configs" / "tiny.yaml"
SMALL = [
    *("--set", "model.config={n_layer: 1, n_head: 2, n_embd: 16}"),
    *("--set", "tokenizer.vocab_size=280"),
    *("--set", "data.block_size=16"),
    *("--set", "data.max_samples=200"),
    *("--set", "training.per_device_train_batch_size=4"),
    *("--set", "training.max_steps=1000000"),
    *("--set", "checkpoint.save_interval_sec=0.2"),
]


def start(cmd: list[str], log: Path) -> subprocess.Popen:
    # faulthandler: a process that does not stop is made to print where every thread is (SIGABRT) before failing.
    env = subprocess_env({"PYTHONFAULTHANDLER": "1"})
    return subprocess.Popen(
        with_default_sigint(cmd), env=env, stdout=subprocess.DEVNULL, stderr=open(log, "w")
    )


def cli_train(out: Path, log: Path) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "aegis_ckpt",
        "train",
        str(TINY),
        *SMALL,
        "--set",
        f"training.output_dir={out}",
    ]
    return start(cmd, log)


def script_train(out: Path, log: Path, *extra: str) -> subprocess.Popen:
    return start(
        [
            sys.executable,
            str(SCRIPTS_DIR / "interrupt_train.py"),
            str(out),
            str(out.parent / "status"),
            *extra,
        ],
        log,
    )


def wait_for(predicate, proc: subprocess.Popen, log: Path, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, f"the process ended early ({proc.returncode}):\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.02)


def committed(out: Path) -> bool:
    return any((p / MANIFEST_NAME).is_file() for p in out.glob("checkpoint-*"))


def interrupt_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if "SIGINT" in line or "interrupted" in line.lower()]


def assert_clean_stop(proc: subprocess.Popen, log: Path) -> str:
    try:
        code = proc.wait(120)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)  # faulthandler writes every thread's stack to the log
        try:
            proc.wait(30)
        finally:
            proc.kill()
        raise AssertionError(f"still running 120 s after the Ctrl+C:\n{log.read_text()[-6000:]}") from None
    text = log.read_text()
    assert code == 130, f"exit {code}:\n{text[-3000:]}"
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text[-3000:]
    return text


def run_exited(out: Path) -> bool:
    try:
        record = json.loads((out / AEGIS_DIR / "run.json").read_text())
    except (OSError, ValueError):
        return False
    return record.get("session", {}).get("state") == "exited"


def burst_after_emergency_checkpoint(proc: subprocess.Popen, out: Path, log: Path) -> None:
    """One Ctrl+C once a checkpoint committed; once the emergency checkpoint is committed and the run recorded as
    ended (the process is on its way out), keep pressing until it is gone."""
    wait_for(lambda: committed(out), proc, log)
    proc.send_signal(signal.SIGINT)
    deadline = time.monotonic() + 240
    while proc.poll() is None and not run_exited(out):
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.002)
    while proc.poll() is None:
        try:
            os.kill(proc.pid, signal.SIGINT)
        except ProcessLookupError:
            break
        time.sleep(0.005)
    text = assert_clean_stop(proc, log)
    assert "emergency checkpoint" in text and "committed at step" in text, text[-3000:]


def test_cli_ctrl_c_before_the_first_step(tmp_path):
    out, log = tmp_path / "out", tmp_path / "log"
    proc = cli_train(out, log)
    # The run lease is taken first; the model, the tokenizer and the Trainer are built after it.
    wait_for(lambda: (out / AEGIS_DIR / RUN_OWNER_NAME).exists(), proc, log)
    proc.send_signal(signal.SIGINT)
    text = assert_clean_stop(proc, log)
    assert len(interrupt_lines(text)) == 1, text[-3000:]
    assert not committed(out)


def test_cli_ctrl_c_again_after_the_emergency_checkpoint(tmp_path):
    out, log = tmp_path / "out", tmp_path / "log"
    burst_after_emergency_checkpoint(cli_train(out, log), out, log)


def test_callback_ctrl_c_inside_train_before_the_first_step(tmp_path):
    out, log = tmp_path / "out", tmp_path / "log"
    proc = script_train(out, log, "--slow-begin")
    wait_for(lambda: (tmp_path / "status").exists(), proc, log)
    proc.send_signal(signal.SIGINT)
    text = assert_clean_stop(proc, log)
    assert len(interrupt_lines(text)) == 1 and "nothing to save" in text, text[-3000:]
    assert "AFTER TRAIN" not in text


def test_callback_ctrl_c_again_after_the_emergency_checkpoint(tmp_path):
    out, log = tmp_path / "out", tmp_path / "log"
    burst_after_emergency_checkpoint(script_train(out, log), out, log)
    assert "AFTER TRAIN" not in log.read_text()


def test_callback_ctrl_c_again_while_the_script_cleans_up_after_the_stop(tmp_path):
    """After the emergency checkpoint the script's own ``finally`` block runs (slowly); a Ctrl+C there is still a
    stop: 130, one more line, no traceback."""
    out, log = tmp_path / "out", tmp_path / "log"
    proc = script_train(out, log, "--slow-cleanup")
    wait_for(lambda: committed(out), proc, log)
    proc.send_signal(signal.SIGINT)
    wait_for(lambda: (tmp_path / "status.cleanup").exists(), proc, log)
    proc.send_signal(signal.SIGINT)
    text = assert_clean_stop(proc, log)
    assert "emergency checkpoint" in text and "SIGINT again while exiting: exiting with code 130" in text, (
        text
    )
