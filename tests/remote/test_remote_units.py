"""The pieces under the remote copies, without a server: option validation (the config section included),
backoff with jitter, and remote retention on a ``file://`` remote (a mounted NAS)."""

from __future__ import annotations

import pytest

from aegis_ckpt.errors import ConfigError
from aegis_ckpt.options import RemoteOptions
from aegis_ckpt.remote.catalog import list_remote, prune_remote
from aegis_ckpt.remote.location import RemoteLocation, with_retries
from aegis_ckpt.remote.upload import upload_checkpoint
from aegis_ckpt.storage.layout import MANIFEST_NAME
from aegis_ckpt.train.config import parse_config


def _config(remote):
    return parse_config(
        {
            "model": {"arch": "gpt2", "config": {"n_layer": 1}},
            "data": {"train_file": "corpus.txt"},
            "training": {"output_dir": "out"},
            "remote": remote,
        }
    )


def test_config_remote_section():
    cfg = _config({"url": "s3://bucket/run", "max_keep": 3, "options": {"profile": "backup"}})
    assert cfg.remote == RemoteOptions(url="s3://bucket/run", max_keep=3, options={"profile": "backup"})
    assert _config({"url": ""}).remote.enabled is False  # ${AEGIS_REMOTE_URL:-} unset
    with pytest.raises(ConfigError, match="unknown key"):
        _config({"url": "s3://b/r", "secret_key": "x"})
    with pytest.raises(ConfigError, match="credentials"):
        _config({"url": "s3://b/r", "options": {"key": "x"}})
    with pytest.raises(ConfigError, match="max_keep"):
        _config({"url": "s3://b/r", "max_keep": 0})
    with pytest.raises(ConfigError, match="URL"):
        _config({"url": "/not/a/url"})


def test_backoff_grows_with_full_jitter_and_stops_at_permanent_errors():
    sleeps, calls = [], []

    def flaky():
        calls.append(1)
        if len(calls) < 4:
            raise ConnectionError("reset")
        return "ok"

    assert (
        with_retries(
            flaky, attempts=5, what="x", base_sec=1, max_sec=3, sleep=sleeps.append, jitter=lambda: 1.0
        )
        == "ok"
    )
    assert sleeps == [1, 2, 3]  # doubling, capped; the jitter factor (here 1.0) scales each pause
    with pytest.raises(ConnectionError):
        with_retries(
            lambda: (_ for _ in ()).throw(ConnectionError("down")), attempts=3, what="x", sleep=sleeps.append
        )
    denied = []
    with pytest.raises(PermissionError):
        with_retries(
            lambda: denied.append(1) or (_ for _ in ()).throw(PermissionError("403")), attempts=5, what="x"
        )
    assert denied == [1]  # refused credentials are not retried


def test_remote_retention_keeps_the_newest_and_clears_cut_off_uploads(tmp_path, committed_checkpoint):
    location = RemoteLocation((tmp_path / "nas").as_uri())
    for step in (1, 2, 3, 4):
        upload_checkpoint(location, committed_checkpoint(tmp_path / "run", step))
    (tmp_path / "nas" / "checkpoint-2" / MANIFEST_NAME).unlink()  # an upload that never finished
    (tmp_path / "nas" / "checkpoint-9").mkdir()  # a newer one still on its way: never touched
    assert prune_remote(location, keep=1, protect={3}) == [1, 2]
    assert [(e.step, e.committed) for e in list_remote(location)] == [(3, True), (4, True), (9, False)]
    assert prune_remote(location, keep=1) == [3]
    assert [e.step for e in list_remote(location)] == [4, 9]


def test_a_flush_after_catch_up_waits_for_the_look_at_the_remote(tmp_path, committed_checkpoint, monkeypatch):
    """A rerun of a finished run calls ``catch_up`` then ``flush``: the flush must not return while the worker is
    still listing the remote (nothing queued yet), or the missing copy is never uploaded."""
    import threading
    import time

    from aegis_ckpt.remote import mirror as mirror_module
    from aegis_ckpt.remote.mirror import RemoteMirror

    out = tmp_path / "run"
    committed_checkpoint(out, 5)
    url = (tmp_path / "nas").as_uri()
    slow_listing = mirror_module.list_remote
    listing = threading.Event()

    def list_remote(location):
        listing.set()
        time.sleep(1.0)  # a remote that takes its time to answer
        return slow_listing(location)

    monkeypatch.setattr(mirror_module, "list_remote", list_remote)
    mirror = RemoteMirror(RemoteOptions(url=url), out)
    mirror.catch_up()
    assert listing.wait(10)  # the worker is looking; nothing is queued yet
    assert mirror.close(30)
    assert [(e.step, e.committed) for e in slow_listing(RemoteLocation(url))] == [(5, True)]
