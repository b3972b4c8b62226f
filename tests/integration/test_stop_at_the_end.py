"""A stop between the final checkpoint's commit and the completion record never leads to an extra step.

``aegis-ckpt train`` (8 steps, constant learning rate, one save: the final one) is stopped after ``checkpoint-8``
committed: by SIGTERM as training ends, or by SIGKILL while the final model is exported. The restart resumes
from ``checkpoint-8`` and must not train step 9 or write ``checkpoint-9``; its final model must hold exactly the
weights of step 8 of the stopped run, which trained without interruption up to there.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_train_command import SMALL, TINY, cli_env

pytestmark = pytest.mark.slow


def _train_args(out: Path) -> list[str]:
    return [
        sys.executable, "-m", "aegis_ckpt", "train", str(TINY), *SMALL,
        "--set", f"training.output_dir={out}",
        "--set", "training.max_steps=8",
        "--set", "training.lr_scheduler_type=constant",
        "--set", "training.warmup_steps=0",
        "--set", "checkpoint.save_interval_sec=3600",
    ]  # fmt: skip


def _stop_when(out: Path, signum: int, ready) -> int:
    """Run training and send ``signum`` as soon as ``ready(out)`` holds; the exit code."""
    child = subprocess.Popen(
        _train_args(out), env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        while child.poll() is None and not ready(out):
            pass
        if child.poll() is None:
            child.send_signal(signum)
        child.communicate(timeout=300)
    finally:
        child.kill()
    return child.returncode


def _final_committed(out: Path) -> bool:
    return (out / "checkpoint-8" / "aegis_manifest.json").exists()


def _exporting(out: Path) -> bool:
    return (out / ".aegis" / "staging-final").exists()


@pytest.mark.parametrize(
    "signum, ready",
    [(signal.SIGTERM, _final_committed), (signal.SIGKILL, _exporting)],
    ids=["sigterm", "sigkill"],
)
def test_restart_after_a_stop_at_the_end_trains_no_extra_step(tmp_path, signum, ready):
    out = tmp_path / "run"
    code = _stop_when(out, signum, ready)
    assert _final_committed(out), f"the stop came before the final commit (exit code {code})"
    state_before = (out / "checkpoint-8" / "trainer_state.json").read_bytes()
    step8 = load_file(str(out / "checkpoint-8" / "model.safetensors"))

    again = subprocess.run(_train_args(out), env=cli_env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-8"]
    assert (out / "checkpoint-8" / "trainer_state.json").read_bytes() == state_before
    assert json.loads((out / ".aegis" / "completed.json").read_text())["step"] == 8
    final = load_file(str(out / "final_model" / "model.safetensors"))
    assert final.keys() == step8.keys() and all(torch.equal(final[k], step8[k]) for k in step8)
    assert "Training already finished" in again.stderr
