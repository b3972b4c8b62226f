"""The commit protocol: what makes a checkpoint folder count.

A checkpoint folder counts only once ``aegis_manifest.json`` exists inside it. The manifest is written last,
after every file was flushed to disk, and it lists each file with its size and xxh3 checksum::

    1. fsync every file in the folder (hashing it in the same read)
    2. fsync the folder (and sub-folders), so the directory entries are durable
    3. write the manifest to a temporary name, fsync it, os.replace() it into place
    4. fsync the folder and its parent

A crash before step 3 completes leaves a folder without a manifest: uncommitted, never used for resume. A crash
after it leaves a complete, durable checkpoint. ``verify_checkpoint`` is the read side of the same contract.

Every flush, rename and deletion goes through ``storage.fsio`` (the seam where tests inject faults and where the
power-loss tests switch single calls off); its helpers are importable from here as well, and so are the file
checksums of ``storage.hashing``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import xxhash

from ..errors import CommitError
from ..progress import byte_progress
from . import confine, fsio
from .fsio import atomic_write_bytes, atomic_write_json, fsync_dir, fsync_file  # noqa: F401 - re-exported
from .hashing import (
    READ_AHEAD_MIN_BYTES,
    READ_CHUNK_BYTES,
    FileDigest,
    hash_file,
    hash_file_read_ahead,
)
from .layout import MANIFEST_NAME
from .manifestcheck import MAX_MANIFEST_BYTES, check_manifest_fields

logger = logging.getLogger(__name__)

MANIFEST_FORMAT = "aegis-ckpt-manifest"
MANIFEST_VERSION = 1
HASH_NAME = "xxh3_128"
_TMP_PREFIX = fsio.TMP_PREFIX
_FSYNC_THREADS = 4


def _is_internal_name(name: str) -> bool:
    return name == MANIFEST_NAME or name.startswith(_TMP_PREFIX)


def list_checkpoint_files(folder: str | os.PathLike) -> list[str]:
    """Relative POSIX-style paths of every regular file under ``folder``, except our own manifest files."""
    folder = Path(folder)
    out: list[str] = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            if _is_internal_name(name):
                continue
            full = Path(root) / name
            if full.is_file():
                out.append(full.relative_to(folder).as_posix())
    return out


# --------------------------------------------------------------------------------------------------------------
# Manifest
# --------------------------------------------------------------------------------------------------------------
@dataclass
class Manifest:
    """The parsed content of ``aegis_manifest.json``."""

    step: int
    files: dict[str, FileDigest]
    committed_unix: float
    reason: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        return sum(d.size for d in self.files.values())

    def to_json_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "format": MANIFEST_FORMAT,
            "version": MANIFEST_VERSION,
            "hash": HASH_NAME,
            "step": self.step,
            "reason": self.reason,
            "committed_unix": self.committed_unix,
            "committed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.committed_unix)),
            "total_bytes": self.total_bytes,
            "meta": self.meta,
            "files": {
                name: {"size": d.size, HASH_NAME: d.xxh3_128, **({"sha256": d.sha256} if d.sha256 else {})}
                for name, d in sorted(self.files.items())
            },
        }
        body["manifest_checksum"] = _canonical_checksum(body)
        return body

    @classmethod
    def from_json_dict(cls, body: dict[str, Any]) -> Manifest:
        if body.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"not an aegis manifest (format={body.get('format')!r})")
        if body.get("version") != MANIFEST_VERSION:
            raise ValueError(f"unsupported manifest version {body.get('version')!r}")
        expected = body.get("manifest_checksum")
        rest = {k: v for k, v in body.items() if k != "manifest_checksum"}
        if expected != _canonical_checksum(rest):
            raise ValueError("manifest checksum mismatch (the manifest itself is damaged)")
        check_manifest_fields(body, hash_name=HASH_NAME)
        files = {
            name: FileDigest(size=int(d["size"]), xxh3_128=str(d[HASH_NAME]), sha256=d.get("sha256"))
            for name, d in body["files"].items()
        }
        return cls(
            step=int(body["step"]),
            files=files,
            committed_unix=float(body["committed_unix"]),
            reason=str(body.get("reason", "")),
            meta=dict(body.get("meta", {})),
        )


def _canonical_checksum(body: dict[str, Any]) -> str:
    return xxhash.xxh3_128_hexdigest(json.dumps(body, sort_keys=True, separators=(",", ":")).encode("utf-8"))


def read_manifest(folder: str | os.PathLike) -> Manifest:
    """Parse the manifest of ``folder``; raises ``FileNotFoundError``, ``OSError`` or ``ValueError`` (the
    manifest must be a regular file inside the folder, not a link; ``confine``)."""
    body = confine.read_member_json(folder, MANIFEST_NAME, max_bytes=MAX_MANIFEST_BYTES)
    if not isinstance(body, dict):
        raise ValueError("manifest is not a JSON object")
    return Manifest.from_json_dict(body)


def is_committed(folder: str | os.PathLike) -> bool:
    """Cheap test: does the folder carry a manifest at all (no verification)."""
    return (Path(folder) / MANIFEST_NAME).is_file()


# --------------------------------------------------------------------------------------------------------------
# Commit
# --------------------------------------------------------------------------------------------------------------
def commit_checkpoint(
    folder: str | os.PathLike,
    *,
    step: int,
    reason: str = "",
    meta: dict[str, Any] | None = None,
    sha256: bool = False,
    known: dict[str, FileDigest] | None = None,
    progress: bool = False,
) -> Manifest:
    """Make every file in ``folder`` durable, then write the manifest that marks the folder committed.

    ``progress`` shows a bar while a large folder is read back (a synchronous save, on the training thread).

    ``known`` maps relative names to digests that the writer computed from memory while writing (see
    ``directwrite``): such a file is not read back, only its size on disk is checked against the digest (a
    mismatch is a ``CommitError``); it is flushed like every other file. The digests must carry a sha256 when
    ``sha256`` is asked for; those that do not are read back.

    Raises:
        CommitError: the folder is missing or empty, or a file could not be read or flushed. The folder is then
            left without a manifest, i.e. uncommitted; older committed checkpoints are untouched.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CommitError(f"cannot commit {folder}: the folder does not exist")
    stale = folder / MANIFEST_NAME
    if stale.exists():
        # Re-committing a folder that was overwritten in place: withdraw the old promise first, durably.
        fsio.unlink(stale)
        fsio.fsync_dir(folder)
    try:
        names = list_checkpoint_files(folder)
        if not names:
            raise CommitError(f"cannot commit {folder}: the folder holds no files")
        files = _flush_and_digest(folder, names, known=known or {}, sha256=sha256, progress=progress)
        _fsync_folders(folder, names)
        manifest = Manifest(
            step=step, files=files, committed_unix=time.time(), reason=reason, meta=dict(meta or {})
        )
        fsio.atomic_write_json(folder / MANIFEST_NAME, manifest.to_json_dict())
        fsio.fsync_dir(folder.parent)
    except CommitError:
        raise
    except OSError as e:
        raise CommitError(f"cannot commit {folder}: {e}") from e
    return manifest


