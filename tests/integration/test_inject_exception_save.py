"""`aegis-ckpt run --inject` at full strength: the injected callback reaches the Trainer exactly as one passed to
``Trainer(callbacks=[...])`` does. An unmodified script (tests/scripts/plain_hf_failing.py: no aegis import, a
dataset that raises on a corrupt sample at step 6) gets an emergency checkpoint of its last completed step, and
the script's own error is what the user sees, with no advice to edit code."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from testenv import SCRIPTS_DIR, subprocess_env

from aegis_ckpt.storage.commit import verify_checkpoint

FAIL_AT_STEP = 6


@pytest.mark.slow
def test_exception_in_an_injected_unmodified_script_commits_an_emergency_checkpoint(tmp_path):
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "aegis_ckpt",
        "run",
        "--inject",
        "--max-restarts",
        "0",
        "--save-interval",
        "3600",
        "--",
        sys.executable,
        str(SCRIPTS_DIR / "plain_hf_failing.py"),
        str(out),
        str(FAIL_AT_STEP),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(), timeout=600)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0, text[-3000:]
    # The script's own error, as Python shows it.
    assert "ValueError: corrupt sample at index" in text, text[-3000:]
    assert "Traceback (most recent call last)" in text
    # The emergency checkpoint of the last completed step, committed and intact.
    # (the data loader reads one batch ahead, so the error may surface one step early)
    found = re.search(r"ValueError escaped training at step (\d+): saving an emergency checkpoint", text)
    assert found, text[-3000:]
    saved = int(found.group(1))
    assert FAIL_AT_STEP - 2 <= saved < FAIL_AT_STEP
    assert f"Committed {out / f'checkpoint-{saved}'} (step {saved}" in text
    folder = out / f"checkpoint-{saved}"
    result = verify_checkpoint(folder)
    assert result.ok, result.problems
    assert result.manifest.reason == "exception:ValueError"
    state = json.loads((folder / "trainer_state.json").read_text())
    assert state["global_step"] == saved
    # The callback reached the Trainer: no advice to edit code the user does not have.
    assert "pass the callback to Trainer(callbacks=[...])" not in text
    assert "injected AegisCheckpointCallback into Trainer" in text
