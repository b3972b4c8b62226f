"""What a commit event records about the files: the manifest's xxh3-128 by default (free, it is computed
anyway), sha256 with ``audit_digest="sha256"``; both come from the save's one pass over the bytes and must equal
a separate hash of the files on disk."""

from __future__ import annotations

import hashlib
import os

import pytest
import xxhash

from aegis_ckpt.errors import ConfigError
from aegis_ckpt.options import CheckpointOptions
from aegis_ckpt.runstate.recorder import RunRecorder
from aegis_ckpt.storage.audit import read_audit
from aegis_ckpt.storage.commit import commit_checkpoint
from aegis_ckpt.storage.directwrite import AlignedBuffer, write_large_files
from aegis_ckpt.trainer.asyncsave.hflayout import LargeFile


def _save(tmp_path, options: CheckpointOptions) -> tuple[dict, dict]:
    """A checkpoint written through the direct writer and committed, then the commit event of the audit log and
    the files' bytes."""
    import torch

    out = tmp_path / "out"
    folder = out / "checkpoint-3"
    folder.mkdir(parents=True)
    (folder / "trainer_state.json").write_text('{"global_step": 3}')
    g = torch.Generator().manual_seed(3)
    tensors = {"w": torch.randn(700, 300, generator=g), "b": torch.randn(300, generator=g)}
    optimizer = {"state": {0: {"exp_avg": torch.randn(512, 513, generator=g)}}, "param_groups": []}
    files = [
        LargeFile("safetensors", str(folder / "model.safetensors"), tensors, {"format": "pt"}),
        LargeFile("torch", str(folder / "optimizer.pt"), optimizer),
    ]
    recorder = RunRecorder(out, options)
    sha = recorder.sha256
    buffer = AlignedBuffer(64 * 1024)
    try:
        known = write_large_files(files, buffer, folder=folder, sha256=sha)
    finally:
        buffer.close()
    manifest = commit_checkpoint(folder, step=3, reason="interval", sha256=sha, known=known)
    recorder.committed(folder, manifest, reason="interval", write_sec=0.1, commit_sec=0.1)
    events = read_audit(out / ".aegis" / "audit.jsonl").events
    commit = [e for e in events if e["event"] == "commit"][-1]
    contents = {name: (folder / name).read_bytes() for name in manifest.files}
    return commit, contents


def test_default_audit_records_the_manifest_xxh3_of_every_file(tmp_path):
    commit, contents = _save(tmp_path, CheckpointOptions())
    assert commit["digest"] == "xxh3_128" and "sha256" not in commit
    assert commit["xxh3_128"] == {n: xxhash.xxh3_128_hexdigest(b) for n, b in contents.items()}


@pytest.mark.parametrize(
    "options",
    [CheckpointOptions(audit_digest="sha256"), CheckpointOptions(audit_sha256=True)],
    ids=["audit_digest", "older_audit_sha256"],
)
def test_sha256_option_records_the_sha256_of_every_file(tmp_path, options):
    commit, contents = _save(tmp_path, options)
    assert commit["digest"] == "sha256"
    assert commit["sha256"] == {n: hashlib.sha256(b).hexdigest() for n, b in contents.items()}
    assert set(commit["sha256"]) == {"model.safetensors", "optimizer.pt", "trainer_state.json"}


def test_older_audit_sha256_false_wins_over_the_default(tmp_path):
    options = CheckpointOptions(audit_digest="sha256", audit_sha256=False)
    assert not options.audit_uses_sha256


def test_unknown_audit_digest_is_refused():
    with pytest.raises(ConfigError, match="audit_digest"):
        CheckpointOptions(audit_digest="md5")


@pytest.mark.skipif(not hasattr(os, "O_DIRECT"), reason="in-place writes need O_DIRECT")
def test_one_pass_digests_equal_a_separate_hash_across_slots_and_in_place_pieces(tmp_path, monkeypatch):
    """Pieces written in place, pieces copied through both slots, and the padded tail: the digests of the one
    pass equal hashes of the file on disk, which equals the input."""
    import torch

    from aegis_ckpt.storage import directfile
    from aegis_ckpt.storage.directfile import DirectFile
    from aegis_ckpt.trainer.asyncsave.buffers import PageArena

    monkeypatch.setattr(directfile, "IN_PLACE_WRITE_BYTES", 256 * 1024)  # many in-place pieces
    g = torch.Generator().manual_seed(4)
    n = 3 * 1024 * 1024 + 123
    memory = PageArena().empty((n,), torch.uint8, n)
    memory.copy_(torch.randint(0, 256, (n,), dtype=torch.uint8, generator=g))
    parts = [b"x" * 5000, memory[5000 % 4096 :].numpy(), memory[7:].numpy(), b"end"]
    buffer = AlignedBuffer(64 * 1024)
    try:
        f = DirectFile(tmp_path / "f.bin", buffer, sha256=True)
        for part in parts:
            f.write(part)
        digest = f.close()
    finally:
        buffer.close()
    expected = b"".join(bytes(memoryview(p)) for p in parts)
    assert (tmp_path / "f.bin").read_bytes() == expected
    assert digest.size == len(expected)
    assert digest.xxh3_128 == xxhash.xxh3_128_hexdigest(expected)
    assert digest.sha256 == hashlib.sha256(expected).hexdigest()
    if f.direct:
        assert f.in_place_bytes > 2 * 1024 * 1024
