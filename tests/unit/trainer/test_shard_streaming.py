"""A save's extra memory is one weight shard, not the whole model: each shard ``save_pretrained`` hands over is
written (and hashed) before it builds the next one.

The measurement: ``save_pretrained`` builds each shard from ``tensor.contiguous()``, which for a non-contiguous
(or offloaded) weight is a fresh copy. Here every such call made by transformers returns a real copy held in
numpy memory, which ``tracemalloc`` counts (torch's own allocations it does not see). A writer that
kept the shards until ``save_pretrained`` returned would hold every copy at once.
"""

from __future__ import annotations

import json
import sys
import tracemalloc

import pytest
import torch
from safetensors.torch import load_file

from aegis_ckpt.storage.aligned import AlignedBuffer
from aegis_ckpt.storage.commit import hash_file
from aegis_ckpt.storage.layout import MODEL_INDEX
from aegis_ckpt.trainer.asyncsave.hflayout import write_snapshot_files
from aegis_ckpt.trainer.asyncsave.snapshot import TrainerSnapshot

SHARD_BYTES = 150_000


@pytest.fixture
def model():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(n_layer=4, n_head=2, n_embd=64, vocab_size=256, n_positions=64)
    return GPT2LMHeadModel(config)


def _snapshot(model) -> TrainerSnapshot:
    return TrainerSnapshot(
        step=1,
        rng_file="rng_state.pth",
        rng_state={},
        is_main=True,
        model=model,
        model_state=model.state_dict(),
        trainer_state_json="{}",
        max_shard_bytes=SHARD_BYTES,
    )


def _materialising_shards(monkeypatch) -> None:
    """``tensor.contiguous()`` called by transformers returns a copy in numpy memory (seen by tracemalloc)."""
    real = torch.Tensor.contiguous

    def contiguous(self, *args, **kwargs):
        if sys._getframe(1).f_globals.get("__name__") != "transformers.modeling_utils":
            return real(self, *args, **kwargs)
        return torch.from_numpy(real(self.detach()).numpy().copy())

    monkeypatch.setattr(torch.Tensor, "contiguous", contiguous)


def _peak_bytes(model, folder, buffer) -> tuple[int, dict]:
    """Peak of the memory tracemalloc sees during one save of ``model`` into ``folder``, and its digests."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        digests = write_snapshot_files(_snapshot(model), folder, buffer=buffer)
        return tracemalloc.get_traced_memory()[1] - before, digests
    finally:
        tracemalloc.stop()


def test_a_sharded_save_holds_about_one_shard_beyond_the_snapshot(tmp_path, model, monkeypatch):
    buffer = AlignedBuffer()
    write_snapshot_files(
        _snapshot(model), tmp_path / "warm-up", buffer=buffer
    )  # first-use imports and caches
    baseline, _ = _peak_bytes(model, tmp_path / "baseline", buffer)  # headers, config.json, index, ...
    _materialising_shards(monkeypatch)
    peak, digests = _peak_bytes(model, tmp_path / "out", buffer)

    folder = tmp_path / "out"
    index = json.loads((folder / MODEL_INDEX).read_text())
    shards = sorted(set(index["weight_map"].values()))
    shard_data = {
        s: sum(t.numel() * t.element_size() for t in load_file(folder / s).values()) for s in shards
    }
    total = index["metadata"]["total_size"]
    assert len(shards) >= 4 and total == sum(shard_data.values())
    largest = max(shard_data.values())
    extra = peak - baseline
    # The copies are seen (more than half a shard), but never more than about one shard's at a time: the whole
    # model's would be ``total``, over 5 times as much.
    assert largest / 2 < extra < largest * 1.25, (extra, largest, total)

    # The copies went to disk intact, and each shard was hashed while it was written.
    state = model.state_dict()
    for name in shards:
        for key, tensor in load_file(folder / name).items():
            assert torch.equal(tensor, state[key]), key
        assert digests[name] == hash_file(folder / name)
