"""The order of flushes and renames in ``storage.fsio``'s helpers (the power-loss tests check their effect)."""

from __future__ import annotations

from pathlib import Path

from aegis_ckpt.storage import fsio


def _record(monkeypatch) -> list[tuple[str, str]]:
    events: list[tuple[str, str]] = []
    real_file, real_dir, real_replace = fsio.fsync_file, fsio.fsync_dir, fsio.replace

    def fsync_file(path):
        events.append(("file", Path(path).name))
        real_file(path)

    def fsync_dir(path):
        events.append(("dir", Path(path).name))
        real_dir(path)

    def replace(src, dst):
        events.append(("rename", Path(dst).name))
        real_replace(src, dst)

    monkeypatch.setattr(fsio, "fsync_file", fsync_file)
    monkeypatch.setattr(fsio, "fsync_dir", fsync_dir)
    monkeypatch.setattr(fsio, "replace", replace)
    return events


def test_publish_dir_flushes_everything_inside_before_the_rename_and_the_parent_after(tmp_path, monkeypatch):
    src = tmp_path / ".cache.tmp"
    (src / "sub").mkdir(parents=True)
    (src / "a.json").write_text("{}")
    (src / "sub" / "b.bin").write_bytes(b"b")
    events = _record(monkeypatch)
    fsio.publish_dir(src, tmp_path / "cache")
    rename = events.index(("rename", "cache"))
    assert {("file", "a.json"), ("file", "b.bin"), ("dir", "sub"), ("dir", ".cache.tmp")} == set(
        events[:rename]
    )
    assert events.index(("dir", "sub")) < events.index(("dir", ".cache.tmp")), "deepest folder first"
    assert events[rename + 1 :] == [("dir", tmp_path.name)]
    assert (tmp_path / "cache" / "sub" / "b.bin").read_bytes() == b"b"


def test_makedirs_durable_flushes_the_parent_of_each_new_folder(tmp_path, monkeypatch):
    events = _record(monkeypatch)
    fsio.makedirs_durable(tmp_path / "a" / "b")
    assert events == [("dir", tmp_path.name), ("dir", "a")]
    events.clear()
    fsio.makedirs_durable(tmp_path / "a" / "b")
    assert events == [], "nothing new, nothing to flush"


def test_atomic_write_flushes_before_the_rename_unless_told_not_to(tmp_path, monkeypatch):
    events = _record(monkeypatch)
    flushed: list[int] = []
    monkeypatch.setattr(fsio, "fsync_fd", lambda fd: flushed.append(fd))
    fsio.atomic_write_bytes(tmp_path / "x.json", b"1")
    assert flushed and events == [("rename", "x.json"), ("dir", tmp_path.name)]
    flushed.clear()
    events.clear()
    fsio.atomic_write_bytes(tmp_path / "x.json", b"2", durable=False)
    assert not flushed and events == [("rename", "x.json")]
    assert (tmp_path / "x.json").read_bytes() == b"2"
    assert not list(tmp_path.glob(f"{fsio.TMP_PREFIX}*"))
