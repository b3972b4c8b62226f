"""Synchronous saves through the direct writer (``trainer.directsave``): the weights and the optimizer state are
hashed while they are written, so the commit reads back only the small files; the manifest's digests still equal
a separate hash of the files on disk. Where the Trainer's save does more than write files (here: its own
rotation with ``save_total_limit``), the Trainer's own save runs instead."""

from __future__ import annotations

import os

import pytest
from tinylib import ClockTicker, StopAtStep

from aegis_ckpt import AegisCheckpointCallback, AsyncOptions, find_resume_checkpoint
from aegis_ckpt.storage import commit
from aegis_ckpt.storage.commit import hash_file, read_manifest, verify_checkpoint

pytestmark = pytest.mark.slow


def test_sync_save_is_hashed_while_written_and_verifies(tmp_path, make_trainer, fake_clock, monkeypatch):
    read_back: list[str] = []
    real = commit.hash_file
    monkeypatch.setattr(
        commit, "hash_file", lambda p, **kw: read_back.append(os.path.basename(p)) or real(p, **kw)
    )
    cb = AegisCheckpointCallback(
        save_interval_sec=4.5, clock=fake_clock, async_options=AsyncOptions(enabled=False)
    )
    trainer = make_trainer(
        tmp_path, callbacks=[ClockTicker(fake_clock, 1.0), cb, StopAtStep(5)], max_steps=20
    )
    trainer.train()

    folder = tmp_path / "checkpoint-5"
    assert cb._sync.direct.saves == 1
    assert "model.safetensors" not in read_back and "optimizer.pt" not in read_back
    assert "trainer_state.json" in read_back  # the small files are hashed by the commit's read as before
    manifest = read_manifest(folder)
    for name in ("model.safetensors", "optimizer.pt"):
        assert manifest.files[name] == real(folder / name)
    assert verify_checkpoint(folder, full=True).ok
    assert find_resume_checkpoint(tmp_path) == str(folder)


def test_a_subclass_that_overrides_the_save_keeps_the_trainers_own_save(tmp_path, make_trainer, fake_clock):
    """A subclass that adds a file to every checkpoint: the direct writer would leave it out, so it stays out."""
    cb = AegisCheckpointCallback(
        save_interval_sec=4.5, clock=fake_clock, async_options=AsyncOptions(enabled=False)
    )
    plain = make_trainer(tmp_path, max_steps=20)

    class WithExtraFile(type(plain)):
        def _save_checkpoint(self, model, trial):
            super()._save_checkpoint(model, trial)
            folder = os.path.join(self.args.output_dir, f"checkpoint-{self.state.global_step}")
            with open(os.path.join(folder, "extra_state.json"), "w") as f:
                f.write("{}")

    trainer = WithExtraFile(
        model=plain.model,
        args=plain.args,
        train_dataset=plain.train_dataset,
        callbacks=[ClockTicker(fake_clock, 1.0), cb, StopAtStep(5)],
    )
    trainer.train()
    assert cb._sync.direct.saves == 0
    assert "_save_checkpoint is overridden" in cb._sync.direct.last_refusal
    folder = tmp_path / "checkpoint-5"
    manifest = read_manifest(folder)
    assert "extra_state.json" in manifest.files, sorted(os.listdir(folder))
    assert manifest.files["model.safetensors"] == hash_file(folder / "model.safetensors")
