"""``directwrite``: the large files of an asynchronous save, written once through an aligned buffer (O_DIRECT
where the file system takes it) and hashed from memory. The files must be exactly what ``safetensors.save_file``
and ``torch.save`` produce for loaders, and the digests exactly what reading the file back gives."""

from __future__ import annotations

import errno
import os
import threading

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from aegis_ckpt.errors import CommitError
from aegis_ckpt.storage import commit, directwrite
from aegis_ckpt.storage.commit import (
    FileDigest,
    commit_checkpoint,
    hash_file,
    read_manifest,
    verify_checkpoint,
)
from aegis_ckpt.storage.directwrite import (
    AlignedBuffer,
    DirectFile,
    write_large_files,
    write_safetensors,
    write_torch,
)
from aegis_ckpt.trainer.asyncsave.hflayout import LargeFile


@pytest.fixture
def buffer():
    # Small on purpose: files span many buffer fills, and most end in a partial, padded block.
    buf = AlignedBuffer(64 * 1024)
    yield buf
    buf.close()


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "wte.weight": torch.randn(301, 77, generator=g),
        "h.0.ln.bias": torch.randn(77, generator=g),
        "h.0.attn.bias": torch.ones(1, 1, 5, 5, dtype=torch.bool),
        "h.1.mlp.weight": torch.randn(77, 13, generator=g).to(torch.bfloat16),
        "h.1.mlp.half": torch.randn(9, generator=g).to(torch.float16),
        "position_ids": torch.arange(128),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 4),
    }


@pytest.mark.parametrize("direct", [True, False], ids=["o_direct", "page_cache"])
def test_safetensors_file_is_byte_identical_to_safetensors_own_writer(tmp_path, buffer, direct):
    tensors = {k: v for k, v in _tensors().items() if v.dtype != torch.float16}  # one dtype per element size
    ours, theirs = tmp_path / "ours.safetensors", tmp_path / "theirs.safetensors"

    digest = write_safetensors(ours, tensors, {"format": "pt"}, buffer, sha256=True, direct=direct)
    save_file(tensors, theirs, metadata={"format": "pt"})

    assert ours.read_bytes() == theirs.read_bytes()
    assert digest == hash_file(ours, sha256=True)


def test_safetensors_with_every_dtype_loads_back_equal(tmp_path, buffer):
    tensors = _tensors()
    tensors["noncontiguous"] = torch.randn(6, 5).t()
    path = tmp_path / "model.safetensors"

    digest = write_safetensors(path, tensors, {"format": "pt", "note": "x"}, buffer)

    back = load_file(path)
    assert set(back) == set(tensors)
    for name, t in tensors.items():
        assert back[name].dtype == t.dtype and torch.equal(back[name], t), name
    with safe_open(path, "pt") as f:
        assert f.metadata() == {"format": "pt", "note": "x"}
    assert digest == hash_file(path)
    assert digest.sha256 is None


def test_unknown_dtype_is_left_to_safetensors(tmp_path, buffer):
    tensors = {"c": torch.randn(3, dtype=torch.complex64)}
    assert write_safetensors(tmp_path / "c.safetensors", tensors, None, buffer) is None
    assert not (tmp_path / "c.safetensors").exists()


@pytest.mark.parametrize("direct", [True, False], ids=["o_direct", "page_cache"])
def test_torch_file_loads_back_and_digest_matches_a_read_back(tmp_path, buffer, direct):
    state = {
        "state": {i: {"exp_avg": torch.randn(50, 31), "step": torch.tensor(float(i))} for i in range(4)},
        "param_groups": [{"lr": 1e-3, "params": [0, 1, 2, 3]}],
    }
    path = tmp_path / "optimizer.pt"

    digest = write_torch(path, state, buffer, sha256=True, direct=direct)

    back = torch.load(path, weights_only=True)
    assert back["param_groups"] == state["param_groups"]
    for i in range(4):
        assert torch.equal(back["state"][i]["exp_avg"], state["state"][i]["exp_avg"])
    assert digest == hash_file(path, sha256=True)
    assert digest.size == os.path.getsize(path)


