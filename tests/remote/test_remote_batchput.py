"""One checkpoint's files sent as one batch on s3fs's event loop (``remote.batchput``), against the real S3
server: a file the server refuses is sent again alone (its own retries), the other files are not sent twice, and
the manifest still goes up last."""

from __future__ import annotations

from pathlib import Path

from aegis_ckpt.remote.batchput import is_async
from aegis_ckpt.remote.location import RemoteLocation
from aegis_ckpt.remote.upload import upload_checkpoint
from aegis_ckpt.storage.commit import commit_checkpoint
from aegis_ckpt.storage.layout import MANIFEST_NAME


def _checkpoint(folder: Path) -> Path:
    folder.mkdir(parents=True)
    for name, size in (("model.safetensors", 300_000), ("optimizer.pt", 200_000), ("rng_state.pth", 1000)):
        (folder / name).write_bytes(bytes(range(256)) * (size // 256))
    commit_checkpoint(folder, step=7)
    return folder


def test_a_refused_file_is_sent_again_alone_and_the_manifest_comes_last(tmp_path, bucket_url, s3, s3_server):
    folder = _checkpoint(tmp_path / "checkpoint-7")
    location = RemoteLocation(bucket_url)
    assert is_async(location.fs)  # the batch path, not the thread pool
    # botocore retries a request twice itself (location's config, legacy mode: three tries), so three refusals
    # make one retry of ours.
    s3_server.fail_uploads(r"/checkpoint-7/optimizer\.pt$", 3)
    s3_server.uploads.clear()
    retries = []
    upload_checkpoint(location, folder, on_retry=retries.append)
    assert len(retries) == 1, (retries, s3_server.uploads)
    sent = [path.rsplit("/", 1)[-1] for path in s3_server.uploads]
    assert sent.count("optimizer.pt") == 4  # refused three times, then accepted
    assert sent.count("model.safetensors") == 1 and sent.count("rng_state.pth") == 1  # never sent again
    assert sent[-1] == MANIFEST_NAME
    root = bucket_url.removeprefix("s3://")
    for name in ("model.safetensors", "optimizer.pt", "rng_state.pth"):
        assert s3.cat_file(f"{root}/checkpoint-7/{name}") == (folder / name).read_bytes()
