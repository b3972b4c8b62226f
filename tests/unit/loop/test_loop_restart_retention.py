"""A custom loop stopped between a commit and its retention leaves more than ``max_keep`` committed
checkpoints; ``load_latest()`` applies retention once after loading, keeping the one it loaded, so repeated
crashes never pile checkpoints up."""

from __future__ import annotations

import torch

from aegis_ckpt import RollingCheckpointManager
from aegis_ckpt.runstate.saves import SaveTail
from aegis_ckpt.storage.store import CheckpointStore


def _committed_steps(out) -> list[int]:
    return [e.step for e in CheckpointStore(out).committed()]


def test_load_latest_prunes_what_crashes_left_beyond_max_keep(tmp_path, monkeypatch):
    out = tmp_path / "out"
    model = torch.nn.Linear(2, 2)
    with monkeypatch.context() as crashed_before_retention:
        crashed_before_retention.setattr(SaveTail, "prune", lambda self, newest: [])
        with RollingCheckpointManager(out, max_keep=2) as ckpt:
            ckpt.register_model(model)
            for step in (1, 2, 3, 4):
                with torch.no_grad():
                    model.weight.fill_(float(step))
                ckpt.step(step)
                ckpt.save_checkpoint("manual", keep=False)  # in the rolling window
    assert _committed_steps(out) == [1, 2, 3, 4]

    restarted = torch.nn.Linear(2, 2)
    with RollingCheckpointManager(out, max_keep=2) as ckpt:
        ckpt.register_model(restarted)
        state = ckpt.load_latest()
    assert state is not None and state["step"] == 4
    assert torch.equal(restarted.weight, torch.full((2, 2), 4.0))
    assert _committed_steps(out) == [3, 4]