def test_torch_file_falls_back_to_torch_save_when_the_private_serializer_differs(
    tmp_path, buffer, monkeypatch
):
    monkeypatch.setattr(directwrite, "_crc_free_save_works", None)

    def broken(obj, f):
        raise TypeError("_save() takes 4 positional arguments")

    monkeypatch.setattr(directwrite, "_torch_save_without_crc", broken)
    digest = write_torch(tmp_path / "x.pt", {"t": torch.arange(10)}, buffer)

    assert torch.equal(torch.load(tmp_path / "x.pt")["t"], torch.arange(10))
    assert digest == hash_file(tmp_path / "x.pt")
    assert directwrite._crc_free_save_works is False


@pytest.mark.skipif(not hasattr(os, "O_DIRECT"), reason="O_DIRECT is Linux-only")
def test_a_file_system_that_refuses_o_direct_writes_goes_through_the_page_cache(
    tmp_path, buffer, monkeypatch
):
    real_write = os.write
    refused = []

    def write(fd, data):
        import fcntl

        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            refused.append(len(data))
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_write(fd, data)

    monkeypatch.setattr(directwrite.os, "write", write)
    payload = os.urandom(200_000)
    out = DirectFile(tmp_path / "f.bin", buffer, direct=True)
    if not out.direct:
        out.abort()
        pytest.skip("this file system refuses O_DIRECT already at open")
    out.write(payload)
    digest = out.close()

    assert refused and not out.direct
    assert (tmp_path / "f.bin").read_bytes() == payload
    assert digest == hash_file(tmp_path / "f.bin")


def test_large_files_digests_let_the_commit_skip_the_read_back(tmp_path, buffer, monkeypatch):
    folder = tmp_path / "checkpoint-5"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    files = [
        LargeFile("safetensors", str(folder / "model.safetensors"), _tensors(), {"format": "pt"}),
        LargeFile("torch", str(folder / "optimizer.pt"), {"t": torch.randn(100)}),
    ]
    known = write_large_files(files, buffer, folder=folder, sha256=True)
    assert set(known) == {"model.safetensors", "optimizer.pt"}

    read_back = []
    real_hash_file = commit.hash_file

    def spy(path, **kw):
        read_back.append(os.path.basename(path))
        return real_hash_file(path, **kw)

    monkeypatch.setattr(commit, "hash_file", spy)
    manifest = commit_checkpoint(folder, step=5, sha256=True, known=known)

    assert read_back == ["config.json"]
    assert manifest.files["model.safetensors"] == known["model.safetensors"]
    assert read_manifest(folder).files["optimizer.pt"].sha256 == known["optimizer.pt"].sha256
    assert verify_checkpoint(folder, full=True).ok


def test_commit_refuses_a_file_whose_size_on_disk_differs_from_what_was_written(tmp_path):
    folder = tmp_path / "checkpoint-1"
    folder.mkdir()
    (folder / "a.bin").write_bytes(b"x" * 10)
    wrong = FileDigest(size=11, xxh3_128="0" * 32)

    with pytest.raises(CommitError, match="a.bin has 10 bytes on disk, 11 were written"):
        commit_checkpoint(folder, step=1, known={"a.bin": wrong})
    assert not commit.is_committed(folder)


def test_known_digest_without_sha256_is_read_back_when_sha256_is_asked(tmp_path):
    folder = tmp_path / "checkpoint-1"
    folder.mkdir()
    (folder / "a.bin").write_bytes(b"abc")
    known = {"a.bin": hash_file(folder / "a.bin")}

    manifest = commit_checkpoint(folder, step=1, sha256=True, known=known)

    assert manifest.files["a.bin"].sha256 == hash_file(folder / "a.bin", sha256=True).sha256


