"""Finished means finished: a rerun through the callback trains no step and changes no checkpoint, raising
``max_steps`` (or ``num_train_epochs``) continues to the weights of a straight run, and ``resume_from_checkpoint=True`` means the newest intact checkpoint.

The tiny run has 10 optimizer steps per epoch, so ``max_steps=6`` ends mid-epoch: exactly the case in which the
plain Trainer, resumed from its final checkpoint, runs one step past the end.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tinylib import weight_mismatches, weights
from transformers import TrainerCallback

from aegis_ckpt import AegisCheckpointCallback, find_resume_checkpoint
from aegis_ckpt.runstate.completion import completion_path, read_completion
from aegis_ckpt.storage.commit import is_committed
from aegis_ckpt.storage.store import CheckpointStore

CONSTANT = dict(lr_scheduler_type="constant")


def _snapshot(out: Path) -> dict[str, bytes]:
    """Every file of every checkpoint folder, by relative path: 'changes no checkpoint' compares these."""
    return {
        str(p.relative_to(out)): p.read_bytes()
        for folder in sorted(out.glob("checkpoint-*"))
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _finished_run(out: Path, make_trainer, max_steps: int = 6):
    trainer = make_trainer(
        out,
        callbacks=[AegisCheckpointCallback(save_interval_sec=3600, max_keep=2)],
        max_steps=max_steps,
        **CONSTANT,
    )
    trainer.train()
    assert is_committed(out / f"checkpoint-{max_steps}")
    return trainer


@pytest.mark.parametrize("resume", ["found", "true"])
def test_rerun_of_a_finished_run_trains_no_step(tmp_path, make_trainer, caplog, resume):
    _finished_run(tmp_path, make_trainer)
    before = _snapshot(tmp_path)
    completion_path(tmp_path).unlink()  # e.g. stopped between the final commit and the completion record
    rerun = make_trainer(
        tmp_path,
        callbacks=[AegisCheckpointCallback(save_interval_sec=3600, max_keep=2)],
        max_steps=6,
        **CONSTANT,
    )
    steps = []
    rerun.add_callback(type("Steps", (), {"on_step_end": lambda *a, **k: steps.append(1)}))
    with caplog.at_level(logging.WARNING, logger="aegis_ckpt"):
        argument = find_resume_checkpoint(tmp_path) if resume == "found" else True
        output = rerun.train(resume_from_checkpoint=argument)
    assert steps == [] and output.global_step == 6 and rerun.state.global_step == 6
    assert _snapshot(tmp_path) == before  # not one byte of any checkpoint changed, none added or pruned
    assert any("Training already finished" in r.getMessage() for r in caplog.records)
    assert read_completion(tmp_path)["step"] == 6
    saved = load_file(str(tmp_path / "checkpoint-6" / "model.safetensors"))
    model = weights(rerun.model)
    assert all(torch.equal(model[k], saved[k]) for k in saved)  # the script sees the finished model


class _RecordAtFirstStep(TrainerCallback):
    """What the completion record says while the continuation trains (read at its first step)."""

    def __init__(self, out: Path):
        self.out, self.seen = out, []

    def on_step_end(self, args, state, control, **kwargs):
        if not self.seen:
            self.seen.append(read_completion(self.out))


@pytest.mark.parametrize("more", [dict(max_steps=9), dict(max_steps=-1, num_train_epochs=2)])
def test_raising_the_last_step_continues_a_finished_run(
    tmp_path, make_trainer, reference_weights, caplog, more
):
    """``max_steps`` 6 -> 9 (mid-epoch), or an epoch-based run 1 -> 2 epochs (10 -> 20 steps): the continuation
    says so once, withdraws the completion record while it trains, and ends with the weights of a straight run."""
    if "num_train_epochs" in more:
        trainer = make_trainer(
            tmp_path,
            callbacks=[AegisCheckpointCallback(save_interval_sec=3600, max_keep=2)],
            max_steps=-1,
            num_train_epochs=1,
            **CONSTANT,
        )
        trainer.train()
        finished, target = 10, 20
    else:
        _finished_run(tmp_path, make_trainer)
        finished, target = 6, 9
    assert read_completion(tmp_path)["step"] == finished
    more_trainer = make_trainer(
        tmp_path,
        callbacks=[AegisCheckpointCallback(save_interval_sec=3600, max_keep=2)],
        **more,
        **CONSTANT,
    )
    during = _RecordAtFirstStep(tmp_path)
    more_trainer.add_callback(during)
    with caplog.at_level(logging.INFO, logger="aegis_ckpt"):
        more_trainer.train(resume_from_checkpoint=True)
    lines = [r.getMessage() for r in caplog.records if "Continuing finished run" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith(
        f"Continuing finished run from step {finished} to {target}"
    )
    assert during.seen == [None]  # withdrawn: a stop now resumes instead of reporting "already finished"
    assert more_trainer.state.global_step == target and is_committed(tmp_path / f"checkpoint-{target}")
    assert read_completion(tmp_path)["step"] == target
    assert weight_mismatches(weights(more_trainer.model), reference_weights(**more, **CONSTANT)) == []


def test_equal_or_lower_max_steps_trains_no_step(tmp_path, make_trainer, caplog):
    _finished_run(tmp_path, make_trainer)
    before = _snapshot(tmp_path)
    for max_steps in (6, 4):
        rerun = make_trainer(
            tmp_path,
            callbacks=[AegisCheckpointCallback(save_interval_sec=3600, max_keep=2)],
            max_steps=max_steps,
            **CONSTANT,
        )
        with caplog.at_level(logging.INFO, logger="aegis_ckpt"):
            output = rerun.train(resume_from_checkpoint=True)
        assert output.global_step == 6 and output.metrics.get("already_finished") is True
    assert _snapshot(tmp_path) == before and read_completion(tmp_path)["step"] == 6
    assert not any("Continuing finished run" in r.getMessage() for r in caplog.records)


def test_resume_true_takes_the_newest_intact_checkpoint(tmp_path, make_trainer, reference_weights):
    """A half-written newer folder (truncated weights, no manifest) is what ``get_last_checkpoint`` would pick."""
    _finished_run(tmp_path, make_trainer, max_steps=4)
    half = tmp_path / "checkpoint-7"
    shutil.copytree(tmp_path / "checkpoint-4", half)
    (half / "aegis_manifest.json").unlink()
    data = (half / "model.safetensors").read_bytes()
    (half / "model.safetensors").write_bytes(data[: len(data) // 3])
    go_on = make_trainer(
        tmp_path,
        callbacks=[AegisCheckpointCallback(save_interval_sec=3600, max_keep=2)],
        max_steps=8,
        **CONSTANT,
    )
    go_on.train(resume_from_checkpoint=True)
    assert go_on.state.global_step == 8
    assert weight_mismatches(weights(go_on.model), reference_weights(max_steps=8, **CONSTANT)) == []
    assert [r["original_path"] for r in CheckpointStore(tmp_path).quarantined()] == [str(half)]
