"""``read_back``: the committed folder is read from the disk (``O_DIRECT`` where the file system takes it) in
slot-sized reads and compared with its manifest. A flipped byte, a cut file or a missing file is refused; a good
folder passes, whatever its sizes relative to the slots."""

from __future__ import annotations

import os

import pytest

from aegis_ckpt.errors import CommitError
from aegis_ckpt.storage import readback
from aegis_ckpt.storage.aligned import AlignedBuffer, IOWorker
from aegis_ckpt.storage.commit import commit_checkpoint, hash_file
from aegis_ckpt.storage.readback import hash_from_disk, read_back

SLOT = 64 * 1024


@pytest.fixture
def buffer():
    buf = AlignedBuffer(SLOT)
    yield buf
    buf.close()


def _folder(tmp_path):
    folder = tmp_path / "checkpoint-2"
    folder.mkdir()
    sizes = {
        "empty.bin": 0,
        "small.json": 17,
        "slot.bin": SLOT,
        "two_slots.bin": 2 * SLOT,
        "odd.bin": 5 * SLOT + 3,
    }
    for name, size in sizes.items():
        (folder / name).write_bytes(os.urandom(size))
    commit_checkpoint(folder, step=2)
    return folder


@pytest.mark.parametrize("size", [0, 1, SLOT - 1, SLOT, SLOT + 1, 3 * SLOT, 7 * SLOT + 4095])
def test_hash_from_disk_equals_a_plain_read(tmp_path, buffer, size):
    path = tmp_path / "f.bin"
    path.write_bytes(os.urandom(size))
    io = IOWorker()
    try:
        got = hash_from_disk(path, buffer, io)
    finally:
        io.close()
    assert got == hash_file(path)


def test_a_good_folder_reads_back_with_the_writer_slots_or_its_own(tmp_path, buffer):
    folder = _folder(tmp_path)
    assert read_back(folder, buffer) >= 0
    assert read_back(folder) >= 0


def test_a_flipped_byte_in_a_later_slot_is_refused(tmp_path, buffer):
    folder = _folder(tmp_path)
    with open(folder / "odd.bin", "r+b") as f:
        f.seek(4 * SLOT + 1)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0x01]))
    with pytest.raises(CommitError, match="odd.bin differs"):
        read_back(folder, buffer)


def test_a_cut_or_missing_file_is_refused(tmp_path, buffer):
    folder = _folder(tmp_path)
    os.truncate(folder / "two_slots.bin", SLOT)
    with pytest.raises(CommitError, match="two_slots.bin"):
        read_back(folder, buffer)
    (folder / "small.json").unlink()
    with pytest.raises(CommitError, match="small.json"):
        read_back(folder, buffer)


@pytest.mark.skipif(not hasattr(os, "O_DIRECT"), reason="O_DIRECT is Linux-only")
def test_reads_bypass_the_page_cache_where_the_file_system_allows(tmp_path, buffer, monkeypatch):
    opened = []
    real = readback._open_for_read_back
    monkeypatch.setattr(readback, "_open_for_read_back", lambda p: opened.append(real(p)) or opened[-1])
    folder = _folder(tmp_path)
    try:
        os.close(os.open(folder / "slot.bin", os.O_RDONLY | os.O_DIRECT))
    except OSError:
        pytest.skip("this file system refuses O_DIRECT")
    read_back(folder, buffer)
    assert len(opened) == 5 and all(direct for _, direct in opened)


@pytest.mark.parametrize("missing", [("preadv",), ("preadv", "pread")], ids=["macos", "windows"])
def test_platforms_without_positioned_vector_reads_hash_the_same(tmp_path, buffer, monkeypatch, missing):
    path = tmp_path / "f.bin"
    path.write_bytes(os.urandom(3 * SLOT + 17))
    for name in missing:
        monkeypatch.delattr(os, name)
    io = IOWorker()
    try:
        got = hash_from_disk(path, buffer, io)
    finally:
        io.close()
    assert got == hash_file(path)
