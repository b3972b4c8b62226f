"""The checkpoint store: listing, staging and publishing, retention and quarantine inside one output directory
(the quarantine's own rules, records and bounds are in ``quarantine``).

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

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import CommitError
from ..policy.retention import Retained, select_prunable
from . import fsio
from .audit import AuditLog
from .commit import is_committed, read_manifest, verify_checkpoint
from .layout import (
    AEGIS_DIR,
    CHECKPOINT_PREFIX,
    FINAL_MODEL_DIR,
    QUARANTINE_DIR,
    QUARANTINE_RECORD,  # noqa: F401 - an old public name of this module
    STAGING_DIR,
    STAGING_FINAL_DIR,
    STAGING_PREFIX,
    STORE_MARKER,
    TRASH_DIR,
    checkpoint_dir_name,
    parse_checkpoint_step,
)
from .quarantine import keep_newest, quarantine_records, set_aside
from .space import folder_bytes

logger = logging.getLogger(__name__)

PIN_META_KEY = "pinned"
METRIC_META_KEY = "metric"  # {"name", "value", "greater_is_better"}: the evaluation at this step (best-k)


@dataclass(frozen=True)
class CheckpointEntry:
    step: int
    path: Path

    @property
    def is_committed(self) -> bool:
        return is_committed(self.path)


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
        """Committed checkpoint folders, oldest first. A ``checkpoint-<step>`` that is a symbolic link is never
        one (its target may be anywhere): the resume scan sets it aside, retention never counts it."""
        return [e for e in self.checkpoints() if not e.path.is_symlink() and e.is_committed]

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
        fsio.makedirs_durable(self.aegis_dir)
        fsio.atomic_write_json(
            self.aegis_dir / STORE_MARKER,
            {"format": "aegis-ckpt-store", "version": 1, "created_unix": time.time()},
        )

    # ---- quarantine ----------------------------------------------------------------------------------------
    def quarantine(self, folder: str | os.PathLike, reason: str) -> Path | None:
        """Move ``folder`` aside (never delete it) and record why; then keep only the newest
        ``QUARANTINE_KEEP`` quarantined folders. Returns the new path, or None if the folder vanished meanwhile
        or could not be moved (logged)."""
        target = set_aside(Path(folder), reason, quarantine_dir=self.quarantine_dir, audit=self.audit)
        if target is not None:
            keep_newest(self.quarantine_dir, newest=target, discard=self._discard, audit=self.audit)
            self.empty_trash()
        return target

    def quarantined(self) -> list[dict]:
        """Records of quarantined folders, oldest first."""
        return quarantine_records(self.quarantine_dir)

    # ---- retention -----------------------------------------------------------------------------------------
    def select_prunable(
        self,
        max_keep: int,
        *,
        protect: set[Path] | None = None,
        milestone_every_sec: float | None = None,
        keep_best_k: int = 0,
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
            keep_best_k=keep_best_k,
        )
        return [entries[r.path] for r in chosen]

    @staticmethod
    def _retained(path: Path, step: int) -> Retained:
        try:
            manifest = read_manifest(path)
        except (OSError, ValueError, KeyError, TypeError):
            return Retained(path, step, None, False)
        metric = manifest.meta.get(METRIC_META_KEY)
        value, higher = None, False
        if isinstance(metric, dict) and isinstance(metric.get("value"), (int, float)):
            value, higher = float(metric["value"]), bool(metric.get("greater_is_better"))
        return Retained(
            path, step, manifest.committed_unix, bool(manifest.meta.get(PIN_META_KEY)), value, higher
        )

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
        keep_best_k: int = 0,
    ) -> list[Path]:
        """Delete old committed checkpoints. Each one is first renamed into ``.aegis/trash`` (one atomic step
        that removes it from view), then deleted; a crash in between leaves only trash, emptied later."""
        removed = []
        prunable = self.select_prunable(
            max_keep, protect=protect, milestone_every_sec=milestone_every_sec, keep_best_k=keep_best_k
        )
        for entry in prunable:
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
            fsio.fsync_dir(self.output_dir)
        self.empty_trash()
        return removed

    def _discard(self, folder: Path) -> bool:
        fsio.makedirs_durable(self.trash_dir)
        target = (
            self.trash_dir / f"pruned-{folder.name.replace(CHECKPOINT_PREFIX + '-', '')}-{time.time_ns()}"
        )
        try:
            fsio.replace(folder, target)
        except OSError as e:
            # A failed delete (e.g. a file still open on Windows) must not stop training; retry next prune.
            logger.warning("Could not prune %s now (%s); will retry after the next commit", folder, e)
            return False
        return True

    def empty_trash(self) -> None:
        if not self.trash_dir.is_dir():
            return
        for p in self.trash_dir.iterdir():
            if p.is_symlink():
                fsio.unlink(p, missing_ok=True)  # the link only: its target is not ours
                continue
            fsio.rmtree(p, ignore_errors=True)
            if p.exists():
                logger.warning("Could not delete %s yet; will retry later", p)

    def size_bytes(self, folder: Path) -> int:
        return folder_bytes(folder)

    # ---- staging (writers that save outside the Trainer) ---------------------------------------------------
    def staging_path(self, step: int) -> Path:
        """Where the save of ``step`` is written before it is published; invisible to resume and rotation."""
        return self.staging_dir / f"{STAGING_PREFIX}{step}"

    def fresh_staging(self, step: int) -> Path:
        """An empty staging folder for ``step`` (a leftover of an interrupted save is removed first)."""
        path = self.staging_path(step)
        if path.exists():
            fsio.rmtree(path)
        fsio.makedirs_durable(path)
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
            fsio.rmtree(staged, ignore_errors=True)
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
            fsio.fsync_dir(self.output_dir)
        try:
            fsio.replace(staged, target)
        except OSError as e:
            raise CommitError(f"cannot move {staged} to {target}: {e}") from e
        fsio.fsync_dir(target.parent)  # the new name first: until then the old one (in staging) stands
        fsio.fsync_dir(staged.parent)
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
            fsio.rmtree(folder, ignore_errors=True)
            logger.warning("Removed %s: a save interrupted before it committed", folder)
            self.audit.append(
                "save_failed", step=step, reason="interrupted before commit (found in staging at start)"
            )
        return published
