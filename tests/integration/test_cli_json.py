"""``--json`` of verify, resume-path and preflight through the real entry point: parseable, same exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from testenv import REPO_ROOT, subprocess_env

pytestmark = pytest.mark.slow  # real entry point in subprocesses


def aegis_json(*args: str) -> tuple[int, dict]:
    proc = subprocess.run(
        [sys.executable, "-m", "aegis_ckpt", *args, "--json"],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def test_verify_and_resume_path_json(tmp_path, committed_checkpoint):
    committed_checkpoint(tmp_path, 10)
    newest = committed_checkpoint(tmp_path, 20)
    code, data = aegis_json("resume-path", str(tmp_path))
    assert code == 0 and data["resume_from"] == str(newest) and data["verify"] == "full"

    (newest / "optimizer.pt").write_bytes(b"damaged")
    code, data = aegis_json("verify", str(tmp_path), "--full")
    assert code == 1 and data["newest_ok"] is False
    assert data["resume_from"] == "checkpoint-10"
    assert [r["name"] for r in data["checkpoints"]] == ["checkpoint-20", "checkpoint-10"]

    empty = tmp_path / "fresh"
    empty.mkdir()
    code, data = aegis_json("resume-path", str(empty))
    assert code == 1 and data["resume_from"] is None


def test_preflight_json(tmp_path):
    code, data = aegis_json(
        "preflight", str(REPO_ROOT / "configs" / "tiny.yaml"), "--set", f"training.output_dir={tmp_path}/run"
    )
    assert code == 0 and data["passed"] is True and data["refused"] == []
    assert {c["name"] for c in data["checks"]} >= {"disk", "gpu"}
    assert all(c["status"] in ("OK", "WARNING", "REFUSED") for c in data["checks"])
