"""The integrations users train with, each killed and stopped for real.

Scenarios (``tests/scripts/integlib.py``): TRL ``SFTTrainer`` with a LoRA ``peft_config``, TRL ``DPOTrainer``, a
PEFT LoRA model under the plain ``Trainer``, ``Seq2SeqTrainer`` with generation during evaluation, gradient
accumulation whose last accumulation of an epoch is short, an epoch-based run (no ``max_steps``) with the
Trainer's own epoch-end saves, and evaluation with ``load_best_model_at_end`` under ``max_keep=1``.

For each one, in child processes (``tests/scripts/train_integration.py``):

1. a real SIGTERM during step k: exit code 143, the code after ``trainer.train()`` does not run, and step k is
   the newest committed checkpoint, saved for that signal and fully verified;
2. restart with ``find_resume_checkpoint``: it resumes at step k; SIGKILL once a newer checkpoint is committed
   and training has gone past it (so work is lost and must be redone);
3. restart again: it resumes from the newest committed checkpoint and finishes with final weights bit-identical
   (``torch.equal`` on every tensor) to an uninterrupted run without aegis-ckpt, which proves that the resumed
   runs restored weights (or the adapter), optimizer, scheduler, RNG and data position.

The uninterrupted reference runs in a child process too, beside step 1 (the two use both cores).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import integlib
import pytest
import tinylib
from testenv import SCRIPTS_DIR, subprocess_env

from aegis_ckpt.runstate.completion import read_completion
from aegis_ckpt.storage.commit import read_manifest, verify_checkpoint
from aegis_ckpt.storage.layout import MANIFEST_NAME
from aegis_ckpt.storage.store import CheckpointStore

pytestmark = pytest.mark.slow

SCRIPT = SCRIPTS_DIR / "train_integration.py"
SAVE_INTERVAL_SEC = 0.25
STEP_SLEEP_SEC = 0.1


def start(args: list) -> subprocess.Popen:
    cmd = [sys.executable, str(SCRIPT), *map(str, args)]
    return subprocess.Popen(
        cmd, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def wait(proc: subprocess.Popen, timeout: float = 180) -> tuple[int, str, str]:
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
        raise AssertionError(f"{proc.args} timed out\n{stderr[-4000:]}") from None
    return proc.returncode, stdout, stderr


def events(status: Path, kind: str) -> list[dict]:
    if not status.exists():
        return []
    lines = [json.loads(line) for line in status.read_text().splitlines() if line.strip()]
    return [e for e in lines if e["event"] == kind]


def committed_steps(out: Path) -> list[int]:
    return [e.step for e in CheckpointStore(out).committed()]


def check_scenario_layout(name: str, out: Path) -> None:
    """What each integration must leave in its committed checkpoints."""
    for entry in CheckpointStore(out).committed():
        files = set(read_manifest(entry.path).files)
        if name in ("sft_lora", "peft_lora"):
            # PEFT's layout: the adapter only, never the full model.
            assert {"adapter_model.safetensors", "adapter_config.json"} <= files, (entry.path, files)
            assert "model.safetensors" not in files, (entry.path, files)
        else:
            assert "model.safetensors" in files, (entry.path, files)
        assert {"optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json"} <= files
        if name == "seq2seq":
            assert "generation_config.json" in files


@pytest.mark.parametrize("name", list(integlib.SCENARIOS))
def test_sigterm_then_sigkill_then_exact_finish(name, tmp_path, run_py):
    scenario = integlib.SCENARIOS[name]
    k = scenario.sigterm_step
    out, status = tmp_path / "run", tmp_path / "status.jsonl"
    reference = tmp_path / "reference.pt"
    common = ["--scenario", name, "--output-dir", out, "--status", status]
    if name == "best":
        common += ["--max-keep", 1]

    # 1. SIGTERM during step k, beside the uninterrupted reference run.
    ref_proc = start(["--scenario", name, "--output-dir", tmp_path / "ref", "--plain", "--result", reference])
    code, stdout, stderr = wait(start([*common, "--sigterm-step", k]))
    ref_code, _, ref_err = wait(ref_proc)
    assert ref_code == 0, ref_err[-3000:]
    assert code == 143, stderr[-4000:]
    assert "AFTER TRAIN" not in stdout
    assert committed_steps(out)[-1] == k, (committed_steps(out), stderr[-3000:])
    folder = out / f"checkpoint-{k}"
    assert read_manifest(folder).reason == "signal:SIGTERM"
    assert verify_checkpoint(folder, full=True).ok
    assert f"Stopped by SIGTERM: emergency checkpoint {folder} committed at step {k}" in stderr

    # 2. Restart; SIGKILL once a newer checkpoint is committed and a step beyond it has ended.
    def newer_commit_then_more_steps() -> bool:
        steps = [e["step"] for e in events(status, "step")]
        newest = max(committed_steps(out), default=0)
        return newest > k and bool(steps) and steps[-1] > newest

    killed = run_py(
        SCRIPT,
        [*common, "--save-interval", SAVE_INTERVAL_SEC, "--step-sleep", STEP_SLEEP_SEC],
        kill_after=newer_commit_then_more_steps,
        poll_sec=0.005,
    )
    assert killed.killed, f"finished before the kill (rc={killed.returncode})\n{killed.stderr[-3000:]}"
    assert events(status, "start")[-1]["step"] == k
    newest = committed_steps(out)[-1]
    assert k < newest < scenario.max_steps

    # 3. Restart and finish: resumes from the newest committed checkpoint, ends bit-identical to the reference.
    result = tmp_path / "final.pt"
    done = run_py(SCRIPT, [*common, "--result", result])
    assert done.returncode == 0, done.stderr[-4000:]
    assert "AFTER TRAIN" in done.stdout
    assert events(status, "start")[-1]["step"] == newest
    assert events(status, "step")[-1]["step"] == scenario.max_steps
    mismatches = tinylib.weight_mismatches(tinylib.load_weights(result), tinylib.load_weights(reference))
    assert mismatches == [], f"{len(mismatches)} tensors differ from the uninterrupted run: {mismatches[:5]}"

    check_scenario_layout(name, out)
    assert read_completion(out)["step"] == scenario.max_steps
    assert not list(out.glob(f"checkpoint-*/{MANIFEST_NAME}.tmp*"))
    if name == "best":
        # max_keep=1 keeps the newest committed checkpoint, and the best one (step 8) on top: never pruned.
        best = out / f"checkpoint-{integlib.BEST_PEAK_STEP}"
        assert committed_steps(out) == [integlib.BEST_PEAK_STEP, scenario.max_steps]
        state = json.loads((out / f"checkpoint-{scenario.max_steps}" / "trainer_state.json").read_text())
        assert Path(state["best_model_checkpoint"]) == best
        assert "Could not locate the best model" not in done.stderr
    if name == "epochs":
        # The Trainer's own epoch-end save (save_strategy="epoch") is committed like ours.
        assert re.search(
            rf"Committed {re.escape(str(out))}/checkpoint-20 \(step 20, [0-9.]+ MB, trainer,", done.stderr
        )


def test_peft_resume_restores_adapter_and_optimizer_and_the_check_notices_a_lost_optimizer(tmp_path):
    """In process: a LoRA run stopped right after a committed save at step 6 and resumed ends bit-identical to an
    uninterrupted one; resumed from the same checkpoint without ``optimizer.pt`` (re-committed, so it verifies)
    it does not, so the bit-for-bit comparison above would catch an optimizer that is not restored."""
    import shutil

    from tinylib import StopAfterSave

    from aegis_ckpt import AegisCheckpointCallback, find_resume_checkpoint
    from aegis_ckpt.storage.commit import commit_checkpoint

    reference = integlib.build_trainer("peft_lora", tmp_path / "ref")
    reference.train()
    expected = tinylib.weights(reference.model)

    def resumed_weights(out: Path) -> dict:
        trainer = integlib.build_trainer("peft_lora", out, [AegisCheckpointCallback(save_interval_sec=1e9)])
        trainer.train(resume_from_checkpoint=find_resume_checkpoint(out))
        return tinylib.weights(trainer.model)

    out = tmp_path / "run"
    stop = [AegisCheckpointCallback(save_interval_sec=1e9), StopAfterSave(6)]
    integlib.build_trainer("peft_lora", out, stop, save_strategy="steps", save_steps=6).train()
    damaged = tmp_path / "damaged"
    shutil.copytree(out, damaged)

    assert tinylib.weight_mismatches(resumed_weights(out), expected) == []

    folder = damaged / "checkpoint-6"
    (folder / "optimizer.pt").unlink()
    (folder / MANIFEST_NAME).unlink()
    commit_checkpoint(folder, step=6, reason="test: optimizer.pt removed")
    lora = [k for k in expected if "lora_" in k]
    assert set(tinylib.weight_mismatches(resumed_weights(damaged), expected)) == set(lora)
