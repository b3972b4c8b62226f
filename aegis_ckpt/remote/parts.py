"""One checkpoint whose files lie on several machines: the remote side of node-local output dirs.

With node-local output dirs (``save_on_each_node``) every node holds a full copy of a checkpoint except the files
that each rank writes for itself (``rng_state_<rank>.pth``): a node's disk has those of its own ranks only. A
remote copy must hold all of them, so every node uploads what only it has:

* global rank 0 uploads every file of its copy (the shared files and its ranks' own), but not the manifest;
* the first process of every other node uploads its ranks' own files, then a part record
  (``aegis_part_rank<r>.json``: those files' sizes and hashes, in the manifest's format, tagged with the
  session that every rank agreed on at train begin);
* once all ranks agree that every node has uploaded (``distributed``, piggybacked on the step-end agreement),
  rank 0 reads the part records of the step, builds the manifest of the union, checks every listed file's
  remote size, and uploads the manifest, last. A step that lacks a node's part record never gets a manifest,
  so a remote copy missing one node's files does not exist for resume.

A part record of another session (a step saved again after a restart) is ignored: only this session's records
count, so an old record never vouches for files that were replaced since.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path

from ..storage.commit import Manifest
from .catalog import remote_files
from .location import RemoteError, RemoteLocation, with_retries
from .upload import UploadResult, check_sizes, put_manifest, upload_files

PART_PREFIX = "aegis_part_rank"
_RANK_FILE = re.compile(r"rng_state_(\d+)\.pth")


def part_name(rank: int) -> str:
    return f"{PART_PREFIX}{rank}.json"


def file_rank(name: str) -> int | None:
    """The global rank that writes file ``name`` of a checkpoint for itself (``rng_state_<rank>.pth``), or None
    for a file that every node's copy holds alike."""
    match = _RANK_FILE.fullmatch(name.rsplit("/", 1)[-1])
    return int(match.group(1)) if match else None


def rank_files(manifest: Manifest) -> dict:
    """The files of a node's copy that only this node has: the ones each rank writes for itself. Everything else
    in a node's copy is written by its first process alike on every node (global rank 0 uploads those)."""
    return {name: d for name, d in manifest.files.items() if file_rank(name) is not None}


def upload_part(
    location: RemoteLocation,
    folder: Path,
    manifest: Manifest,
    *,
    rank: int,
    session: int,
    workers: int,
    attempts: int,
    on_retry: Callable[[BaseException], None] | None,
) -> UploadResult:
    """Upload this node's own files of ``folder`` and then its part record (the record last: it vouches for
    files that are there)."""
    started = time.perf_counter()
    remote_dir = location.path(folder.name)
    files = rank_files(manifest)
    sent = upload_files(
        location, folder, files, remote_dir, workers=workers, attempts=attempts, on_retry=on_retry
    )
    part = Manifest(
        step=manifest.step,
        files=files,
        committed_unix=manifest.committed_unix,
        reason="part",
        meta={"rank": rank, "session": session},
    )
    body = json.dumps(part.to_json_dict(), indent=2, sort_keys=True).encode("utf-8")
    target = f"{remote_dir}/{part_name(rank)}"
    with_retries(
        lambda: location.fs.pipe_file(target, body),
        attempts=attempts,
        on_retry=on_retry,
        what=f"upload {target}",
    )
    return UploadResult(manifest.step, remote_dir, sent, time.perf_counter() - started)


def read_parts(location: RemoteLocation, remote_dir: str, step: int, session: int, attempts: int) -> list:
    """This session's part records of ``step`` found in ``remote_dir`` (damaged or foreign ones left out)."""
    names = [n for n in remote_files(location, remote_dir, attempts=attempts) if n.startswith(PART_PREFIX)]
    parts = []
    for name in sorted(names):
        try:
            raw = location.fs.cat_file(f"{remote_dir}/{name}")
            part = Manifest.from_json_dict(json.loads(raw.decode("utf-8")))
        except (ValueError, KeyError, TypeError):
            continue
        if part.step == step and part.meta.get("session") == session:
            parts.append(part)
    return parts


def commit_union(
    location: RemoteLocation,
    own: Manifest,
    *,
    remote_dir: str,
    parts_expected: int,
    session: int,
    attempts: int,
    on_retry: Callable[[BaseException], None] | None,
) -> Manifest:
    """Build and upload the manifest of ``own`` plus every other node's part record (module docstring).

    Raises:
        RemoteError: a node's part record is missing (that node did not upload this step) or a listed file is
            missing or of another size: this step gets no manifest.
    """
    parts = read_parts(location, remote_dir, own.step, session, attempts)
    ranks = {part.meta.get("rank") for part in parts}
    if len(ranks) < parts_expected:
        raise RemoteError(
            f"{remote_dir}: the files of {parts_expected - len(ranks)} of {parts_expected} other node(s) are "
            "not there; this step gets no manifest"
        )
    files = dict(own.files)
    for part in parts:
        for name, digest in part.files.items():
            files.setdefault(name, digest)
    union = Manifest(own.step, files, own.committed_unix, own.reason, dict(own.meta))
    check_sizes(location, remote_dir, union, attempts=attempts, on_retry=on_retry)
    put_manifest(location, remote_dir, union, attempts=attempts, on_retry=on_retry)
    return union
