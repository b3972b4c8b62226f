"""The custom-loop managers mirror their commits too, and a manager on a fresh directory resumes from the
remote copy (same weights, same step)."""

from __future__ import annotations

import pytest
import torch
from remotelib import remote_steps

from aegis_ckpt import RollingCheckpointManager

pytestmark = pytest.mark.slow


def _model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Linear(8, 4)


def test_rolling_manager_mirrors_and_resumes_from_remote(tmp_path, bucket_url, s3):
    model = _model(0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    manager = RollingCheckpointManager(tmp_path / "a", max_keep=1, remote_url=bucket_url, remote_max_keep=1)
    manager.register_model(model, optimizer=optimizer)
    for step in range(1, 4):
        model(torch.randn(2, 8)).sum().backward()
        optimizer.step()
        optimizer.zero_grad()
        manager.step(step)
        if step < 3:
            manager.save_checkpoint(f"s{step}", keep=False)
    final = manager.finish()  # waits (bounded) for the last upload
    assert remote_steps(s3, bucket_url) == {3: True}  # remote retention kept one; the newest

    again = _model(1)
    other = RollingCheckpointManager(tmp_path / "b", remote_url=bucket_url)
    other.register_model(again, optimizer=torch.optim.SGD(again.parameters(), lr=0.1))
    state = other.load_latest()
    assert state["step"] == 3 and other.last_checkpoint == tmp_path / "b" / final.name
    assert all(
        torch.equal(a, b)
        for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True)
    )
    other.close()
