"""An asynchronous save writes the same checkpoint as the Trainer's own save of the same step.

Two identical runs stop after a save at step 5: one saved by the Trainer (``async_save=False``), one from a
snapshot written in the background. Both folders must hold the same files with the same content (tensors equal
bit for bit, the same optimizer/scheduler/RNG state, the same trainer state), so a plain Trainer resumes from
either in the same way.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from tinylib import ClockTicker, StopAtStep

from aegis_ckpt import AegisCheckpointCallback, AsyncOptions
from aegis_ckpt.storage.commit import read_manifest
from aegis_ckpt.storage.layout import MANIFEST_NAME

pytestmark = pytest.mark.slow


def _save_step_5(
    make_trainer, out, clock_factory, async_save: bool, writer: str = "thread", direct_sync: bool = False
):
    """The checkpoint of step 5. A synchronous one is the Trainer's own ``_save_checkpoint`` unless
    ``direct_sync`` (then the direct writer writes it: ``trainer.directsave``)."""
    clock = clock_factory()
    options = AsyncOptions(enabled=async_save, writer=writer, direct_sync_saves=direct_sync)
    cb = AegisCheckpointCallback(save_interval_sec=4.5, clock=clock, async_options=options)
    trainer = make_trainer(out, callbacks=[ClockTicker(clock, 1.0), cb, StopAtStep(5)], max_steps=20)
    trainer.train()
    folder = out / "checkpoint-5"
    assert read_manifest(folder).meta["async"] is async_save
    if async_save:
        assert cb._async.uses_process is (writer == "process")
    elif direct_sync:
        assert cb._sync.direct.saves == 1  # written by the direct writer, not by the Trainer's own save
    return folder


def _equal(a, b, where: str) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _equal(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _equal(x, y, f"{where}[{i}]")
    elif hasattr(a, "shape") and hasattr(a, "dtype"):  # numpy arrays (numpy RNG state)
        assert (a == b).all(), where
    else:
        assert a == b, where


@pytest.mark.parametrize("writer", ["process", "thread", "direct_sync"])
def test_async_checkpoint_matches_the_trainers_own(tmp_path, make_trainer, fake_clock, writer):
    """``direct_sync``: a synchronous save written by the direct writer, against the Trainer's own."""
    new_clock = type(fake_clock)  # a fresh clock per run (the fixture's class, not an import of conftest)
    sync = _save_step_5(make_trainer, tmp_path / "sync", new_clock, async_save=False)
    if writer == "direct_sync":
        asyn = _save_step_5(make_trainer, tmp_path / "direct", new_clock, async_save=False, direct_sync=True)
    else:
        asyn = _save_step_5(make_trainer, tmp_path / "async", new_clock, async_save=True, writer=writer)

    files = sorted(p.name for p in sync.iterdir() if p.name != MANIFEST_NAME)
    assert files == sorted(p.name for p in asyn.iterdir() if p.name != MANIFEST_NAME)
    assert {
        "model.safetensors",
        "optimizer.pt",
        "scheduler.pt",
        "rng_state.pth",
        "trainer_state.json",
    } <= set(files)

    _equal(load_file(sync / "model.safetensors"), load_file(asyn / "model.safetensors"), "model")
    # The same tensors through the same serialiser: the weight files are identical byte for byte.
    assert (sync / "model.safetensors").read_bytes() == (asyn / "model.safetensors").read_bytes()
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
        _equal(
            torch.load(sync / name, weights_only=False),
            torch.load(asyn / name, weights_only=False),
            name,
        )
    for name in ("config.json", "generation_config.json"):
        if (sync / name).exists():
            assert json.loads((sync / name).read_text()) == json.loads((asyn / name).read_text()), name
    states = [json.loads((f / "trainer_state.json").read_text()) for f in (sync, asyn)]
    for state in states:
        # StopAtStep sets should_training_stop after our step-end snapshot but before the Trainer's own save: the
        # one field that differs by when the state was taken (and the Trainer resets it on resume).
        state["stateful_callbacks"]["TrainerControl"]["args"].pop("should_training_stop")
    assert states[0] == states[1]


def test_async_refused_when_ram_cannot_hold_the_snapshot(tmp_path, make_trainer, fake_clock, caplog):
    """Asking for 99% of RAM to stay free makes any snapshot too big: the save due at step 5 is the Trainer's
    synchronous one, and the log says why, once."""
    cb = AegisCheckpointCallback(
        save_interval_sec=4.5, clock=fake_clock, async_options=AsyncOptions(min_free_ram_fraction=0.99)
    )
    trainer = make_trainer(
        tmp_path, callbacks=[ClockTicker(fake_clock, 1.0), cb, StopAtStep(5)], max_steps=20
    )
    with caplog.at_level("WARNING", logger="aegis_ckpt"):
        trainer.train()
    assert read_manifest(tmp_path / "checkpoint-5").meta["async"] is False
    refusals = [
        r.getMessage() for r in caplog.records if "Saving synchronously from now on" in r.getMessage()
    ]
    assert len(refusals) == 1 and "GiB of RAM" in refusals[0], refusals


def test_ram_check_runs_when_a_save_is_near_not_every_step(tmp_path, make_trainer, fake_clock, monkeypatch):
    """The check costs about a millisecond: between saves it runs at most every RAM_CHECK_PERIOD_SEC of the
    run's clock, and always at the step end where a save comes due."""
    from aegis_ckpt.trainer.asyncsave import saver as asyncsave

    checks: list[int] = []
    real = asyncsave.estimate_snapshot_bytes
    monkeypatch.setattr(asyncsave, "estimate_snapshot_bytes", lambda *a: checks.append(1) or real(*a))
    cb = AegisCheckpointCallback(save_interval_sec=10.5, clock=fake_clock)
    # 0.25 s of clock per step: 10 steps between checks; the save comes due at step 42.
    trainer = make_trainer(
        tmp_path, callbacks=[ClockTicker(fake_clock, 0.25), cb, StopAtStep(42)], max_steps=100
    )
    trainer.train()
    assert read_manifest(tmp_path / "checkpoint-42").meta["async"] is True
    assert 5 <= len(checks) <= 8, len(checks)  # about one per 8 steps and one for the save; not 42
