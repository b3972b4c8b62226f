"""Uploading one committed checkpoint: every file (in parallel, multipart for large ones, each with retries),
then a size check of what arrived, then the manifest, last.

The remote protocol mirrors the local commit: a remote folder without ``aegis_manifest.json`` does not count.
A copy of the same step that is already there (the step saved again) first loses its manifest, so at no time
does a manifest describe files that are being replaced.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ..storage.commit import Manifest, read_manifest
from ..storage.layout import MANIFEST_NAME
from .location import RemoteError, RemoteLocation, with_retries

logger = logging.getLogger(__name__)


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
    on_retry: Callable[[BaseException], None] | None = None,
) -> UploadResult:
    """Upload the committed ``folder`` to ``<remote>/<folder name>/``, manifest last. ``on_retry`` hears of
    every transient error that is retried.

    Raises:
        FileNotFoundError: the local folder or one of its files is gone (pruned meanwhile).
        RemoteError: what arrived does not match the manifest.
        Exception: the last transient error after ``attempts`` tries of one file.
    """
    started = time.perf_counter()
    folder = Path(folder)
    manifest = manifest if manifest is not None else read_manifest(folder)
    remote_dir = location.path(folder.name)
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

    names = sorted(manifest.files, key=lambda n: -manifest.files[n].size)  # large files first: better overlap
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="aegis-upload") as pool:
        for future in [pool.submit(put, name) for name in names]:
            future.result()
    _check_sizes(location, remote_dir, manifest, attempts, on_retry)
    with_retries(
        lambda: fs.put_file(os.fspath(folder / MANIFEST_NAME), remote_manifest),
        attempts=attempts,
        on_retry=on_retry,
        what=f"upload {folder.name}/{MANIFEST_NAME}",
    )
    return UploadResult(manifest.step, remote_dir, manifest.total_bytes, time.perf_counter() - started)


def _check_sizes(
    location: RemoteLocation,
    remote_dir: str,
    manifest: Manifest,
    attempts: int,
    on_retry: Callable[[BaseException], None] | None,
) -> None:
    """Every file arrived with the size the manifest lists (the checksums are checked on download)."""
    location.refresh()
    found = with_retries(
        lambda: location.fs.find(remote_dir, detail=True),
        attempts=attempts,
        on_retry=on_retry,
        what=f"list {remote_dir}",
    )
    sizes = {path[len(remote_dir) + 1 :]: info.get("size") for path, info in found.items()}
    wrong = [
        f"{name} ({sizes.get(name)} bytes, manifest says {digest.size})"
        for name, digest in sorted(manifest.files.items())
        if sizes.get(name) != digest.size
    ]
    if wrong:
        raise RemoteError(f"upload to {remote_dir} is incomplete: {', '.join(wrong[:5])}")
