"""Bringing a remote copy back: into the output directory's staging folder, every file checked against the
manifest, then published as ``checkpoint-<step>`` in one rename (the same path a local save takes).

The manifest is read first (it says what to fetch and is itself checksummed), each listed file is fetched and
flushed, the manifest is written last, and the staged folder must pass ``verify_checkpoint`` (full hashes)
before it is published. A copy that fails any of that is refused with the reason and removed from staging; the
caller goes on with the next older remote copy.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath

from ..storage import commit, fsio
from ..storage.commit import Manifest, atomic_write_bytes, read_manifest, verify_checkpoint
from ..storage.layout import FINAL_MODEL_DIR, MANIFEST_NAME
from ..storage.store import CheckpointStore
from .catalog import RemoteEntry, list_remote, read_remote_manifest
from .finalmodel import final_model_path, read_final_marker
from .location import RemoteError, RemoteLocation, describe_error, with_retries

logger = logging.getLogger(__name__)


def _safe_relative(name: str) -> str:
    """A manifest name that stays inside the checkpoint folder, or ``RemoteError``: a remote manifest is input
    from outside and must never make us write elsewhere."""
    path = PurePosixPath(name)
    if (
        not name
        or "\\" in name
        or "\x00" in name
        or path.is_absolute()
        or any(part in ("", ".", "..") for part in name.split("/"))
        or name == MANIFEST_NAME
        or (len(name) > 1 and name[1] == ":")
    ):
        raise RemoteError(f"manifest lists an unsafe file name {name!r}")
    return name


def download_checkpoint(
    location: RemoteLocation,
    entry: RemoteEntry,
    store: CheckpointStore,
    *,
    workers: int = 4,
    attempts: int = 5,
    final_model: bool = False,
    only: Callable[[str], bool] | None = None,
) -> Path:
    """Download, verify and publish one remote copy; returns the local ``checkpoint-<step>`` folder
    (``final_model``: the remote final model, published as ``final_model/``). ``only``: fetch just the files it
    accepts (a node's share of a node-local run's checkpoint); the local manifest then lists exactly those.

    Raises:
        RemoteError: the copy is refused (no or damaged manifest, unsafe names, a file that does not verify) or
            could not be fetched; nothing is left behind in the output directory.
    """
    started = time.perf_counter()
    try:
        manifest, raw = read_remote_manifest(location, entry)
        names = [_safe_relative(name) for name in manifest.files]
        if only is not None:
            manifest = Manifest(
                manifest.step,
                {name: d for name, d in manifest.files.items() if only(name)},
                manifest.committed_unix,
                manifest.reason,
                dict(manifest.meta),
            )
            names = sorted(manifest.files)
            raw = json.dumps(manifest.to_json_dict(), indent=2, sort_keys=True).encode("utf-8")
    except RemoteError:
        raise
    except Exception as e:
        raise RemoteError(f"remote {entry.path}: unusable manifest ({describe_error(e)})") from e
    store.aegis_dir.mkdir(parents=True, exist_ok=True)
    if final_model:
        staging = store.final_model_staging()
        fsio.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    else:
        staging = store.fresh_staging(entry.step)
    try:
        _fetch_files(location, entry, staging, names, workers=workers, attempts=attempts)
        atomic_write_bytes(staging / MANIFEST_NAME, raw)  # last, as in a local commit
        result = verify_checkpoint(staging, full=True)
        if not result.ok:
            raise RemoteError(f"remote {entry.path} does not verify: {result.summary()}")
        folder = store.publish_final_model(staging) if final_model else store.publish(staging, entry.step)
    except BaseException as e:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(e, RemoteError) or not isinstance(e, Exception):
            raise
        raise RemoteError(f"remote {entry.path}: download failed ({describe_error(e)})") from e
    logger.info(
        "Downloaded %s from %s (%.1f MB in %.1f s, every file verified)",
        folder.name,
        location.url,
        manifest.total_bytes / 1e6,
        time.perf_counter() - started,
    )
    return folder


def _fetch_files(
    location: RemoteLocation,
    entry: RemoteEntry,
    staging: Path,
    names: list[str],
    *,
    workers: int,
    attempts: int,
) -> None:
    def get(name: str) -> None:
        local = staging / name
        local.parent.mkdir(parents=True, exist_ok=True)
        with_retries(
            lambda: location.fs.get_file(f"{entry.path}/{name}", os.fspath(local)),
            attempts=attempts,
            what=f"download {entry.path}/{name}",
        )
        commit.fsync_file(local)

    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="aegis-download") as pool:
        for future in [pool.submit(get, name) for name in names]:
            future.result()
    for folder in sorted({(staging / n).parent for n in names}, key=lambda p: len(p.parts), reverse=True):
        commit.fsync_dir(folder)


def pull_newest(
    location: RemoteLocation,
    store: CheckpointStore,
    *,
    newer_than: int | None = None,
    workers: int = 4,
    attempts: int = 5,
) -> tuple[Path | None, list[tuple[int, str]]]:
    """Download the newest remote copy (above step ``newer_than``) that verifies.

    Returns:
        The local folder (None when no remote copy qualifies) and the ``(step, reason)`` of every newer copy
        that was skipped.
    """
    skipped: list[tuple[int, str]] = []
    for entry in reversed(list_remote(location)):
        if newer_than is not None and entry.step <= newer_than:
            break
        if not entry.committed:
            reason = "no manifest (its upload did not finish)"
        else:
            try:
                folder = download_checkpoint(location, entry, store, workers=workers, attempts=attempts)
            except RemoteError as e:
                reason = str(e)
            else:
                pull_final_model(location, store, step=entry.step, workers=workers, attempts=attempts)
                return folder, skipped
        logger.warning("Skipping remote checkpoint-%d: %s", entry.step, reason)
        skipped.append((entry.step, reason))
    return None, skipped


def pull_final_model(
    location: RemoteLocation, store: CheckpointStore, *, step: int, workers: int = 4, attempts: int = 5
) -> Path | None:
    """Fetch the remote final model when the run finished at ``step`` (its completion marker says so) and the
    local one is not that one already; verified and published like a checkpoint. Best effort: a failure is
    logged and the checkpoint stays what was asked for. Returns the local ``final_model/`` or None."""
    try:
        marker = read_final_marker(location)
        if marker is None or marker["step"] != step:
            return None
        local = store.output_dir / FINAL_MODEL_DIR
        if (local / MANIFEST_NAME).is_file():
            try:
                if read_manifest(local).step == step and verify_checkpoint(local, full=False).ok:
                    return local
            except (OSError, ValueError):
                pass
        entry = RemoteEntry(step, final_model_path(location), True)
        return download_checkpoint(
            location, entry, store, workers=workers, attempts=attempts, final_model=True
        )
    except Exception as e:  # noqa: BLE001 - the checkpoint was the request; the final model comes on top
        logger.warning("Could not fetch the final model from %s: %s", location.url, describe_error(e))
        return None
