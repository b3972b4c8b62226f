"""`aegis-ckpt train` on a finished run, as a user runs it (real processes, the shipped tiny config shrunk with
--set): the same max_steps is "already finished" (also after a stop between the final commit and the completion
record), a raised one (`--set training.max_steps=M`) continues from the newest intact checkpoint to the weights of
a straight run to M, and the launchers' preflight agrees with the training on which of the two it is."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "tiny.yaml"
SMALL = [
    "--set",
    "model.config={n_layer: 2, n_head: 2, n_embd: 32}",
    "--set",
    "tokenizer.vocab_size=300",
    "--set",
    "data.block_size=32",
    "--set",
    "data.max_samples=400",
    "--set",
    "training.per_device_train_batch_size=4",
    "--set",
    "training.logging_steps=5",
    # A schedule that does not depend on max_steps: a straight run to M and a run to N continued to M then
    # see the same learning rate at every step (a decaying schedule is stretched to the new end instead).
    "--set",
    "training.lr_scheduler_type=constant",
    "--set",
    "checkpoint.save_interval_sec=3600",
]

pytestmark = pytest.mark.slow


def aegis(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    return subprocess.run(
        [sys.executable, "-m", "aegis_ckpt", *args], capture_output=True, text=True, env=env, timeout=timeout
    )


def train(out: Path, max_steps: int) -> subprocess.CompletedProcess:
    proc = aegis(
        "train",
        str(TINY),
        *SMALL,
        "--set",
        f"training.output_dir={out}",
        "--set",
        f"training.max_steps={max_steps}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def preflight(out: Path, max_steps: int) -> subprocess.CompletedProcess:
    return aegis(
        "preflight",
        str(TINY),
        *SMALL,
        "--set",
        f"training.output_dir={out}",
        "--set",
        f"training.max_steps={max_steps}",
    )


def completed_step(out: Path) -> int:
    return json.loads((out / ".aegis" / "completed.json").read_text())["step"]


def checkpoint_bytes(out: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(out)): p.read_bytes() for p in sorted(out.glob("checkpoint-*/**/*")) if p.is_file()
    }


def test_raised_max_steps_continues_a_finished_run_to_the_weights_of_a_straight_run(tmp_path):
    out, ref = tmp_path / "run", tmp_path / "straight"
    train(out, 12)
    assert completed_step(out) == 12

    # Same max_steps: nothing trained, nothing changed; also after a stop before the completion record.
    before = checkpoint_bytes(out)
    again = train(out, 12)
    assert "already finished at step 12" in again.stdout and "Continuing" not in again.stderr
    assert "--set training.max_steps=N with N > 12" in again.stdout
    (out / ".aegis" / "completed.json").unlink()
    unmarked = train(out, 12)
    assert "Continuing finished run" not in unmarked.stderr and "Training already finished" in unmarked.stderr
    assert checkpoint_bytes(out) == before and completed_step(out) == 12

    # The launchers' preflight: exit 3 ("already finished") for 12 and for less, a pass for 20.
    for max_steps, code in ((12, 3), (8, 3), (20, 0)):
        checked = preflight(out, max_steps)
        assert checked.returncode == code, (max_steps, checked.stdout, checked.stderr)
    assert "the last step is now 20: training continues" in checked.stdout

    # A newer half-written folder, as a power cut leaves it: the continuation must not start from it.
    half = out / "checkpoint-15"
    shutil.copytree(out / "checkpoint-12", half)
    (half / "aegis_manifest.json").unlink()
    weights = half / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])

    more = train(out, 20)
    assert more.stderr.count("Continuing finished run from step 12 to 20") == 1, more.stderr[-3000:]
    assert "training finished at step 20" in more.stdout
    assert completed_step(out) == 20 and not half.exists()

    train(ref, 20)
    a = load_file(str(out / "final_model" / "model.safetensors"))
    b = load_file(str(ref / "final_model" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
