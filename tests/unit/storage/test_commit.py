"""The commit protocol (guarantee 1): manifest written last, listing every file with size and xxh3 checksum;
``verify_checkpoint`` is its read side. Faults are injected only at the ``commit.fsync_file`` /
``commit.fsync_dir`` seams."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
import xxhash

from aegis_ckpt.errors import CommitError
from aegis_ckpt.resume import find_resume_checkpoint
from aegis_ckpt.storage import commit
from aegis_ckpt.storage.commit import commit_checkpoint, is_committed, read_manifest, verify_checkpoint
from aegis_ckpt.storage.layout import MANIFEST_NAME


def _files_on_disk(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST_NAME
    }


def test_manifest_lists_every_file_with_size_and_xxh3(tmp_path, plain_checkpoint):
    folder = plain_checkpoint(tmp_path, 7)
    (folder / "sub").mkdir()
    (folder / "sub" / "extra.bin").write_bytes(b"\x00\x01" * 1000)

    manifest = commit_checkpoint(folder, step=7, reason="interval", meta={"epoch": 0.7})

    on_disk = _files_on_disk(folder)
    assert set(manifest.files) == set(on_disk) and "sub/extra.bin" in manifest.files
    for name, data in on_disk.items():
        assert manifest.files[name].size == len(data)
        assert manifest.files[name].xxh3_128 == xxhash.xxh3_128_hexdigest(data)
    # What is on disk is what read_manifest returns.
    again = read_manifest(folder)
    assert again.step == 7 and again.reason == "interval" and again.meta == {"epoch": 0.7}
    assert again.files == manifest.files
    assert manifest.total_bytes == sum(len(d) for d in on_disk.values())
    for full in (True, False):
        result = verify_checkpoint(folder, full=full)
        assert result.ok, result.problems


def test_manifest_is_written_last_after_every_file_and_folder_is_fsynced(
    tmp_path, plain_checkpoint, monkeypatch
):
    folder = plain_checkpoint(tmp_path, 3)
    (folder / "sub").mkdir()
    (folder / "sub" / "x.bin").write_bytes(b"x")
    events: list[tuple[str, str, bool]] = []
    real_file, real_dir = commit.fsync_file, commit.fsync_dir

    def rec_file(path):
        events.append(("file", Path(path).relative_to(folder).as_posix(), is_committed(folder)))
        real_file(path)

    def rec_dir(path):
        events.append(("dir", str(Path(path)), is_committed(folder)))
        real_dir(path)

    monkeypatch.setattr(commit, "fsync_file", rec_file)
    monkeypatch.setattr(commit, "fsync_dir", rec_dir)
    commit_checkpoint(folder, step=3)

    synced_files = {name for kind, name, _ in events if kind == "file"}
    assert synced_files == set(_files_on_disk(folder))
    # Every file and every folder fsync before the manifest exists...
    first_committed = next(i for i, e in enumerate(events) if e[2])
    before = events[:first_committed]
    assert {n for k, n, _ in before if k == "file"} == synced_files
    assert ("dir", str(folder / "sub"), False) in before and ("dir", str(folder), False) in before
    # ...and the manifest's rename is made durable by fsyncing the folder, then its parent.
    after = [(k, n) for k, n, _ in events[first_committed:]]
    assert after == [("dir", str(folder)), ("dir", str(folder.parent))]


def test_temp_files_are_not_part_of_the_checkpoint(tmp_path, plain_checkpoint):
    folder = plain_checkpoint(tmp_path, 1)
    leftover = folder / f"{commit._TMP_PREFIX}999-{MANIFEST_NAME}"
    leftover.write_text("half a manifest from a killed commit")
    manifest = commit_checkpoint(folder, step=1)
    assert not any(name.startswith(commit._TMP_PREFIX) for name in manifest.files)
    assert MANIFEST_NAME not in manifest.files
    leftover.write_text("changed")  # temp files may change or vanish without damaging the checkpoint
    assert verify_checkpoint(folder).ok


def test_manifest_self_checksum_detects_a_damaged_manifest(tmp_path, plain_checkpoint):
    folder = plain_checkpoint(tmp_path, 2)
    commit_checkpoint(folder, step=2)
    body = json.loads((folder / MANIFEST_NAME).read_text())
    # A still-valid JSON manifest whose content was changed: claims another size for a file.
    body["files"]["config.json"]["size"] += 1
    (folder / MANIFEST_NAME).write_text(json.dumps(body))
    result = verify_checkpoint(folder, full=False)
    assert not result.ok and "manifest checksum mismatch" in result.summary()

    (folder / MANIFEST_NAME).write_text('{"format": "aegis-ckpt-manifest", "vers')  # torn write
    result = verify_checkpoint(folder)
    assert not result.ok and "unreadable manifest" in result.summary()


def test_verify_detects_missing_resized_and_changed_files(tmp_path, plain_checkpoint):
    folder = plain_checkpoint(tmp_path, 4)
    commit_checkpoint(folder, step=4)

    (folder / "scheduler.pt").unlink()
    for full in (True, False):
        result = verify_checkpoint(folder, full=full)
        assert not result.ok and "missing file scheduler.pt" in result.problems

    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[:-10])
    assert any("model.safetensors has" in p for p in verify_checkpoint(folder, full=False).problems)

    # Same size, one flipped byte: only the full (hashing) mode can see it.
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF
    (folder / "model.safetensors").write_bytes(bytes(flipped))
    full = verify_checkpoint(folder, full=True)
    assert any("model.safetensors checksum mismatch" in p for p in full.problems)
    quick = verify_checkpoint(folder, full=False)
    assert not any("model.safetensors" in p for p in quick.problems)


def test_uncommitted_folder_does_not_verify(tmp_path, plain_checkpoint):
    folder = plain_checkpoint(tmp_path, 5)
    result = verify_checkpoint(folder)
    assert not result.ok and result.problems[0].startswith("uncommitted")


def test_recommit_of_an_overwritten_folder_describes_the_new_content(tmp_path, plain_checkpoint):
    folder = plain_checkpoint(tmp_path, 6)
    first = commit_checkpoint(folder, step=6)
    # The Trainer saving twice at one step rewrites the files in place.
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": 6, "epoch": 1.0, "more": "x" * 50}))
    assert not verify_checkpoint(folder).ok
    second = commit_checkpoint(folder, step=6, reason="again")
    assert second.files["trainer_state.json"] != first.files["trainer_state.json"]
    assert verify_checkpoint(folder).ok and read_manifest(folder).reason == "again"


def test_recommit_withdraws_the_old_manifest_before_anything_else(tmp_path, plain_checkpoint, monkeypatch):
    """If the re-commit fails, the folder must read as uncommitted, not as committed with a stale manifest."""
    folder = plain_checkpoint(tmp_path, 6)
    commit_checkpoint(folder, step=6)
    (folder / "optimizer.pt").write_bytes(b"rewritten in place")

    def broken(path):
        raise OSError(errno.EIO, "Input/output error", str(path))

    monkeypatch.setattr(commit, "fsync_file", broken)
    with pytest.raises(CommitError):
        commit_checkpoint(folder, step=6)
    assert not is_committed(folder)


@pytest.mark.parametrize("seam", ["fsync_file", "fsync_dir"])
def test_fault_during_commit_leaves_folder_uncommitted_and_older_ones_intact(
    tmp_path, committed_checkpoint, plain_checkpoint, monkeypatch, seam
):
    older = [committed_checkpoint(tmp_path, s) for s in (10, 20)]
    newest = plain_checkpoint(tmp_path, 30)
    calls = []

    def broken(path):
        calls.append(path)
        raise OSError(errno.EIO, "Input/output error", str(path))

    monkeypatch.setattr(commit, seam, broken)
    with pytest.raises(CommitError, match="Input/output error"):
        commit_checkpoint(newest, step=30)
    monkeypatch.undo()

    assert calls, "the fault was never reached: the test proves nothing"
    assert not is_committed(newest)
    assert not list(newest.glob(f"{commit._TMP_PREFIX}*")), "no half manifest left behind"
    for folder in older:
        assert verify_checkpoint(folder).ok
    assert find_resume_checkpoint(tmp_path) == str(older[-1])
    assert not newest.exists(), "the uncommitted folder is moved to quarantine on resume"


def test_commit_refuses_missing_or_empty_folder(tmp_path):
    with pytest.raises(CommitError, match="does not exist"):
        commit_checkpoint(tmp_path / "checkpoint-1", step=1)
    (tmp_path / "checkpoint-2").mkdir()
    with pytest.raises(CommitError, match="holds no files"):
        commit_checkpoint(tmp_path / "checkpoint-2", step=2)
    assert not is_committed(tmp_path / "checkpoint-2")


def test_sha256_is_recorded_on_request(tmp_path, plain_checkpoint):
    import hashlib

    folder = plain_checkpoint(tmp_path, 8)
    manifest = commit_checkpoint(folder, step=8, sha256=True)
    data = (folder / "config.json").read_bytes()
    assert manifest.files["config.json"].sha256 == hashlib.sha256(data).hexdigest()
    assert read_manifest(folder).files["config.json"].sha256 == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("size", [0, 1, 100_000, 3 * 65536, 3 * 65536 + 7])
def test_read_ahead_hash_equals_the_plain_hash(tmp_path, size):
    path = tmp_path / "f.bin"
    path.write_bytes(bytes((i * 131 + 7) % 251 for i in range(size)))
    # Small chunks and a shallow queue: the reader must wait for free buffers and the file spans many chunks.
    digest = commit.hash_file_read_ahead(path, chunk_bytes=65536, depth=2)
    assert digest == commit.hash_file(path)
    assert digest.size == size


def test_read_ahead_hash_raises_the_readers_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        commit.hash_file_read_ahead(tmp_path / "missing.bin")


def test_full_verify_with_read_ahead_finds_a_flipped_byte(tmp_path, plain_checkpoint, monkeypatch):
    monkeypatch.setattr(commit, "READ_AHEAD_MIN_BYTES", 0)  # every file through the reader thread
    used = []
    real = commit.hash_file_read_ahead
    monkeypatch.setattr(commit, "hash_file_read_ahead", lambda path, **kw: (used.append(path), real(path))[1])
    folder = plain_checkpoint(tmp_path, 6)
    commit_checkpoint(folder, step=6)
    assert verify_checkpoint(folder, full=True).ok
    assert used

    data = bytearray((folder / "model.safetensors").read_bytes())
    data[-1] ^= 0x01
    (folder / "model.safetensors").write_bytes(bytes(data))
    assert any(
        "model.safetensors checksum mismatch" in p for p in verify_checkpoint(folder, full=True).problems
    )
