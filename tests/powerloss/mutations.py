"""Break the durability protocol on purpose, one call at a time, to show that the power-loss tests notice.

Each mutation replaces one function of ``aegis_ckpt.storage.fsio`` for the duration of a test. A ``Skip`` turns
the calls made from one place (the calling function's name, and optionally a test on the path) into no-ops: the
code then runs as if that one ``fsync`` had been deleted. The two reorderings move a rename ahead of the flush
that must precede it.

Run a power-loss test under one mutation with ``AEGIS_POWERCUT_MUTATION=<name>`` (the fixture in ``conftest.py``
applies it); ``test_mutations.py`` does that in-process for the mutations of the commit path.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from aegis_ckpt.storage import fsio
from aegis_ckpt.storage.layout import MANIFEST_NAME


@dataclass(frozen=True)
class Skip:
    """Calls of ``fsio.<function>`` made directly by a function named ``caller`` (and whose path passes
    ``where``) do nothing."""

    function: str
    caller: str
    where: Callable[[Path], bool] | None = None

    def install(self, monkeypatch) -> None:
        real = getattr(fsio, self.function)

        def skipped(target, *args, **kwargs):
            caller = sys._getframe(1).f_code.co_name
            path = Path(target) if not isinstance(target, int) else None
            if caller == self.caller and (self.where is None or (path is not None and self.where(path))):
                return None
            return real(target, *args, **kwargs)

        monkeypatch.setattr(fsio, self.function, skipped)


@dataclass(frozen=True)
class RenameBeforeFlush:
    """``atomic_write_bytes`` renames the temporary file into place first and flushes it afterwards."""

    def install(self, monkeypatch) -> None:
        def atomic_write_bytes(path, data, *, durable=True):
            path = Path(path)
            tmp = path.with_name(f"{fsio.TMP_PREFIX}{os.getpid()}-{path.name}")
            with open(tmp, "wb") as f:
                f.write(data)
            fsio.replace(tmp, path)
            fsio.fsync_file(path)
            fsio.fsync_dir(path.parent)

        monkeypatch.setattr(fsio, "atomic_write_bytes", atomic_write_bytes)


@dataclass(frozen=True)
class ManifestBeforeData:
    """The commit writes the manifest before the checkpoint's files are flushed (they are flushed right after)."""

    def install(self, monkeypatch) -> None:
        real_fsync_file, real_atomic = fsio.fsync_file, fsio.atomic_write_json
        deferred: list = []

        def fsync_file(path):
            deferred.append(path)

        def atomic_write_json(path, obj, **kwargs):
            real_atomic(path, obj, **kwargs)
            if Path(path).name == MANIFEST_NAME:
                while deferred:
                    real_fsync_file(deferred.pop(0))

        monkeypatch.setattr(fsio, "fsync_file", fsync_file)
        monkeypatch.setattr(fsio, "atomic_write_json", atomic_write_json)


def _is_checkpoint_folder(path: Path) -> bool:
    return path.name.startswith(("checkpoint-", "step-"))


MUTATIONS = {
    # the commit (storage.commit.commit_checkpoint; the folder flushes in its step _fsync_folders)
    "commit: no flush of model.safetensors": Skip(
        "fsync_file", "run", lambda p: p.name == "model.safetensors"
    ),
    "commit: no flush of optimizer.pt": Skip("fsync_file", "run", lambda p: p.name == "optimizer.pt"),
    "commit: no flush of the folder before the manifest": Skip(
        "fsync_dir", "_fsync_folders", _is_checkpoint_folder
    ),
    "commit: no flush of the parent after the manifest": Skip(
        "fsync_dir", "commit_checkpoint", lambda p: not _is_checkpoint_folder(p)
    ),
    "commit: manifest before the data is flushed": ManifestBeforeData(),
    # atomic small files (manifest, completed.json, run.json, store.json, stats.json, quarantine records)
    "atomic write: no flush of the temp file": Skip("fsync_fd", "atomic_write_bytes"),
    "atomic write: no flush of the folder after the rename": Skip("fsync_dir", "atomic_write_bytes"),
    "atomic write: rename before flush": RenameBeforeFlush(),
    # publishing a staged checkpoint or the final model (storage.store.CheckpointStore._publish_as)
    "publish: no flush of the output dir after the rename": Skip(
        "fsync_dir", "_publish_as", lambda p: p.name != "staging" and not p.name.startswith(".")
    ),
    # the audit log
    "audit: no flush of the appended line": Skip("fsync_fd", "append"),
    "audit: no flush of the folder after creating the log": Skip("fsync_dir", "append"),
    # folders published whole (tokenizer cache, final model): storage.fsio.publish_dir
    "publish_dir: no flush of the files": Skip("fsync_file", "fsync_tree"),
    "publish_dir: no flush of the parent after the rename": Skip(
        "fsync_dir", "publish_dir", lambda p: not p.name.startswith(".")
    ),
}


def install(name: str, monkeypatch) -> None:
    try:
        mutation = MUTATIONS[name]
    except KeyError:
        raise KeyError(f"unknown mutation {name!r}; known: {', '.join(MUTATIONS)}") from None
    mutation.install(monkeypatch)
