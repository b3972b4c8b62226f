"""No run crash-loops on one folder: ``aegis-ckpt train`` meets a checkpoint that verifies (its manifest matches
every byte) but that the Trainer cannot load. It sets the folder aside with the reason, continues from the next
older checkpoint, and finishes; the next start does not meet the folder again."""

from __future__ import annotations

import json

import pytest
from testenv import REPO_ROOT

from aegis_ckpt.cli import main as cli_main
from aegis_ckpt.resume import scan_checkpoints
from aegis_ckpt.storage.commit import commit_checkpoint, verify_checkpoint
from aegis_ckpt.storage.store import CheckpointStore

TINY = REPO_ROOT / "configs" / "tiny.yaml"
SMALL = [
    *("--set", "model.config={n_layer: 1, n_head: 2, n_embd: 16}"),
    *("--set", "tokenizer.vocab_size=280"),
    *("--set", "data.block_size=16"),
    *("--set", "data.max_samples=200"),
    *("--set", "training.per_device_train_batch_size=4"),
    *("--set", "training.logging_steps=1000"),
    *("--set", "checkpoint.save_interval_sec=0.001"),
    *("--set", "async_save.enabled=false"),
]


@pytest.mark.slow
def test_a_verified_checkpoint_that_fails_to_load_is_set_aside_and_the_older_one_used(tmp_path, capsys):
    out = tmp_path / "out"
    args = ["train", str(TINY), *SMALL, "--set", f"training.output_dir={out}"]
    assert cli_main([*args, "--set", "training.max_steps=4"]) == 0
    steps = [e.step for e in CheckpointStore(out).committed()]
    assert steps[-2:] == [3, 4], steps
    (out / ".aegis" / "completed.json").unlink()
    # An optimizer state the Trainer cannot unpickle, committed: every byte matches the manifest.
    newest = out / "checkpoint-4"
    (newest / "optimizer.pt").write_bytes(b"not a torch archive" * 10)
    commit_checkpoint(newest, step=4, reason="test")
    assert verify_checkpoint(newest).ok
    assert scan_checkpoints(out, quarantine=False).chosen == str(newest)

    capsys.readouterr()
    assert cli_main([*args, "--set", "training.max_steps=6"]) == 0
    err = capsys.readouterr().err
    assert "checkpoint-4 verified but could not be loaded" in err, err[-3000:]
    assert "trying the next older checkpoint" in err
    assert f"Continuing from {out / 'checkpoint-3'}" in err
    records = CheckpointStore(out).quarantined()
    assert len(records) == 1 and "could not be loaded" in records[0]["reason"], records
    assert records[0]["original_path"] == str(newest)
    assert json.loads((out / ".aegis" / "completed.json").read_text())["step"] == 6
    state = json.loads((out / "checkpoint-6" / "trainer_state.json").read_text())
    assert state["global_step"] == 6
