"""A custom loop's Hugging Face model is saved in shards of ``CheckpointOptions.max_shard_bytes`` with the
Trainer's index, every shard in the manifest, and restored from them."""

from __future__ import annotations

import json

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from aegis_ckpt import CheckpointOptions, RollingCheckpointManager
from aegis_ckpt.storage.commit import read_manifest
from aegis_ckpt.storage.layout import MODEL_INDEX, MODEL_WEIGHTS


def _model(seed: int):
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=128, n_positions=64))


def test_a_loop_checkpoint_is_sharded_and_restores(tmp_path):
    saved = _model(1)
    options = CheckpointOptions(max_shard_bytes=40_000)
    with RollingCheckpointManager(tmp_path / "out", options=options) as ckpt:
        ckpt.register_model(saved)
        ckpt.step(1)
        folder = ckpt.save_checkpoint("manual")
    shards = sorted(p.name for p in folder.glob("model-*-of-*.safetensors"))
    assert len(shards) >= 3 and not (folder / MODEL_WEIGHTS).exists()
    assert sorted(set(json.loads((folder / MODEL_INDEX).read_text())["weight_map"].values())) == shards
    assert {*shards, MODEL_INDEX} <= set(read_manifest(folder).files)

    restored = _model(2)
    with RollingCheckpointManager(tmp_path / "out", options=options) as ckpt:
        ckpt.register_model(restored)
        assert ckpt.load_latest()["step"] == 1
    for key, tensor in saved.state_dict().items():
        assert torch.equal(restored.state_dict()[key], tensor), key
