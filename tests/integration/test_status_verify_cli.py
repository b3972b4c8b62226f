"""`aegis-ckpt status`, `verify` and `resume-path` on real checkpoints: what they report, their exit codes, and that
they never move anything."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest
import torch

from aegis_ckpt import RollingCheckpointManager
from aegis_ckpt.cli import main as cli_main

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
if str(SCRIPTS) not in sys.path:
    sys.path.insert(0, str(SCRIPTS))

import custom_loop  # noqa: E402


@pytest.fixture(autouse=True)
def restore_aegis_logger():
    pkg = logging.getLogger("aegis_ckpt")
    saved = (pkg.handlers[:], pkg.propagate, pkg.level)
    yield
    pkg.handlers[:], pkg.propagate, pkg.level = saved


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("status") / "run"
    model, tokenizer, data = custom_loop.build()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    with RollingCheckpointManager(out, max_keep=3) as ckpt:
        ckpt.register_model(model, tokenizer, optimizer=optimizer)
        for step in (1, 2, 3):
            ckpt.step(step, epoch=0)
            ckpt.save_checkpoint("epoch", keep=False)
    return out


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if ".aegis" not in p.parts)


def cli(capsys, *args: str) -> tuple[int, str]:
    capsys.readouterr()
    rc = cli_main(list(args))
    return rc, capsys.readouterr().out


def test_status_table_and_json(run_dir, capsys):
    rc, text = cli(capsys, "status", str(run_dir))
    assert rc == 0
    assert "Run:          stopped cleanly (closed)" in text
    assert "Resume from:  checkpoint-3" in text
    header = next(line for line in text.splitlines() if line.startswith("STEP"))
    assert header.split() == [
        "STEP",
        "CHECKPOINT",
        "AGE",
        "SIZE",
        "COMMITTED",
        "VERIFIED",
        "(quick)",
        "REASON",
        "TAG",
    ]
    assert "Saves:        3, median" in text and "Audit log:" in text
    rc, raw = cli(capsys, "status", str(run_dir), "--json", "--full")
    report = json.loads(raw)
    assert [c["name"] for c in report["checkpoints"]] == ["checkpoint-3", "checkpoint-2", "checkpoint-1"]
    assert all(c["committed"] and c["verified"] and c["verify_mode"] == "full" for c in report["checkpoints"])
    assert report["save_stats"]["saves"] == 3 and report["save_stats"]["last_size_bytes"] > 0


def test_verify_and_resume_path_are_read_only(run_dir, tmp_path, capsys):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(run_dir, out)
    assert cli(capsys, "verify", str(out))[0] == 0
    # same size, other bytes: only the full check sees it
    weights = out / "checkpoint-3" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    (out / "checkpoint-9").mkdir()  # a save that never committed
    (out / "checkpoint-9" / "optimizer.pt").write_bytes(b"partial")
    before = listing(out)

    rc, text = cli(capsys, "verify", str(out))
    assert rc == 1 and "checkpoint-9: BAD: uncommitted" in text and "checkpoint-3: ok" in text
    rc, text = cli(capsys, "verify", str(out), "--full")
    assert rc == 1 and "checkpoint-3: BAD: model.safetensors checksum mismatch" in text
    assert "a resume would use checkpoint-2" in text
    rc, text = cli(capsys, "resume-path", str(out))
    assert (rc, text) == (0, f"{out / 'checkpoint-2'}\n")
    rc, text = cli(capsys, "resume-path", str(out), "--quick")
    assert (rc, text) == (0, f"{out / 'checkpoint-3'}\n")
    rc, text = cli(capsys, "status", str(out), "--full")
    assert rc == 0 and "NO" in text and "checksum mismatch" in text

    assert listing(out) == before
    assert not (out / ".aegis" / "quarantine").exists()


def test_empty_and_missing_directories(tmp_path, capsys):
    assert cli(capsys, "resume-path", str(tmp_path)) == (1, "")
    rc, text = cli(capsys, "verify", str(tmp_path))
    assert rc == 1 and "no checkpoint folders" in text
    for command in ("status", "verify", "resume-path"):
        capsys.readouterr()
        assert cli_main([command, str(tmp_path / "missing")]) == 2
        assert "is not a directory" in capsys.readouterr().err
