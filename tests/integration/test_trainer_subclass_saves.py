"""A Trainer subclass that adds files to its checkpoints keeps them.

Trainers built on ``transformers.Trainer`` add state to a checkpoint by overriding its save methods: TRL's
GRPOTrainer writes ``entropy_ctrl_state.json`` after ``super()._save_checkpoint`` when adaptive entropy is on,
and users save EMA weights or extra heads the same way. Asynchronous saves write the checkpoint without calling
those methods, so for such a trainer they must step aside for the Trainer's own (synchronous) save; otherwise
the extra state would be missing from every checkpoint, silently, and a resumed run would continue without it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import tinylib
from tinylib import ClockTicker
from transformers import Trainer

from aegis_ckpt import AegisCheckpointCallback
from aegis_ckpt.storage.commit import read_manifest
from aegis_ckpt.storage.store import CheckpointStore

pytestmark = pytest.mark.slow

EXTRA = "extra_state.json"


class ExtraStateTrainer(Trainer):
    """Like GRPOTrainer with adaptive entropy: one more file in every checkpoint folder."""

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        folder = Path(self.args.output_dir) / f"checkpoint-{self.state.global_step}"
        (folder / EXTRA).write_text(json.dumps({"step": self.state.global_step}))


def test_extra_files_of_a_save_method_override_are_in_every_committed_checkpoint(
    tmp_path, fake_clock, caplog
):
    callback = AegisCheckpointCallback(save_interval_sec=2.5, max_keep=10, clock=fake_clock)
    trainer = ExtraStateTrainer(
        model=tinylib.build_model(),
        args=tinylib.training_args(tmp_path, max_steps=8),
        train_dataset=tinylib.TinyLMDataset(),
        callbacks=[ClockTicker(fake_clock, 1.0), callback],
    )
    with caplog.at_level(logging.INFO, logger="aegis_ckpt"):
        trainer.train()
    committed = CheckpointStore(tmp_path).committed()
    assert [e.step for e in committed] == [3, 6, 8]
    for entry in committed:
        assert EXTRA in read_manifest(entry.path).files, entry.path
        assert json.loads((entry.path / EXTRA).read_text()) == {"step": entry.step}
    assert "ExtraStateTrainer._save_checkpoint" in caplog.text  # the reason for the synchronous save is named
