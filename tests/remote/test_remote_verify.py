"""Downloads are verified: a remote copy whose file was changed after upload is refused with the reason and the
next older remote copy is used; a remote manifest that names files outside the checkpoint is refused before
anything is written; secrets never reach a message. Real S3 server on 127.0.0.1, real checkpoint files."""

from __future__ import annotations

import json
import logging

import pytest
from remotelib import ACCESS_KEY, SECRET_KEY, assert_no_secret

from aegis_ckpt import find_resume_checkpoint
from aegis_ckpt.errors import ConfigError
from aegis_ckpt.options import RemoteOptions
from aegis_ckpt.remote.catalog import RemoteEntry
from aegis_ckpt.remote.download import download_checkpoint, pull_newest
from aegis_ckpt.remote.location import RemoteError, RemoteLocation, describe_error
from aegis_ckpt.remote.upload import upload_checkpoint
from aegis_ckpt.storage.commit import FileDigest, Manifest
from aegis_ckpt.storage.store import CheckpointStore


def _mirror(committed_checkpoint, local, url, steps) -> RemoteLocation:
    location = RemoteLocation(url)
    for step in steps:
        upload_checkpoint(location, committed_checkpoint(local, step))
    return location


def test_corrupted_remote_file_is_refused_and_the_older_copy_used(
    tmp_path, committed_checkpoint, bucket_url, s3, caplog
):
    caplog.set_level(logging.INFO, logger="aegis_ckpt")
    _mirror(committed_checkpoint, tmp_path / "a", bucket_url, [5, 10])
    damaged = bucket_url.removeprefix("s3://") + "/checkpoint-10/optimizer.pt"
    data = bytearray(s3.cat_file(damaged))
    data[len(data) // 2] ^= 0xFF  # same size: only the checksum can tell
    s3.pipe_file(damaged, bytes(data))

    fresh = tmp_path / "b"
    assert find_resume_checkpoint(fresh, remote_url=bucket_url) == str(fresh / "checkpoint-5")
    assert "Skipping remote checkpoint-10" in caplog.text
    assert "optimizer.pt checksum mismatch" in caplog.text
    assert not (fresh / "checkpoint-10").exists()
    assert list(CheckpointStore(fresh).staging_dir.iterdir()) == []  # the refused copy left nothing behind
    assert_no_secret(caplog.text, folders=(fresh,))


def test_remote_newer_than_local_only_is_downloaded(tmp_path, committed_checkpoint, bucket_url):
    local = tmp_path / "run"
    _mirror(committed_checkpoint, tmp_path / "other", bucket_url, [5, 10])
    inode = committed_checkpoint(local, 10).stat().st_ino  # the newest step is here already: nothing to fetch
    assert find_resume_checkpoint(local, remote_url=bucket_url) == str(local / "checkpoint-10")
    assert [e.step for e in CheckpointStore(local).committed()] == [10]
    assert (local / "checkpoint-10").stat().st_ino == inode  # the local folder itself, not a downloaded copy


def test_manifest_naming_files_outside_is_refused(tmp_path, bucket_url, s3):
    root = bucket_url.removeprefix("s3://")
    payload = b"not yours"
    name = "../../../../escaped.bin"
    manifest = Manifest(
        step=7,
        files={name: FileDigest(len(payload), "0" * 32)},
        committed_unix=0.0,
    )
    s3.pipe_file(f"{root}/checkpoint-7/{name}", payload)
    s3.pipe_file(f"{root}/checkpoint-7/aegis_manifest.json", json.dumps(manifest.to_json_dict()).encode())
    out = tmp_path / "deep" / "er" / "out"
    location = RemoteLocation(bucket_url)
    with pytest.raises(RemoteError, match="unsafe file name|must stay inside its folder"):
        download_checkpoint(location, RemoteEntry(7, f"{root}/checkpoint-7", True), CheckpointStore(out))
    assert not any(p.name == "escaped.bin" for p in tmp_path.rglob("*"))
    folder, skipped = pull_newest(location, CheckpointStore(out))
    assert folder is None and ("unsafe file name" in skipped[0][1] or "inside its folder" in skipped[0][1])


def test_credentials_are_refused_in_options_and_scrubbed_from_errors(s3_env):
    with pytest.raises(ConfigError, match="credentials"):
        RemoteOptions(url="s3://b/p", options={"secret": SECRET_KEY})
    with pytest.raises(ConfigError, match="client_kwargs.aws_secret_access_key"):
        RemoteOptions(url="s3://b/p", options={"client_kwargs": {"aws_secret_access_key": "x"}})
    with pytest.raises(ConfigError, match="must not carry credentials") as refused:
        RemoteOptions(url=f"s3://{ACCESS_KEY}:{SECRET_KEY}@bucket/run")
    text = describe_error(OSError(f"signature of {ACCESS_KEY} with {SECRET_KEY} does not match"))
    assert "***" in text
    assert_no_secret(text, str(refused.value))
