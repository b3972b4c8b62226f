"""The scripts in ``examples/`` run as documented, with small ``--max-steps``, and continue on a rerun.

Each one is run as a user would run it, in a child process from the repository root.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from testenv import REPO_ROOT, subprocess_env

from aegis_ckpt.storage.commit import read_manifest
from aegis_ckpt.storage.store import CheckpointStore

pytestmark = pytest.mark.slow

EXAMPLES = REPO_ROOT / "examples"


def committed(out) -> list[int]:
    return [e.step for e in CheckpointStore(out).committed()]


def test_plain_trainer_example_runs_and_continues(tmp_path, run_py):
    out = tmp_path / "plain"
    first = run_py(
        EXAMPLES / "plain_trainer.py", ["--output-dir", out, "--max-steps", 6, "--save-interval", 1]
    )
    assert first.returncode == 0, first.stderr[-3000:]
    assert "done: step 6" in first.stdout
    assert committed(out)[-1] == 6
    assert (out / "final_model" / "model.safetensors").is_file()
    # A rerun with a larger budget continues from the committed final step instead of starting over.
    second = run_py(EXAMPLES / "plain_trainer.py", ["--output-dir", out, "--max-steps", 9])
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"Resuming from {out / 'checkpoint-6'}" in second.stderr
    assert "done: step 9" in second.stdout and committed(out)[-1] == 9


def test_trl_sft_lora_example_saves_the_adapter(tmp_path, run_py):
    out = tmp_path / "sft"
    res = run_py(EXAMPLES / "trl_sft_lora.py", ["--output-dir", out, "--max-steps", 6, "--save-interval", 1])
    assert res.returncode == 0, res.stderr[-3000:]
    assert "done: step 6" in res.stdout
    files = set(read_manifest(out / "checkpoint-6").files)
    assert {"adapter_model.safetensors", "adapter_config.json", "optimizer.pt"} <= files
    assert "model.safetensors" not in files
    assert (out / "final_adapter" / "adapter_model.safetensors").is_file()


def test_custom_loop_example_runs_and_continues(tmp_path, run_py):
    out = tmp_path / "loop"
    first = run_py(
        EXAMPLES / "custom_loop.py", ["--output-dir", out, "--max-steps", 20, "--save-interval", 0.2]
    )
    assert first.returncode == 0, first.stderr[-3000:]
    assert "fresh start" in first.stdout and "done: step 20" in first.stdout
    assert 20 in committed(out)
    second = run_py(EXAMPLES / "custom_loop.py", ["--output-dir", out, "--max-steps", 30])
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming at step 20" in second.stdout and "done: step 30" in second.stdout


@pytest.mark.distributed
def test_ddp_example_under_accelerate_launch_with_the_shipped_config(tmp_path):
    out = tmp_path / "ddp"
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(EXAMPLES / "accelerate_2proc_cpu.yaml"),
        str(EXAMPLES / "ddp_trainer.py"), "--output-dir", str(out), "--max-steps", "8", "--save-interval", "0.5",
    ]  # fmt: skip
    res = subprocess.run(
        cmd, env=subprocess_env(), cwd=REPO_ROOT, capture_output=True, text=True, timeout=180
    )
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    assert "done: step 8, world size 2" in res.stdout
    manifest = read_manifest(out / "checkpoint-8")
    assert manifest.meta["world_size"] == 2
    assert {"rng_state_0.pth", "rng_state_1.pth"} <= set(manifest.files)
