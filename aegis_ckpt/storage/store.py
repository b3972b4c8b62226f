"""The checkpoint store: listing, retention and quarantine inside one output directory.

Layout::

    output_dir/
      checkpoint-120/            a normal Hugging Face checkpoint (+ aegis_manifest.json once committed)
      checkpoint-180/
      .aegis/
        store.json               marks the directory as managed by aegis-ckpt
        quarantine/<ts>-checkpoint-150/   uncommitted or damaged folders, moved aside and reported
        trash/                   pruned folders on their way out (renamed first, then deleted)
        staging/step-200/        a save written outside the Trainer (asynchronous saves, custom-loop managers);
                                 committed there, then renamed to ``checkpoint-200`` in one step
        audit.jsonl              every quarantine and prune is recorded there too (``audit.py``)

Nothing under ``.aegis/`` is named ``checkpoint-*`` at the top of ``output_dir``, so the Trainer's
``get_last_checkpoint`` and its rotation never see it.

A committed checkpoint whose manifest has ``meta.pinned = true`` (a tagged save kept on purpose) is never pruned
and does not count toward ``max_keep``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import CommitError
from ..policy.retention import Retained, select_prunable
from . import commit
from .audit import AuditLog
from .commit import atomic_write_json, is_committed, read_manifest, verify_checkpoint
from .layout import (
    AEGIS_DIR,
    CHECKPOINT_PREFIX,
    FINAL_MODEL_DIR,
    QUARANTINE_DIR,
    QUARANTINE_RECORD,
    STAGING_DIR,
    STAGING_FINAL_DIR,
    STAGING_PREFIX,
    STORE_MARKER,
    TRASH_DIR,
    checkpoint_dir_name,
    parse_checkpoint_step,
)

logger = logging.getLogger(__name__)

PIN_META_KEY = "pinned"


@dataclass(frozen=True)
class CheckpointEntry:
    step: int
    path: Path

    @property
    def is_committed(self) -> bool:
        return is_committed(self.path)


def _dir_size_bytes(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += (Path(root) / name).stat().st_size
            except OSError:
                pass
    return total


def _utc_stamp() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())


class CheckpointStore:
    """Checkpoint folders of one output directory, and the operations that move or delete them."""

    def __init__(self, output_dir: str | os.PathLike):
        self.output_dir = Path(output_dir)
        self.aegis_dir = self.output_dir / AEGIS_DIR
        self.quarantine_dir = self.aegis_dir / QUARANTINE_DIR
        self.trash_dir = self.aegis_dir / TRASH_DIR
        self.staging_dir = self.aegis_dir / STAGING_DIR
        self.audit = AuditLog.in_dir(self.aegis_dir)

    # ---- listing -------------------------------------------------------------------------------------------
    def checkpoints(self) -> list[CheckpointEntry]:
        """All ``checkpoint-<step>`` folders, oldest step first, committed or not."""
        if not self.output_dir.is_dir():
            return []
        out = []
        with os.scandir(self.output_dir) as it:
            for entry in it:
                step = parse_checkpoint_step(entry.name)
                if step is not None and entry.is_dir():
                    out.append(CheckpointEntry(step, Path(entry.path)))
        return sorted(out, key=lambda e: e.step)

    def committed(self) -> list[CheckpointEntry]:
        return [e for e in self.checkpoints() if e.is_committed]

    def path_for_step(self, step: int) -> Path:
        return self.output_dir / checkpoint_dir_name(step)

    # ---- managed marker ------------------------------------------------------------------------------------
    def is_managed(self) -> bool:
        """True once aegis-ckpt has saved into this directory: a folder without a manifest is then an
        interrupted save, not a checkpoint of the plain Trainer."""
        return (self.aegis_dir / STORE_MARKER).is_file()

    def mark_managed(self) -> None:
        if self.is_managed():
            return
        self.aegis_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(
            self.aegis_dir / STORE_MARKER,
            {"format": "aegis-ckpt-store", "version": 1, "created_unix": time.time()},
        )

    # ---- quarantine ----------------------------------------------------------------------------------------
    def quarantine(self, folder: str | os.PathLike, reason: str) -> Path | None:
        """Move ``folder`` aside (never delete it) and record why. Returns the new path, or None if the folder
        vanished meanwhile or could not be moved (logged)."""
        folder = Path(folder)
        if not folder.exists():
            return None
        self.quarantine_dir.mkdir(parents=True, exist_ok=True)
        target = self.quarantine_dir / f"{_utc_stamp()}-{folder.name}"
        n = 1
        while target.exists():
            n += 1
            target = self.quarantine_dir / f"{_utc_stamp()}-{folder.name}.{n}"
        try:
            os.replace(folder, target)
        except OSError as e:
            logger.error(
                "Could not move %s to quarantine (%s); reason it was set aside: %s", folder, e, reason
            )
            return None
        commit.fsync_dir(self.output_dir)
        commit.fsync_dir(self.quarantine_dir)
        try:
            atomic_write_json(
                target / QUARANTINE_RECORD,
                {"original_path": str(folder), "reason": reason, "moved_unix": time.time()},
            )
        except OSError as e:
            logger.warning("Could not write the quarantine record in %s: %s", target, e)
        logger.warning("Set aside %s -> %s: %s", folder.name, target, reason)
        self.audit.append(
            "quarantine",
            step=parse_checkpoint_step(folder.name),
            reason=reason,
            path=folder.name,
            moved_to=target.name,
        )
        return target

    def quarantined(self) -> list[dict]:
        """Records of quarantined folders, oldest first."""
        if not self.quarantine_dir.is_dir():
            return []
        out = []
        for p in sorted(self.quarantine_dir.iterdir()):
            record = {"path": str(p), "reason": "unknown"}
            try:
                record.update(json.loads((p / QUARANTINE_RECORD).read_text(encoding="utf-8")))
            except (OSError, ValueError):
                pass
            out.append(record)
        return out

    # ---- retention -----------------------------------------------------------------------------------------
    def select_prunable(
        self,
        max_keep: int,
        *,
        protect: set[Path] | None = None,
        milestone_every_sec: float | None = None,
    ) -> list[CheckpointEntry]:
        """Committed checkpoints that retention would delete (``policy.retention`` decides; this reads the
        facts it needs from the manifests). Uncommitted folders are never selected here."""
        entries = {e.path.resolve(): e for e in self.committed()}
        records = [self._retained(path, e.step) for path, e in entries.items()]
        chosen = select_prunable(
            records,
            max_keep,
            protect={Path(p).resolve() for p in (protect or set())},
            milestone_every_sec=milestone_every_sec,
        )
        return [entries[r.path] for r in chosen]

    @staticmethod
    def _retained(path: Path, step: int) -> Retained:
        try:
            manifest = read_manifest(path)
        except (OSError, ValueError, KeyError, TypeError):
            return Retained(path, step, None, False)
        return Retained(path, step, manifest.committed_unix, bool(manifest.meta.get(PIN_META_KEY)))

    @staticmethod
    def is_pinned(folder: Path) -> bool:
        try:
            return bool(read_manifest(folder).meta.get(PIN_META_KEY))
        except (OSError, ValueError, KeyError, TypeError):
            return False

    def prune(
        self,
        max_keep: int,
        *,
        protect: set[Path] | None = None,
        milestone_every_sec: float | None = None,
    ) -> list[Path]:
        """Delete old committed checkpoints. Each one is first renamed into ``.aegis/trash`` (one atomic step
        that removes it from view), then deleted; a crash in between leaves only trash, emptied later."""
        removed = []
        for entry in self.select_prunable(max_keep, protect=protect, milestone_every_sec=milestone_every_sec):
            if self._discard(entry.path):
                logger.info("Pruned %s (keeping the newest %d committed)", entry.path.name, max_keep)
                self.audit.append(
                    "prune",
                    step=entry.step,
                    reason=f"retention keeps the newest {max_keep}",
                    path=entry.path.name,
                )
                removed.append(entry.path)
        if removed:
            commit.fsync_dir(self.output_dir)
        self.empty_trash()
        return removed

    def _discard(self, folder: Path) -> bool:
        self.trash_dir.mkdir(parents=True, exist_ok=True)
        target = (
            self.trash_dir / f"pruned-{folder.name.replace(CHECKPOINT_PREFIX + '-', '')}-{time.time_ns()}"
        )
        try:
            os.replace(folder, target)
        except OSError as e:
            # A failed delete (e.g. a file still open on Windows) must not stop training; retry next prune.
            logger.warning("Could not prune %s now (%s); will retry after the next commit", folder, e)
            return False
        return True

    def empty_trash(self) -> None:
        if not self.trash_dir.is_dir():
            return
        for p in self.trash_dir.iterdir():
            shutil.rmtree(p, ignore_errors=True)
            if p.exists():
                logger.warning("Could not delete %s yet; will retry later", p)

    def size_bytes(self, folder: Path) -> int:
        return _dir_size_bytes(folder)

    # ---- staging (writers that save outside the Trainer) ---------------------------------------------------
    def staging_path(self, step: int) -> Path:
        """Where the save of ``step`` is written before it is published; invisible to resume and rotation."""
        return self.staging_dir / f"{STAGING_PREFIX}{step}"

    def fresh_staging(self, step: int) -> Path:
        """An empty staging folder for ``step`` (a leftover of an interrupted save is removed first)."""
        path = self.staging_path(step)
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
        return path

    def publish(self, staged: Path, step: int, *, replace: bool = True) -> Path | None:
        """Rename a committed staging folder to ``checkpoint-<step>`` (one atomic step) and make it durable.

        A folder already at that name is replaced: a committed one (the same step saved again, e.g. a tagged save
        after a rolling one) goes to the trash, an uncommitted one to quarantine. With ``replace=False`` the
        staged copy is dropped instead and None returned (the Trainer saved that step itself). A crash between
        that and the rename leaves the committed staging folder, which ``recover_staging`` puts in place on the
        next start.
        """
        return self._publish_as(staged, self.path_for_step(step), replace=replace)

    def final_model_staging(self) -> Path:
        """Where the final model of a finished run is written before ``publish_final_model`` (under ``.aegis/``,
        outside the checkpoint staging folder, so the resume-time recovery never takes it for a checkpoint)."""
        return self.aegis_dir / STAGING_FINAL_DIR

    def publish_final_model(self, staged: Path) -> Path:
        """Rename a committed final model into ``final_model/`` and make it durable, exactly like a checkpoint's
        publish (an older one goes to the trash): only after this returns may the run be recorded as completed."""
        target = self._publish_as(staged, self.output_dir / FINAL_MODEL_DIR, replace=True)
        if target is None:  # cannot happen with replace=True: it publishes or raises
            raise CommitError(f"{staged} was not published")
        self.empty_trash()  # an older final model replaced by this one
        return target

    def _publish_as(self, staged: Path, target: Path, *, replace: bool) -> Path | None:
        if not is_committed(staged):
            raise CommitError(f"refusing to publish {staged}: it is not committed")
        if target.exists() and not replace:
            logger.debug("%s already exists; dropping the staged copy of the same step", target.name)
            shutil.rmtree(staged, ignore_errors=True)
            return None
        if target.exists():
            if is_committed(target):
                if not self._discard(target):
                    raise CommitError(f"cannot replace {target}: it could not be moved out of the way")
            elif (
                self.quarantine(target, "uncommitted folder in the way of a new commit of the same step")
                is None
            ):
                raise CommitError(f"cannot replace {target}: it could not be moved to quarantine")
            commit.fsync_dir(self.output_dir)
        try:
            os.replace(staged, target)
        except OSError as e:
            raise CommitError(f"cannot move {staged} to {target}: {e}") from e
        commit.fsync_dir(staged.parent)
        commit.fsync_dir(self.output_dir)
        return target

    def recover_staging(self) -> list[Path]:
        """After a crash: publish committed staging folders that never got their final name (if that name is
        free and the files match), delete the rest (interrupted saves that never promised anything). Returns
        the published paths."""
        published: list[Path] = []
        if not self.staging_dir.is_dir():
            return published
        for folder in sorted(self.staging_dir.iterdir()):
            step = None
            if folder.name.startswith(STAGING_PREFIX):
                try:
                    step = int(folder.name[len(STAGING_PREFIX) :])
                except ValueError:
                    step = None
            if (
                step is not None
                and not self.path_for_step(step).exists()
                and verify_checkpoint(folder, full=True).ok
            ):
                published.append(self.publish(folder, step))
                logger.warning("Recovered %s: committed before the crash, now in place", published[-1].name)
                continue
            shutil.rmtree(folder, ignore_errors=True)
            logger.warning("Removed %s: a save interrupted before it committed", folder)
            self.audit.append(
                "save_failed", step=step, reason="interrupted before commit (found in staging at start)"
            )
        return published
