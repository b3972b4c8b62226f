"""Retention keeps the best k checkpoints by ``metric_for_best_model`` beside the newest ``max_keep`` (Lightning's
``save_top_k``), with a real Trainer evaluating every 4 steps; the metric peaks at step 8 (integlib "best")."""

from __future__ import annotations

import integlib

from aegis_ckpt import AegisCheckpointCallback
from aegis_ckpt.storage.commit import read_manifest


def test_best_two_by_metric_and_the_newest_survive(tmp_path):
    callback = AegisCheckpointCallback(save_interval_sec=1000, max_keep=1, keep_best_k=2)
    trainer = integlib.build_trainer("best", tmp_path, [callback], load_best_model_at_end=False)
    trainer.train()
    # eval_peak: step 4 -> -4, 8 -> 0, 12 -> -4, 16 -> -8 (higher is better): best two are 8 and 12 (tie: newer).
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == [
        "checkpoint-12",
        "checkpoint-16",
        "checkpoint-8",
    ]
    metric = read_manifest(tmp_path / "checkpoint-8").meta["metric"]
    assert metric == {"name": "eval_peak", "value": 0.0, "greater_is_better": True}
    assert trainer.state.best_model_checkpoint == str(tmp_path / "checkpoint-8")  # the Trainer agrees
