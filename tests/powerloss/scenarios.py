"""Recorded saves that need no Trainer run (fractions of a second), shared by the path tests and the mutation
tests."""

from __future__ import annotations

from pathlib import Path

import tinylib
import torch
from crashcheck import Expect, Report, check_recording
from recorder import Recorder

from aegis_ckpt import RollingCheckpointManager
from aegis_ckpt.storage.commit import commit_checkpoint
from aegis_ckpt.storage.store import CheckpointStore


def write_trainer_like_checkpoint(folder: Path, step: int) -> None:
    """The files of a Trainer checkpoint in their real formats (safetensors from Rust, torch.save from C++, JSON
    through Python), written in place as ``Trainer._save_checkpoint`` does."""
    from safetensors.torch import save_file

    folder.mkdir()
    g = torch.Generator().manual_seed(step)
    save_file({"w": torch.randn(64, 32, generator=g)}, folder / "model.safetensors")
    torch.save({"state": {0: {"exp_avg": torch.randn(64, 32, generator=g)}}}, folder / "optimizer.pt")
    (folder / "trainer_state.json").write_text(f'{{"global_step": {step}}}', encoding="utf-8")


def record_in_place_commit(out: Path) -> list[tuple[Recorder, Expect]]:
    """A save written straight into ``checkpoint-2`` and committed there (the shape of a synchronous Trainer
    save), next to a committed ``checkpoint-1``."""
    out.mkdir(parents=True, exist_ok=True)
    store = CheckpointStore(out)
    store.mark_managed()
    write_trainer_like_checkpoint(out / "checkpoint-1", 1)
    commit_checkpoint(out / "checkpoint-1", step=1)
    store.audit.append("commit", step=1)
    with Recorder(out) as rec:
        write_trainer_like_checkpoint(out / "checkpoint-2", 2)
        commit_checkpoint(out / "checkpoint-2", step=2)
        store.audit.append("commit", step=2)
        rec.mark("done")
    return [(rec, Expect(new_step=2, done_mark="done"))]


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
