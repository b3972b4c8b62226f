"""Adopting a run that a plain Trainer started: its checkpoints pass the structural checks, get manifests and
become the resume point; a damaged one is quarantined; without the switch the hint names it."""

from __future__ import annotations

import logging

import pytest
from testenv import REPO_ROOT

from aegis_ckpt import AegisCheckpointCallback, find_resume_checkpoint
from aegis_ckpt.cli import build_parser
from aegis_ckpt.storage.commit import is_committed, read_manifest, verify_checkpoint
from aegis_ckpt.train.config import load_config


@pytest.mark.slow
def test_plain_trainer_run_is_adopted_and_continued(tmp_path, make_trainer, caplog):
    out = tmp_path / "run"
    make_trainer(out, max_steps=4, save_strategy="steps", save_steps=2).train()  # no aegis: plain checkpoints
    assert not is_committed(out / "checkpoint-4")

    with caplog.at_level(logging.WARNING, logger="aegis_ckpt"):
        assert find_resume_checkpoint(out) is None  # not adopted without the switch: the hint says how
    assert "adopt_plain=True" in caplog.text and "--adopt-plain" in caplog.text

    chosen = find_resume_checkpoint(out, adopt_plain=True)
    assert chosen == str(out / "checkpoint-4")
    for step in (2, 4):
        folder = out / f"checkpoint-{step}"
        assert verify_checkpoint(folder, full=True).ok
        assert read_manifest(folder).reason == "adopted"

    trainer = make_trainer(out, callbacks=[AegisCheckpointCallback(save_interval_sec=3600)], max_steps=6)
    trainer.train(resume_from_checkpoint=chosen)
    assert trainer.state.global_step == 6 and is_committed(out / "checkpoint-6")
    assert is_committed(out / "checkpoint-4")  # kept: adopted checkpoints are ordinary committed ones now
    assert not (out / ".aegis" / "quarantine").exists() or not any((out / ".aegis" / "quarantine").iterdir())


def test_damaged_plain_checkpoint_is_quarantined_not_adopted(tmp_path, plain_checkpoint):
    good = plain_checkpoint(tmp_path, 10)
    bad = plain_checkpoint(tmp_path, 20)
    optimizer = bad / "optimizer.pt"
    optimizer.write_bytes(optimizer.read_bytes()[:100])  # truncated
    assert find_resume_checkpoint(tmp_path, adopt_plain=True) == str(good)
    assert not bad.exists()
    assert is_committed(good)
    assert [p.name for p in (tmp_path / ".aegis" / "quarantine").iterdir()]


def test_cli_switch_and_yaml_key():
    ns = build_parser().parse_args(["train", "cfg.yaml", "--adopt-plain"])
    assert ns.adopt_plain is True
    cfg = load_config(REPO_ROOT / "configs" / "tiny.yaml", ["resume.adopt_plain=true"])
    assert cfg.resume.adopt_plain is True
