"""`aegis-ckpt run --inject` with an unmodified Hugging Face script (tests/scripts/plain_hf_train.py): a plain
Trainer, no aegis import, `trainer.train()` without a resume argument. SIGKILLed mid-run, the supervisor restarts
it, and the injected hook resumes it from its newest intact checkpoint to the same weights as a run that was
never interrupted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

from aegis_ckpt.unattended.inject import choose_resume, injection_env

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "tests" / "scripts" / "plain_hf_train.py"
MAX_STEPS = 300


def env(**extra: str) -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    e.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", **extra)
    return e


def supervised(out: Path, log: Path, *extra: str) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "aegis_ckpt",
        "run",
        "--inject",
        "--save-interval",
        "0.3",
        "--backoff",
        "0.2",
    ]
    cmd += [*extra, "--", sys.executable, str(SCRIPT), str(out), str(MAX_STEPS)]
    return subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env())


def committed(out: Path) -> list[Path]:
    return [p for p in out.glob("checkpoint-*") if (p / "aegis_manifest.json").exists()]


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / f"checkpoint-{MAX_STEPS}" / "model.safetensors"))


@pytest.mark.slow
def test_unmodified_script_is_killed_and_resumes_from_newest_intact(tmp_path):
    ref_out, ref_log = tmp_path / "ref", tmp_path / "ref.log"
    ref = supervised(ref_out, ref_log)
    assert ref.wait(300) == 0, ref_log.read_text()[-3000:]

    out, log = tmp_path / "killed", tmp_path / "killed.log"
    sup = supervised(out, log)
    try:
        deadline = time.monotonic() + 120
        while not committed(out):
            assert sup.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint was committed"
            time.sleep(0.05)
        children = psutil.Process(sup.pid).children()
        assert len(children) == 1
        children[0].send_signal(signal.SIGKILL)
        killed_at = max(int(p.name.split("-")[1]) for p in committed(out))
    finally:
        code = sup.wait(300)
    text = log.read_text()
    assert code == 0, text[-3000:]
    assert killed_at < MAX_STEPS, "the run finished before it could be killed: raise MAX_STEPS"

    # The injection said what it did, the kill was seen as a failure, and attempt 2 resumed.
    assert "injected AegisCheckpointCallback into Trainer" in text
    assert "no committed checkpoint in" in text  # attempt 1 started from the beginning
    assert "attempt 1: exit code 137 (SIGKILL)" in text and "attempt 2: exit code 0" in text
    resumed = [line for line in text.splitlines() if "resuming from" in line and "newest intact" in line]
    assert len(resumed) == 1, text[-3000:]
    resumed_step = int(resumed[0].split("checkpoint-")[1].split(",")[0])
    assert resumed_step >= killed_at
    first_beat = [line for line in text.splitlines() if "attempt 2: first heartbeat" in line]
    assert first_beat and f"step {resumed_step}," in first_beat[0], (
        "attempt 2 did not start at the checkpoint"
    )
    assert f"plain script done at global_step {MAX_STEPS}" in text

    state = json.loads((out / f"checkpoint-{MAX_STEPS}" / "trainer_state.json").read_text())
    assert state["global_step"] == MAX_STEPS
    assert json.loads((out / ".aegis" / "completed.json").read_text())["step"] == MAX_STEPS
    a, b = final_weights(ref_out), final_weights(out)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "resume was not exact"


def test_hook_is_inert_without_the_env_var(tmp_path):
    """The sitecustomize on the path does nothing unless AEGIS_INJECT=1, and chains to an existing one."""
    other = tmp_path / "other_site"
    other.mkdir()
    (other / "sitecustomize.py").write_text("import os\nos.environ['CHAINED'] = 'yes'\n")
    hook_env = injection_env({"PYTHONPATH": str(other)}, {"save_interval_sec": 5})
    probe = (
        "import os, sys; "
        "print(os.environ.get('CHAINED'), "
        "any(type(f).__name__ == '_TrainerImportHook' for f in sys.meta_path), "
        "'transformers' in sys.modules)"
    )
    pythonpath = hook_env["PYTHONPATH"] + os.pathsep + str(REPO)
    on = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        env={**env(), **hook_env, "PYTHONPATH": pythonpath},
        timeout=60,
    )
    assert on.stdout.split() == ["yes", "True", "False"], on.stderr
    off = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        env={**env(), **hook_env, "PYTHONPATH": pythonpath, "AEGIS_INJECT": "0"},
        timeout=60,
    )
    assert off.stdout.split() == ["yes", "False", "False"], off.stderr


def test_choose_resume_rules(tmp_path):
    out = tmp_path / "out"
    newest = str(out / "checkpoint-40")

    def found(_):
        return newest

    def none(_):
        return None

    assert choose_resume(None, out, found)[0] == newest
    assert choose_resume(False, out, found)[0] == newest
    assert choose_resume(None, out, none)[0] is None
    assert choose_resume(True, out, found)[0] == newest
    assert choose_resume(True, out, none)[0] is True
    # what run_clm.py passes (get_last_checkpoint: highest number, unchecked) is replaced by the newest intact
    value, message = choose_resume(str(out / "checkpoint-50"), out, found)
    assert value == newest and "instead" in message
    # a checkpoint elsewhere is the script's explicit choice
    elsewhere = str(tmp_path / "pretrained" / "checkpoint-7")
    assert choose_resume(elsewhere, out, found)[0] == elsewhere
