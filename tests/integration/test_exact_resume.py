"""Exact resume (guarantee 3) and standard layout (guarantee 4).

A run is interrupted right after a committed save chosen by our callback's (fake) clock, resumed via
``find_resume_checkpoint``, and must end on weights bit-identical (``torch.equal`` on every tensor) to an
uninterrupted plain-Trainer run. A plain ``Trainer`` without our callback must be able to do the same from our
checkpoint.
"""

from __future__ import annotations

import pytest
import tinylib
from tinylib import ClockTicker, StopAtStep
from transformers.trainer_utils import get_last_checkpoint

from aegis_ckpt import AegisCheckpointCallback, find_resume_checkpoint
from aegis_ckpt.runstate.completion import read_completion
from aegis_ckpt.storage.commit import read_manifest

pytestmark = pytest.mark.slow


def _interrupted_run(make_trainer, output_dir, clock, stop_at: int, async_save: bool = True, **args):
    """Train with a 1 s-per-step fake clock and an interval that makes the save due exactly at ``stop_at``;
    stop right after that save is committed."""
    cb = AegisCheckpointCallback(save_interval_sec=stop_at - 0.5, clock=clock, async_save=async_save)
    trainer = make_trainer(output_dir, callbacks=[ClockTicker(clock, 1.0), cb, StopAtStep(stop_at)], **args)
    trainer.train()
    assert trainer.state.global_step == stop_at
    assert read_manifest(output_dir / f"checkpoint-{stop_at}").reason == "interval"
    return trainer


@pytest.mark.parametrize(
    "stop_at, max_steps, grad_accum",
    [
        (13, 20, 1),  # mid-epoch (10 steps per epoch)
        (10, 20, 1),  # exactly at the epoch boundary
        (3, 10, 2),  # mid-epoch with gradient accumulation (5 optimizer steps per epoch)
        (5, 10, 2),  # epoch boundary with gradient accumulation
    ],
    ids=["mid-epoch", "epoch-boundary", "grad-accum-mid-epoch", "grad-accum-epoch-boundary"],
)
@pytest.mark.parametrize("async_save", [True, False], ids=["async", "sync"])
def test_resume_is_bit_identical(
    tmp_path, make_trainer, fake_clock, reference_weights, stop_at, max_steps, grad_accum, async_save
):
    args = dict(max_steps=max_steps, gradient_accumulation_steps=grad_accum)
    _interrupted_run(make_trainer, tmp_path, fake_clock, stop_at, async_save, **args)

    resume = find_resume_checkpoint(tmp_path)
    assert resume == str(tmp_path / f"checkpoint-{stop_at}")
    trainer = make_trainer(tmp_path, callbacks=[AegisCheckpointCallback(save_interval_sec=1e6)], **args)
    trainer.train(resume_from_checkpoint=resume)

    assert trainer.state.global_step == max_steps
    assert tinylib.weight_mismatches(tinylib.weights(trainer.model), reference_weights(**args)) == []
    assert read_completion(tmp_path)["step"] == max_steps


@pytest.mark.parametrize("async_save", [True, False], ids=["async", "sync"])
def test_plain_trainer_resumes_from_our_checkpoint(
    tmp_path, make_trainer, fake_clock, reference_weights, async_save
):
    _interrupted_run(make_trainer, tmp_path, fake_clock, 13, async_save, max_steps=20)

    # The plain Trainer's own discovery finds our folder (standard layout, nothing else named checkpoint-*).
    resume = get_last_checkpoint(str(tmp_path))
    assert resume == str(tmp_path / "checkpoint-13")
    trainer = make_trainer(tmp_path, max_steps=20)  # no aegis callback at all
    assert not any(isinstance(cb, AegisCheckpointCallback) for cb in trainer.callback_handler.callbacks)
    trainer.train(resume_from_checkpoint=resume)
    assert tinylib.weight_mismatches(tinylib.weights(trainer.model), reference_weights(max_steps=20)) == []


def test_our_callback_does_not_change_the_training_math(
    tmp_path, make_trainer, fake_clock, reference_weights
):
    """Uninterrupted run with frequent saves, commits and pruning: same weights as without the callback."""
    cb = AegisCheckpointCallback(save_interval_sec=1.5, max_keep=2, clock=fake_clock)
    trainer = make_trainer(tmp_path, callbacks=[ClockTicker(fake_clock, 1.0), cb], max_steps=20)
    trainer.train()
    assert tinylib.weight_mismatches(tinylib.weights(trainer.model), reference_weights(max_steps=20)) == []