def test_capture_of_weight_files_only_affects_the_capturing_thread(tmp_path):
    """A background save records its weight shards instead of writing them; a ``save_pretrained`` on another
    thread at the same moment (the Trainer's own save) must still write its weights."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from aegis_ckpt.trainer.asyncsave.hflayout import _route_safetensors_writes

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=16))
    captured: list = []
    inside, release = threading.Event(), threading.Event()

    def background():
        with _route_safetensors_writes(captured.append):
            inside.set()
            release.wait(30)
            model.save_pretrained(tmp_path / "captured")

    t = threading.Thread(target=background)
    t.start()
    assert inside.wait(30)
    model.save_pretrained(tmp_path / "other_thread")  # while the capture is active
    release.set()
    t.join(30)

    assert (tmp_path / "other_thread" / "model.safetensors").is_file()
    assert not (tmp_path / "captured" / "model.safetensors").exists()
    assert [os.path.basename(f.path) for f in captured] == ["model.safetensors"]


def test_a_route_writing_its_shards_does_not_hold_up_another_threads_save(tmp_path):
    """Shards are written inside ``save_pretrained`` (one at a time): a background save whose shard is still
    being written must not keep a synchronous save on another thread from routing and writing its own."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from aegis_ckpt.trainer.asyncsave.hflayout import _route_safetensors_writes

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=16))
    writing, release = threading.Event(), threading.Event()
    slow: list = []

    def slow_write(item):
        writing.set()
        release.wait(30)
        slow.append(item)

    def background():
        with _route_safetensors_writes(slow_write):
            model.save_pretrained(tmp_path / "slow")

    t = threading.Thread(target=background)
    t.start()
    try:
        assert writing.wait(30)
        fast: list = []
        done = threading.Event()

        def other():
            with _route_safetensors_writes(fast.append):
                model.save_pretrained(tmp_path / "fast")
            done.set()

        threading.Thread(target=other, daemon=True).start()
        assert done.wait(30), "the second save waited for the first one's write"
        assert [os.path.basename(f.path) for f in fast] == ["model.safetensors"]
    finally:
        release.set()
        t.join(30)
    assert [os.path.basename(f.path) for f in slow] == ["model.safetensors"]
    from safetensors.torch import save_file
    from transformers import modeling_utils

    assert modeling_utils.safe_save_file is save_file  # the patch is gone with the last route


# ---- writes straight from the snapshot's memory ------------------------------------------------------------------
needs_o_direct = pytest.mark.skipif(not hasattr(os, "O_DIRECT"), reason="O_DIRECT is Linux-only")


@needs_o_direct
def test_a_source_in_phase_with_the_file_is_written_in_place_and_the_file_is_exact(tmp_path, buffer):
    from aegis_ckpt.trainer.asyncsave.buffers import PageArena

    g = torch.Generator().manual_seed(1)
    memory = PageArena().empty((1 << 20,), torch.uint8, 1 << 20)
    memory.copy_(torch.randint(0, 256, (1 << 20,), dtype=torch.uint8, generator=g))
    prefix = bytes(range(250)) * 4  # 1000 bytes: the next page boundary of the file is 3096 bytes away
    in_phase = memory[1000 : 1000 + 300_000]  # its memory is 3096 bytes before a page boundary too
    out_of_phase = memory[1 : 1 + 200_000]
    parts = [prefix, in_phase.numpy(), b"tail", out_of_phase.numpy(), b"end"]

    f = DirectFile(tmp_path / "f.bin", buffer, sha256=True)
    assert f.direct, "the test file system must take O_DIRECT, or this test proves nothing"
    for part in parts:
        f.write(part)
    digest = f.close()

    expected = b"".join(bytes(memoryview(p)) for p in parts)
    assert (tmp_path / "f.bin").read_bytes() == expected
    assert digest == hash_file(tmp_path / "f.bin", sha256=True)
    assert f.in_place_bytes == (300_000 - 3096) // 4096 * 4096  # the out-of-phase part was copied


