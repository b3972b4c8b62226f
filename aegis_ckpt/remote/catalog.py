"""What the remote holds: its ``checkpoint-<step>/`` folders, which of them are committed (manifest present),
the files of one remote folder with their sizes, and remote retention. Every listing of the remote is here.

Retention keeps the newest ``keep`` committed copies and always the newest one (and whatever the caller
protects, e.g. the copy it just uploaded). A copy is deleted manifest first, so a deletion cut short leaves a
folder without a manifest, which counts as absent, never a folder that claims files it no longer has. Folders
without a manifest that are older than the newest committed copy are leftovers of uploads cut short (a killed
process): they are deleted too.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass

from ..storage.commit import Manifest
from ..storage.layout import MANIFEST_NAME, parse_checkpoint_step
from .location import RemoteLocation, describe_error, with_retries

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RemoteEntry:
    """One remote ``checkpoint-<step>`` folder."""

    step: int
    path: str
    committed: bool


def list_remote(location: RemoteLocation) -> list[RemoteEntry]:
    """Every remote ``checkpoint-<step>`` folder, oldest step first (an empty or missing root: none)."""
    location.refresh()
    fs = location.fs
    try:
        names = fs.ls(location.root, detail=False)
    except FileNotFoundError:
        return []
    folders = {}
    for name in names:
        step = parse_checkpoint_step(name.rstrip("/").rsplit("/", 1)[-1])
        if step is not None:
            folders[step] = name.rstrip("/")
    manifests = set(fs.glob(location.path("checkpoint-*", MANIFEST_NAME))) if folders else set()
    manifests = {m.rstrip("/") for m in manifests}
    return [
        RemoteEntry(step, path, f"{path}/{MANIFEST_NAME}" in manifests)
        for step, path in sorted(folders.items())
    ]


def remote_files(
    location: RemoteLocation,
    remote_dir: str,
    *,
    attempts: int = 5,
    on_retry: Callable[[BaseException], None] | None = None,
) -> dict[str, int | None]:
    """``{relative name: size}`` of every file under ``remote_dir`` as the remote lists it now (no cached
    listing; an absent folder: none). Used to check what an upload left there before its manifest goes up."""
    location.refresh()
    try:
        found = with_retries(
            lambda: location.fs.find(remote_dir, detail=True),
            attempts=attempts,
            on_retry=on_retry,
            what=f"list {remote_dir}",
        )
    except FileNotFoundError:
        return {}
    return {path[len(remote_dir) + 1 :]: info.get("size") for path, info in found.items()}


def read_remote_manifest(location: RemoteLocation, entry: RemoteEntry) -> tuple[Manifest, bytes]:
    """The parsed manifest of a remote copy and its exact bytes (written unchanged into the local copy).

    Raises:
        ValueError: the manifest is damaged, of another format, or for another step.
    """
    raw = location.fs.cat_file(f"{entry.path}/{MANIFEST_NAME}")
    body = json.loads(raw.decode("utf-8"))
    if not isinstance(body, dict):
        raise ValueError("manifest is not a JSON object")
    manifest = Manifest.from_json_dict(body)
    if manifest.step != entry.step:
        raise ValueError(f"manifest is for step {manifest.step}, folder name says {entry.step}")
    return manifest, raw


def delete_remote(location: RemoteLocation, entry: RemoteEntry) -> None:
    """Remove one remote copy: its manifest first (it stops counting at once), then the rest."""
    fs = location.fs
    if entry.committed:
        fs.rm_file(f"{entry.path}/{MANIFEST_NAME}")
    fs.rm(entry.path, recursive=True)


def prune_remote(location: RemoteLocation, keep: int, *, protect: set[int] = frozenset()) -> list[int]:
    """Apply remote retention (module docstring); returns the deleted steps. A failed delete is logged and
    retried after the next upload: it must not stop the uploads."""
    entries = list_remote(location)
    committed = [e for e in entries if e.committed]
    if not committed:
        return []
    newest = committed[-1].step
    kept = {e.step for e in committed[-keep:]} | {newest} | set(protect)
    doomed = [e for e in committed if e.step not in kept]
    doomed += [e for e in entries if not e.committed and e.step < newest and e.step not in protect]
    deleted = []
    for entry in sorted(doomed, key=lambda e: e.step):
        try:
            delete_remote(location, entry)
        except Exception as e:  # noqa: BLE001 - retention is best effort; the next upload tries again
            logger.warning(
                "Could not delete remote %s now (%s); will retry later", entry.path, describe_error(e)
            )
            continue
        logger.info(
            "Pruned remote %s (%s)",
            entry.path.rsplit("/", 1)[-1],
            f"keeping the newest {keep}" if entry.committed else "an upload that never finished",
        )
        deleted.append(entry.step)
    return deleted
