"""Recorded saves that need no Trainer run (fractions of a second), shared by the path tests and the mutation
tests."""

from __future__ import annotations

from pathlib import Path

import tinylib
import torch
from crashcheck import Expect, Report, check_recording
from recorder import Recorder

from aegis_ckpt import RollingCheckpointManager


def record_loop_saves(out: Path) -> list[tuple[Recorder, Expect]]:
    """Two saves of a custom loop (``RollingCheckpointManager``, ``max_keep=1``): the first into an empty
    directory (it also takes the run lease, creates the audit log, the store marker and the staging folder), the
    second prunes the first once it committed."""
    out.mkdir(parents=True, exist_ok=True)
    model = tinylib.build_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    recordings = []
    with Recorder(out) as first:
        manager = RollingCheckpointManager(out, max_keep=1, save_interval_sec=1e9)
        manager.register_model(model, optimizer=optimizer)
        manager.step(1)
        manager.save_checkpoint("rolling", keep=False)
        first.mark("done")
    recordings.append((first, Expect(new_step=1, done_mark="done")))
    try:
        model(torch.zeros(1, 4, dtype=torch.long), labels=torch.zeros(1, 4, dtype=torch.long)).loss.backward()
        optimizer.step()
        with Recorder(out) as second:
            manager.step(2)
            manager.save_checkpoint("rolling", keep=False)
            second.mark("done")
        recordings.append((second, Expect(new_step=2, done_mark="done")))
    finally:
        manager.close()
    return recordings


def check_all(recordings, scratch: Path, *, max_problems: int = 5) -> list[Report]:
    return [
        check_recording(rec, expect, scratch / str(n), max_problems=max_problems)
        for n, (rec, expect) in enumerate(recordings)
    ]
