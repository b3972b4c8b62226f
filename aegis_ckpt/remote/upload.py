"""Uploading one committed checkpoint: every file (in parallel, multipart for large ones, each with retries),
then a size check of what arrived, then the manifest, last.

The remote protocol mirrors the local commit: a remote folder without ``aegis_manifest.json`` does not count.
A copy of the same step that is already there (the step saved again) first loses its manifest, so at no time
does a manifest describe files that are being replaced.

The steps are also offered one by one (``withdraw_manifest``, ``upload_files``, ``check_sizes``, ``put_manifest``)
for runs whose nodes hold different files of one checkpoint (``parts``): there the manifest goes up only once
every node has uploaded its files.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ..storage.commit import Manifest, read_manifest
from ..storage.layout import MANIFEST_NAME
from .batchput import is_async, put_batch
from .catalog import remote_files
from .location import RemoteError, RemoteLocation, with_retries

logger = logging.getLogger(__name__)

OnRetry = Callable[[BaseException], None] | None


@dataclass(frozen=True)
class UploadResult:
    step: int
    remote_path: str
    size_bytes: int
    seconds: float


def upload_checkpoint(
    location: RemoteLocation,
    folder: str | os.PathLike,
    *,
    manifest: Manifest | None = None,
    workers: int = 4,
    attempts: int = 5,
    on_retry: OnRetry = None,
    with_manifest: bool = True,
) -> UploadResult:
    """Upload the committed ``folder`` to ``<remote>/<folder name>/``, manifest last (``with_manifest=False``:
    the files only, for a manifest that ``put_manifest`` uploads later). ``on_retry`` hears of every transient
    error that is retried.

    Raises:
        FileNotFoundError: the local folder or one of its files is gone (pruned meanwhile).
        RemoteError: what arrived does not match the manifest.
        Exception: the last transient error after ``attempts`` tries of one file.
    """
    started = time.perf_counter()
    folder = Path(folder)
    manifest = manifest if manifest is not None else read_manifest(folder)
    remote_dir = location.path(folder.name)
    withdraw_manifest(location, remote_dir, attempts=attempts, on_retry=on_retry)
    upload_files(
        location, folder, manifest.files, remote_dir, workers=workers, attempts=attempts, on_retry=on_retry
    )
    if with_manifest:
        check_sizes(location, remote_dir, manifest, attempts=attempts, on_retry=on_retry)
        put_manifest(location, remote_dir, folder / MANIFEST_NAME, attempts=attempts, on_retry=on_retry)
    return UploadResult(manifest.step, remote_dir, manifest.total_bytes, time.perf_counter() - started)


def withdraw_manifest(location: RemoteLocation, remote_dir: str, *, attempts: int, on_retry: OnRetry) -> None:
    """Remove the manifest of a remote copy that is about to be replaced (the same step saved again)."""
    fs = location.fs
    remote_manifest = f"{remote_dir}/{MANIFEST_NAME}"
    location.refresh()
    if fs.exists(remote_manifest):
        with_retries(
            lambda: fs.rm_file(remote_manifest),
            attempts=attempts,
            on_retry=on_retry,
            what=f"withdraw {remote_manifest}",
        )


def upload_files(
    location: RemoteLocation,
    folder: Path,
    names: Iterable[str],
    remote_dir: str,
    *,
    workers: int,
    attempts: int,
    on_retry: OnRetry,
) -> int:
    """Upload ``names`` (relative to ``folder``) into ``remote_dir``, ``workers`` files at once, largest first
    (better overlap); returns the bytes sent. An asynchronous file system (s3fs) gets them as one batch on its
    event loop, as its own ``put`` of a folder does (``batchput``); any other through a pool of threads."""
    fs = location.fs
    sizes = {name: (folder / name).stat().st_size for name in names}
    order = sorted(sizes, key=lambda n: -sizes[n])
    if is_async(fs):
        pairs = [(os.fspath(folder / name), f"{remote_dir}/{name}") for name in order]
        put_batch(fs, pairs, workers=workers, attempts=attempts, on_retry=on_retry)
        return sum(sizes.values())

    def put(name: str) -> None:
        local = folder / name
        if not local.is_file():
            raise FileNotFoundError(f"{local} is gone")
        with_retries(
            lambda: fs.put_file(os.fspath(local), f"{remote_dir}/{name}"),
            attempts=attempts,
            on_retry=on_retry,
            what=f"upload {folder.name}/{name}",
        )

    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="aegis-upload") as pool:
        for future in [pool.submit(put, name) for name in order]:
            future.result()
    return sum(sizes.values())


def check_sizes(
    location: RemoteLocation, remote_dir: str, manifest: Manifest, *, attempts: int, on_retry: OnRetry
) -> None:
    """Every file the manifest lists arrived with the size it lists (the checksums are checked on download).

    Raises:
        RemoteError: a file is missing or of another size.
    """
    sizes = remote_files(location, remote_dir, attempts=attempts, on_retry=on_retry)
    wrong = [
        f"{name} ({sizes.get(name)} bytes, manifest says {digest.size})"
        for name, digest in sorted(manifest.files.items())
        if sizes.get(name) != digest.size
    ]
    if wrong:
        raise RemoteError(f"upload to {remote_dir} is incomplete: {', '.join(wrong[:5])}")


def put_manifest(
    location: RemoteLocation,
    remote_dir: str,
    source: Path | Manifest,
    *,
    attempts: int,
    on_retry: OnRetry,
) -> None:
    """Upload the manifest, the last file of a remote copy: the local file ``source``, or a manifest built here
    (the union of several nodes' files)."""
    target = f"{remote_dir}/{MANIFEST_NAME}"
    if isinstance(source, Manifest):
        body = json.dumps(source.to_json_dict(), indent=2, sort_keys=True).encode("utf-8")
        action = lambda: location.fs.pipe_file(target, body)  # noqa: E731
    else:
        action = lambda: location.fs.put_file(os.fspath(source), target)  # noqa: E731
    with_retries(action, attempts=attempts, on_retry=on_retry, what=f"upload {target}")
