"""The final-model export of ``aegis-ckpt train``: published through the store, durable before completion."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aegis_ckpt.cli import main as cli_main
from aegis_ckpt.storage import commit
from aegis_ckpt.storage.commit import is_committed
from aegis_ckpt.train import runner

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "tiny.yaml"
SMALL = [
    "--set",
    "model.config={n_layer: 1, n_head: 2, n_embd: 16}",
    "--set",
    "tokenizer.vocab_size=300",
    "--set",
    "data.block_size=16",
    "--set",
    "data.max_samples=40",
    "--set",
    "training.per_device_train_batch_size=4",
]

pytestmark = pytest.mark.slow


def test_final_model_is_durable_before_the_run_is_recorded_complete(tmp_path, monkeypatch):
    """A power cut must never leave completed.json without a durable final_model/: the rename that puts
    final_model/ in place is followed by an fsync of the output directory, and only then is completion written."""
    out = tmp_path / "run"
    events: list[tuple[str, bool]] = []
    real_fsync_dir = commit.fsync_dir
    real_mark_completed = runner.mark_completed

    def fsync_dir(path):
        if Path(path) == out:
            events.append(("fsync output_dir", is_committed(out / "final_model")))
        return real_fsync_dir(path)

    def mark_completed(output_dir, **kw):
        events.append(("completed", is_committed(out / "final_model")))
        return real_mark_completed(output_dir, **kw)

    monkeypatch.setattr(commit, "fsync_dir", fsync_dir)
    monkeypatch.setattr(runner, "mark_completed", mark_completed)
    (out / "final_model").mkdir(parents=True)  # an older export of an interrupted finish is replaced
    (out / "final_model" / "stale.txt").write_text("old")

    code = cli_main(
        ["train", str(TINY), *SMALL, "--set", f"training.output_dir={out}", "--set", "training.max_steps=2"]
    )

    assert code == 0
    assert events[-1] == ("completed", True)
    durable = [i for i, event in enumerate(events) if event == ("fsync output_dir", True)]
    assert durable and durable[0] < len(events) - 1, events
    assert not (out / "final_model" / "stale.txt").exists()
    assert not (out / ".aegis" / "staging-final").exists()
    assert json.loads((out / ".aegis" / "completed.json").read_text())["step"] == 2
