"""The evaluation metric of a checkpoint, for retention's "best k" (``keep_best_k``, Lightning's ``save_top_k``).

A checkpoint carries the metric only when the Trainer evaluated at its very step: an older evaluation measured
other weights. The name and direction are the Trainer's ``metric_for_best_model`` and ``greater_is_better``
(``eval_loss``, lower is better, when no metric is set), recorded in the manifest so that retention stays a pure
function of the manifests.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def checkpoint_metric(args, step: int, evaluation: tuple[int, dict] | None) -> dict[str, Any] | None:
    """``{"name", "value", "greater_is_better"}`` for the checkpoint of ``step``, from the last evaluation
    ``(its step, its metrics)`` as ``on_evaluate`` saw it; None when that evaluation was of another step."""
    if evaluation is None or evaluation[0] != step:
        return None
    name = getattr(args, "metric_for_best_model", None) or "loss"
    key = name if name.startswith("eval_") else f"eval_{name}"
    value = evaluation[1].get(key)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value):
        return None
    greater = getattr(args, "greater_is_better", None)
    if greater is None:
        greater = not key.endswith("loss")
    return {"name": key, "value": float(value), "greater_is_better": bool(greater)}


class EvaluationTracker:
    """The evaluation bookkeeping of the callback: the last ``on_evaluate`` metrics, the metric a checkpoint
    of a given step carries (best-k retention), and the Trainer's best checkpoint that retention must keep."""

    def __init__(self) -> None:
        self._evaluation: tuple[int, dict] | None = None  # (step, metrics) of the last evaluation

    def record(self, step: int, metrics: dict | None) -> None:
        """Remember the metrics of an evaluation at ``step`` (the metric of a checkpoint saved at that step)."""
        if metrics is not None:
            self._evaluation = (step, dict(metrics))

    def metric(self, trainer, step: int) -> dict[str, Any] | None:
        """The metric the checkpoint of ``step`` records in its manifest (None: not evaluated at that step)."""
        trainer_args = trainer.args if trainer is not None else None
        return checkpoint_metric(trainer_args, step, self._evaluation)

    @staticmethod
    def best_checkpoint(trainer, *, keep_best: bool) -> list[Path]:
        """The Trainer's ``best_model_checkpoint``, which retention never prunes with ``keep_best``."""
        best = trainer.state.best_model_checkpoint if trainer is not None else None
        return [Path(best)] if keep_best and best else []
