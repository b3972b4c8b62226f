"""``load_best_model_at_end`` with rolling retention (guarantee 5: the best checkpoint is kept on top).

The scenario (``integlib``, "best"): evaluation every 4 steps, a metric that peaks at step 8, a Trainer save every
4 steps, 16 steps, and ``max_keep=1``: rolling retention alone would delete checkpoint-8 at step 12. It must stay,
and the Trainer must load it at the end.
"""

from __future__ import annotations

import integlib
import pytest
import torch
from safetensors.torch import load_file
from tinylib import SaveRecorder

from aegis_ckpt import AegisCheckpointCallback, ConfigError

pytestmark = pytest.mark.slow

BEST = f"checkpoint-{integlib.BEST_PEAK_STEP}"


def test_best_checkpoint_survives_max_keep_1_and_is_loaded_at_the_end(tmp_path):
    recorder = SaveRecorder()  # after the aegis callback: sees each save after commit and prune
    trainer = integlib.build_trainer(
        "best", tmp_path, [AegisCheckpointCallback(save_interval_sec=1000, max_keep=1), recorder]
    )
    trainer.train()

    assert recorder.steps == [4, 8, 12, 16]
    for save in recorder.saves:
        newest = f"checkpoint-{save['step']}"
        expected = [newest] if save["step"] <= integlib.BEST_PEAK_STEP else sorted([BEST, newest])
        assert sorted(save["committed"]) == expected, save
        assert save["present"] == save["committed"], save
    assert trainer.state.best_model_checkpoint == str(tmp_path / BEST)
    # The Trainer loaded the best checkpoint at the end: the model holds checkpoint-8's weights, not step 16's.
    saved = load_file(tmp_path / BEST / "model.safetensors")
    current = trainer.model.state_dict()
    assert all(torch.equal(current[k], v) for k, v in saved.items())
    last = load_file(tmp_path / "checkpoint-16" / "model.safetensors")
    assert not all(torch.equal(current[k], v) for k, v in last.items())


def test_keep_best_false_with_load_best_model_at_end_is_refused_at_construction(tmp_path):
    with pytest.raises(ConfigError, match="load_best_model_at_end=True with keep_best=False"):
        integlib.build_trainer("best", tmp_path, [AegisCheckpointCallback(keep_best=False)])
    assert not any(tmp_path.glob("checkpoint-*"))