@needs_o_direct
def test_optimizer_state_in_page_aligned_snapshot_buffers_is_written_in_place(tmp_path, buffer, monkeypatch):
    from aegis_ckpt.trainer.asyncsave.buffers import SnapshotBuffers

    g = torch.Generator().manual_seed(2)
    buffers = SnapshotBuffers()
    state = {
        i: {
            "exp_avg": buffers.copy(("m", i), torch.randn(97, 1031, generator=g)),
            "exp_avg_sq": buffers.copy(("v", i), torch.rand(97, 1031, generator=g)),
            "step": buffers.copy(("s", i), torch.tensor(7.0)),
        }
        for i in range(3)
    }
    obj = {"state": state, "param_groups": [{"lr": 1e-3, "params": [0, 1, 2]}]}
    written: list[DirectFile] = []
    real_close = DirectFile.close
    monkeypatch.setattr(DirectFile, "close", lambda self: (written.append(self), real_close(self))[1])

    digest = write_torch(tmp_path / "optimizer.pt", obj, buffer, sha256=True)

    back = torch.load(tmp_path / "optimizer.pt", weights_only=True)
    for i in range(3):
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(back["state"][i][key], state[i][key])
    assert digest == hash_file(tmp_path / "optimizer.pt", sha256=True)
    big = sum(t.numel() * 4 for i in range(3) for t in (state[i]["exp_avg"], state[i]["exp_avg_sq"]))
    if directwrite._crc_free_save_available():  # records start on a page only with torch's own writer
        assert written[0].in_place_bytes > 0.95 * big


def test_large_snapshot_buffers_start_on_a_page_and_hold_exactly_the_tensor(tmp_path):
    from aegis_ckpt.trainer.asyncsave.buffers import PAGE_ALIGNED_MIN_BYTES, SnapshotBuffers

    buffers = SnapshotBuffers()
    large = buffers.copy(
        "large", torch.arange(PAGE_ALIGNED_MIN_BYTES // 4 + 3, dtype=torch.float32).view(-1, 1)
    )
    small = buffers.copy("small", torch.ones(3))
    assert large.data_ptr() % 4096 == 0
    assert large.untyped_storage().nbytes() == large.numel() * 4  # torch.save writes the whole storage
    assert torch.equal(large.flatten(), torch.arange(large.numel(), dtype=torch.float32))
    assert buffers.copy("large", large * 2).data_ptr() == large.data_ptr()  # reused, not reallocated
    assert torch.equal(small, torch.ones(3))


def test_page_arena_packs_many_tensors_into_few_maps_and_each_storage_is_exact():
    from aegis_ckpt.trainer.asyncsave.buffers import PageArena

    arena = PageArena()
    arena.CHUNK_BYTES = 1 << 20  # small chunks, so that the last tensor needs a map of its own
    tensors = [arena.empty((n,), torch.float32, n * 4) for n in (70_000, 1000, 100_000, 30_000)]
    for t, n in zip(tensors, (70_000, 1000, 100_000, 30_000), strict=True):
        assert t.data_ptr() % 4096 == 0
        assert t.untyped_storage().nbytes() == n * 4
        t.fill_(float(n))
    # The four fit in the first map, each a page-rounded size after the one before.
    assert tensors[1].data_ptr() - tensors[0].data_ptr() == -(-70_000 * 4 // 4096) * 4096
    assert tensors[3].data_ptr() - tensors[2].data_ptr() == -(-100_000 * 4 // 4096) * 4096
    for t, n in zip(tensors, (70_000, 1000, 100_000, 30_000), strict=True):
        assert torch.all(t == float(n))  # no overlap between neighbours
    big = arena.empty((2 << 20,), torch.uint8, 2 << 20)  # larger than a chunk: a map of its own size
    assert big.numel() == 2 << 20 and big.data_ptr() % 4096 == 0