def _flush_and_digest(
    folder: Path, names: list[str], *, known: dict[str, FileDigest], sha256: bool, progress: bool
) -> dict[str, FileDigest]:
    """Step 1 of the protocol: fsync every file of ``folder`` and take its digest (read back, or the writer's
    ``known`` one after a size check). Every fsync has returned when this returns.

    Flushing waits on the disk and hashing on the CPU (it reads the pages back from the cache): the fsyncs run
    on threads (they release the GIL) while this thread hashes, so a commit costs about the longer of the two
    instead of their sum."""
    # Digests from the writer are taken as they are unless a sha256 is asked for and they lack it.
    trusted = {n: d for n, d in known.items() if d.sha256 is not None or not sha256}
    # The read buffer only has to hold what gets read back: with ``known`` digests for the large files that is
    # a few small files, and a 16 MiB buffer would be most of an asynchronous save's fixed memory.
    read_back = [n for n in names if n not in trusted]
    largest = max((os.stat(folder / n).st_size for n in read_back), default=1)
    buffer = bytearray(max(64 * 1024, min(READ_CHUNK_BYTES, largest)))
    files: dict[str, FileDigest] = {}
    total = sum(os.stat(folder / n).st_size for n in read_back) if progress else 0
    with (
        byte_progress(total, f"Committing {folder.name}") as on_read,
        ThreadPoolExecutor(max_workers=_FSYNC_THREADS, thread_name_prefix="aegis-fsync") as pool,
    ):
        flushes = [pool.submit(fsio.fsync_file, folder / name) for name in names]
        try:
            for name in names:
                digest = trusted.get(name)
                if digest is not None:
                    files[name] = _checked_known_digest(folder, name, digest, sha256=sha256)
                else:
                    files[name] = hash_file(folder / name, sha256=sha256, buffer=buffer, on_read=on_read)
        except BaseException:
            for flush in flushes:
                flush.cancel()
            raise
        for flush in flushes:
            flush.result()
    return files


