"""Structural checks for manifest-less checkpoints: they must catch exactly the damage the Trainer would resume
from silently (missing optimizer/scheduler/RNG files) or crash on (truncated or corrupted files)."""

from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path

import pytest

from aegis_ckpt.storage.layout import JIT_INCOMPLETE_MARKER
from aegis_ckpt.storage.plaincheck import check_plain_checkpoint, check_torch_zip


def _problems(folder: Path, step: int) -> str:
    return "; ".join(check_plain_checkpoint(folder, step))


def test_intact_checkpoint_passes(tmp_path, plain_checkpoint):
    assert check_plain_checkpoint(plain_checkpoint(tmp_path, 12), 12) == []


@pytest.mark.parametrize(
    "keep, expected",
    [
        (lambda n: 4, "model.safetensors is truncated (no header)"),
        (lambda n: n - 100, "its header describes"),
        (lambda n: n - 1, "its header describes"),
    ],
    ids=["no-header", "short-data", "one-byte-short"],
)
def test_truncated_safetensors(tmp_path, plain_checkpoint, keep, expected):
    folder = plain_checkpoint(tmp_path, 1)
    path = folder / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: keep(len(data))])
    assert expected in _problems(folder, 1)


def test_safetensors_header_longer_than_file(tmp_path, plain_checkpoint):
    folder = plain_checkpoint(tmp_path, 1)
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", 10_000) + b"{}")
    assert "header longer than file" in _problems(folder, 1)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("optimizer.pt", "missing optimizer.pt"),
        ("scheduler.pt", "missing scheduler.pt"),
        ("rng_state.pth", "missing rng_state"),
        ("trainer_state.json", "missing trainer_state.json"),
        ("model.safetensors", "no model weights found"),
    ],
)
def test_missing_file(tmp_path, plain_checkpoint, name, expected):
    folder = plain_checkpoint(tmp_path, 3)
    (folder / name).unlink()
    assert expected in _problems(folder, 3)


def _member_data_offset(path: Path, member: str) -> int:
    """Byte offset of a stored zip member's data (after its local file header)."""
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(member)
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        header = f.read(30)
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    return info.header_offset + 30 + name_len + extra_len


def test_flipped_byte_in_torch_archive_fails_crc(tmp_path, plain_checkpoint):
    folder = plain_checkpoint(tmp_path, 4)
    path = folder / "optimizer.pt"
    with zipfile.ZipFile(path) as zf:
        member = max(zf.infolist(), key=lambda i: i.file_size).filename  # the tensor data
    offset = _member_data_offset(path, member) + 5
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))
    assert "fails its CRC check" in _problems(folder, 4)


def test_truncated_torch_archive(tmp_path, plain_checkpoint):
    folder = plain_checkpoint(tmp_path, 4)
    path = folder / "scheduler.pt"
    path.write_bytes(path.read_bytes()[:-40])
    problem = check_torch_zip(path)
    assert problem is not None and "not a readable torch archive" in problem
    assert "scheduler.pt" in _problems(folder, 4)


def test_trainer_state_of_another_step(tmp_path, plain_checkpoint):
    folder = plain_checkpoint(tmp_path, 5)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": 4}))
    assert "says step 4, folder says 5" in _problems(folder, 5)
    (folder / "trainer_state.json").write_text('{"global_st')
    assert "trainer_state.json unreadable" in _problems(folder, 5)


def test_jit_marker_is_a_problem(tmp_path, plain_checkpoint):
    folder = plain_checkpoint(tmp_path, 6)
    (folder / JIT_INCOMPLETE_MARKER).write_text("")
    assert "JIT" in _problems(folder, 6)


def test_sharded_weights_with_a_missing_shard(tmp_path, plain_checkpoint):
    folder = plain_checkpoint(tmp_path, 7)
    (folder / "model.safetensors").rename(folder / "model-00001-of-00002.safetensors")
    index = {"weight_map": {"w": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    assert "missing weight shard(s): model-00002-of-00002.safetensors" in _problems(folder, 7)
