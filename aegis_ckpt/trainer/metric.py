"""The evaluation metric of a checkpoint, for retention's "best k" (``keep_best_k``, Lightning's ``save_top_k``).

A checkpoint carries the metric only when the Trainer evaluated at its very step: an older evaluation measured
other weights. The name and direction are the Trainer's ``metric_for_best_model`` and ``greater_is_better``
(``eval_loss``, lower is better, when no metric is set), recorded in the manifest so that retention stays a pure
function of the manifests.
"""

from __future__ import annotations

import math
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
