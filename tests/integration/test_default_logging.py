"""The README's "use it in your own Trainer script" snippet, pasted into a script that sets up no logging, shows
one line per save and per resume (tests/unit/test_logsetup.py covers configured logging, replicas and levels)."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from testenv import REPO_ROOT, subprocess_env

PRELUDE = """\
import sys
import tinylib

tinylib.quiet_and_single_threaded()
model = tinylib.build_model()
ds = tinylib.TinyLMDataset()
args = tinylib.training_args(sys.argv[1], max_steps=int(sys.argv[2]), **eval(sys.argv[3]))
{setup}
"""


def readme_snippet() -> str:
    """The Python block under the README's "Use it in your own Trainer script" heading, as written there."""
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Use it in your own Trainer script", 1)[1]
    block = re.search(r"```python\n(.*?)```", section, re.S)
    assert block, "the README section has no python block"
    return block.group(1)


def run_script(tmp_path: Path, out: Path, steps: int, setup: str = "", args: str = "{}", env=None) -> str:
    script = tmp_path / "my_train.py"
    script.write_text(PRELUDE.format(setup=textwrap.dedent(setup)) + readme_snippet(), encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, str(script), str(out), str(steps), args],
        env=subprocess_env(env),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stderr


@pytest.mark.slow
def test_readme_snippet_shows_save_and_resume_lines_without_logging_setup(tmp_path):
    out = tmp_path / "run"
    first = run_script(tmp_path, out, steps=3)
    commits = [line for line in first.splitlines() if "Committed" in line]
    assert len(commits) == 1, first  # one line per save: the final step
    assert commits[0].startswith("[aegis-ckpt] INFO Committed ") and "checkpoint-3" in commits[0]
    assert "No intact checkpoint" in first

    second = run_script(tmp_path, out, steps=5)
    resumed = [line for line in second.splitlines() if "Resuming from" in line]
    assert len(resumed) == 1 and resumed[0].startswith("[aegis-ckpt] INFO Resuming from "), second
    assert "checkpoint-3" in resumed[0]
    assert sum("Committed" in line and "checkpoint-5" in line for line in second.splitlines()) == 1
