"""No custom loop crash-loops on one folder: a checkpoint that verifies (its manifest matches every byte) but
does not load is passed over for the next older one, and set aside with the reason once that one loaded. When no
checkpoint loads (the user changed the model), nothing is moved and the first error is raised."""

from __future__ import annotations

import pytest
import torch

from aegis_ckpt import RollingCheckpointManager
from aegis_ckpt.resume import scan_checkpoints
from aegis_ckpt.storage.commit import commit_checkpoint, verify_checkpoint
from aegis_ckpt.storage.store import CheckpointStore


def _two_checkpoints(out):
    """checkpoint-1 and checkpoint-2, whose optimizer file is not a torch archive but is committed."""
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    weights = {}
    with RollingCheckpointManager(out) as ckpt:
        ckpt.register_model(model, optimizer=optimizer)
        for step in (1, 2):
            with torch.no_grad():
                model.weight.fill_(float(step))
            ckpt.step(step)
            weights[step] = model.weight.detach().clone()
            ckpt.save_checkpoint("manual")
    newest = out / "checkpoint-2"
    (newest / "optimizer.pt").write_bytes(b"not a torch archive" * 10)
    commit_checkpoint(newest, step=2, reason="test")
    assert verify_checkpoint(newest).ok
    assert scan_checkpoints(out, quarantine=False).chosen == str(newest)
    return weights


def test_a_verified_checkpoint_that_does_not_load_is_set_aside_and_the_older_one_used(tmp_path, caplog):
    out = tmp_path / "out"
    weights = _two_checkpoints(out)
    model = torch.nn.Linear(2, 2)
    with RollingCheckpointManager(out) as ckpt:
        ckpt.register_model(model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
        with caplog.at_level("ERROR"):
            state = ckpt.load_latest()
    assert state is not None and state["step"] == 1
    assert torch.equal(model.weight, weights[1])
    assert "checkpoint-2 verified but could not be loaded" in caplog.text
    records = CheckpointStore(out).quarantined()
    assert len(records) == 1 and "could not be loaded" in records[0]["reason"], records
    assert records[0]["original_path"] == str(out / "checkpoint-2")
    assert scan_checkpoints(out, quarantine=False).chosen == str(out / "checkpoint-1")


def test_when_no_checkpoint_loads_nothing_is_moved_and_the_error_is_raised(tmp_path):
    out = tmp_path / "out"
    _two_checkpoints(out)
    other = torch.nn.Linear(3, 3)  # another model: no checkpoint of this run fits it
    with RollingCheckpointManager(out) as ckpt:
        ckpt.register_model(other)
        with pytest.raises(RuntimeError, match="size mismatch"):
            ckpt.load_latest()
    assert CheckpointStore(out).quarantined() == []
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
