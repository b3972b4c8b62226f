"""Weights split into shards (``CheckpointOptions.max_shard_bytes``): every save path writes the Trainer's
sharded layout (``model-0000k-of-0000n.safetensors`` plus ``model.safetensors.index.json``), the manifest covers
all of it, a plain Trainer without aegis-ckpt resumes from it bit-identically, and a checkpoint with one shard
missing or damaged is passed over by ``find_resume_checkpoint``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import tinylib
from tinylib import ClockTicker, StopAtStep

from aegis_ckpt import AegisCheckpointCallback, AsyncOptions, CheckpointOptions, find_resume_checkpoint
from aegis_ckpt.storage.commit import read_manifest, verify_checkpoint
from aegis_ckpt.storage.layout import MODEL_INDEX, MODEL_WEIGHTS

pytestmark = pytest.mark.slow

SHARD_BYTES = 40_000
"""The tiny GPT-2 holds about 120 kB of weights (tied lm_head stored once): 3 to 4 shards of this size."""
MAX_STEPS = 20
WRITERS = ("thread", "process", "direct_sync")


def _run(out: Path, writer: str, fake_clock, stop_at: int) -> AegisCheckpointCallback:
    """Train with saves every 5 steps (a fake clock: 1 s per step, a 4.5 s interval) and stop at ``stop_at``.
    ``direct_sync``: synchronous saves through the direct writer; otherwise asynchronous ones."""
    if writer == "direct_sync":
        async_options = AsyncOptions(enabled=False)
    else:
        async_options = AsyncOptions(writer=writer)
    cb = AegisCheckpointCallback(
        clock=fake_clock,
        options=CheckpointOptions(
            save_interval_sec=4.5, max_shard_bytes=SHARD_BYTES, save_on_train_end=False
        ),
        async_options=async_options,
    )
    trainer = tinylib.make_trainer(
        out, [ClockTicker(fake_clock, 1.0), cb, StopAtStep(stop_at)], max_steps=MAX_STEPS
    )
    trainer.train()
    return cb


def _shards(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("model-*-of-*.safetensors"))


@pytest.mark.parametrize("writer", WRITERS)
def test_every_save_path_writes_shards_and_the_trainers_index(tmp_path, fake_clock, writer):
    cb = _run(tmp_path, writer, fake_clock, stop_at=5)
    folder = tmp_path / "checkpoint-5"
    manifest = read_manifest(folder)
    assert manifest.meta["async"] is (writer != "direct_sync")
    if writer == "direct_sync":
        assert cb._sync.direct.saves == 1  # the direct writer wrote it, not the Trainer's own save
    else:
        assert cb._async.uses_process is (writer == "process")

    shards = _shards(folder)
    assert len(shards) >= 3, shards
    assert not (folder / MODEL_WEIGHTS).exists()
    index = json.loads((folder / MODEL_INDEX).read_text())
    assert sorted(set(index["weight_map"].values())) == shards
    data_bytes = 0
    for name in shards:
        header_len = int.from_bytes((folder / name).read_bytes()[:8], "little")
        data_bytes += (folder / name).stat().st_size - 8 - header_len
        assert (folder / name).stat().st_size - 8 - header_len <= SHARD_BYTES, name
    assert index["metadata"]["total_size"] == data_bytes  # the Trainer's format: bytes of tensor data
    assert {*shards, MODEL_INDEX} <= set(manifest.files)
    assert verify_checkpoint(folder, full=True).ok
    assert find_resume_checkpoint(tmp_path) == str(folder)


@pytest.mark.parametrize("writer", ["thread", "direct_sync"])
def test_a_plain_trainer_resumes_from_shards_bit_identically(tmp_path, fake_clock, writer, reference_weights):
    """The Trainer's own ``_load_from_checkpoint`` reads the index and loads shard by shard; no aegis-ckpt in
    the resumed run."""
    _run(tmp_path, writer, fake_clock, stop_at=5)
    folder = tmp_path / "checkpoint-5"
    assert len(_shards(folder)) >= 3

    plain = tinylib.make_trainer(tmp_path, max_steps=MAX_STEPS)
    plain.train(resume_from_checkpoint=str(folder))

    assert plain.state.global_step == MAX_STEPS
    expected = reference_weights(max_steps=MAX_STEPS)
    assert tinylib.weight_mismatches(tinylib.weights(plain.model), expected) == []


def _remove_shard(folder: Path) -> None:
    (folder / _shards(folder)[1]).unlink()


def _flip_shard_byte(folder: Path) -> None:
    path = folder / _shards(folder)[-1]
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01  # in the tensor data: the shard still parses and loads
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def two_sharded_checkpoints(tmp_path_factory) -> Path:
    """A run with sharded checkpoints at steps 5 and 10 (synchronous saves: none is deferred)."""
    out = tmp_path_factory.mktemp("sharded") / "out"
    _run(out, "direct_sync", tinylib.FakeClock(), stop_at=10)
    assert len(_shards(out / "checkpoint-10")) >= 3 and (out / "checkpoint-5").is_dir()
    return out


@pytest.mark.parametrize("damage", [_remove_shard, _flip_shard_byte], ids=["missing", "flipped"])
def test_a_checkpoint_with_a_bad_shard_is_passed_over(tmp_path, two_sharded_checkpoints, damage):
    out = tmp_path / "out"
    shutil.copytree(two_sharded_checkpoints, out, symlinks=True)
    damage(out / "checkpoint-10")

    assert not verify_checkpoint(out / "checkpoint-10", full=True).ok
    assert find_resume_checkpoint(out) == str(out / "checkpoint-5")
    assert not (out / "checkpoint-10").exists()  # set aside in quarantine, not resumed from