def _checked_known_digest(folder: Path, name: str, digest: FileDigest, *, sha256: bool) -> FileDigest:
    """The writer's digest of ``name``, once the file on disk has the size it says (the bytes are not read
    back); without its sha256 unless one is asked for."""
    on_disk = os.stat(folder / name).st_size
    if on_disk != digest.size:
        raise CommitError(
            f"cannot commit {folder}: {name} has {on_disk} bytes on disk, {digest.size} were written"
        )
    return digest if sha256 else FileDigest(digest.size, digest.xxh3_128)


def _fsync_folders(folder: Path, names: list[str]) -> None:
    """Step 2: fsync every folder that holds a file, and those between it and ``folder``, deepest first and
    ``folder`` last (once each): the entries of the files reach the disk before the manifest's entry can."""
    folders = {folder}
    for name in names:
        folders.update(p for p in (folder / name).parents if p != folder and folder in p.parents)
    for d in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        fsio.fsync_dir(d)


# --------------------------------------------------------------------------------------------------------------
# Verify
# --------------------------------------------------------------------------------------------------------------
@dataclass
class VerifyResult:
    """Outcome of checking one folder against its manifest."""

    folder: Path
    ok: bool
    problems: list[str]
    manifest: Manifest | None = None
    mode: str = "full"

    def summary(self) -> str:
        return "ok" if self.ok else "; ".join(self.problems)


def verify_checkpoint(folder: str | os.PathLike, *, full: bool = True) -> VerifyResult:
    """Check a folder against its manifest: every listed file present with the listed size (quick), and with
    the listed xxh3 checksum (full). Confined (``confine``): a linked folder, a manifest that names anything but
    a regular file inside the folder, or a link or special file anywhere in the folder fails it, and nothing
    outside the folder is read."""
    folder = Path(folder)
    mode = "full" if full else "quick"
    problem = confine.check_folder(folder)
    if problem:
        return VerifyResult(folder, False, [problem], None, mode)
    try:
        manifest = read_manifest(folder)
    except FileNotFoundError:
        return VerifyResult(folder, False, ["uncommitted: no manifest (the save did not finish)"], None, mode)
    except (OSError, ValueError, KeyError, TypeError) as e:
        return VerifyResult(folder, False, [f"unreadable manifest: {e}"], None, mode)

    problems = list(confine.foreign_entries(folder))
    if problems:
        return VerifyResult(folder, False, problems, manifest, mode)
    buffer = bytearray(READ_CHUNK_BYTES) if full else None
    with byte_progress(manifest.total_bytes if full else 0, f"Verifying {folder.name}") as on_read:
        for name, digest in sorted(manifest.files.items()):
            problem = _verify_member(folder, name, digest, full=full, buffer=buffer, on_read=on_read)
            if problem:
                problems.append(problem)
    return VerifyResult(folder, not problems, problems, manifest, mode)


def _verify_member(
    folder: Path, name: str, digest: FileDigest, *, full: bool, buffer: bytearray | None, on_read=None
) -> str | None:
    """One listed file against its digest; the problem, or None when it matches."""
    try:
        size = confine.member_stat(folder, name).st_size
    except FileNotFoundError:
        return f"missing file {name}"
    except confine.ConfinementError as e:
        return str(e)
    except OSError as e:
        return f"cannot stat {name}: {e}"
    if size != digest.size:
        return f"{name} has {size} bytes, manifest says {digest.size}"
    if not full:
        return None
    path = folder / name
    try:
        if size >= READ_AHEAD_MIN_BYTES:
            actual = hash_file_read_ahead(path, on_read=on_read, opener=confine.open_no_follow)
        else:
            actual = hash_file(path, buffer=buffer, on_read=on_read, opener=confine.open_no_follow)
    except OSError as e:
        return f"cannot read {name}: {e}"
    if actual.xxh3_128 != digest.xxh3_128:
        return f"{name} checksum mismatch (content changed or damaged)"
    return None
