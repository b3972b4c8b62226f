"""The checkpoint store: listing, retention and quarantine inside one output directory.

Layout::

    output_dir/
      checkpoint-120/            a normal Hugging Face checkpoint (+ aegis_manifest.json once committed)
      checkpoint-180/
      .aegis/
        store.json               marks the directory as managed by aegis-ckpt
        quarantine/<ts>-checkpoint-150/   uncommitted or damaged folders, moved aside and reported
        trash/                   pruned folders on their way out (renamed first, then deleted)
        staging/step-200/        an asynchronous save being written; renamed to checkpoint-200 once committed

Nothing under ``.aegis/`` is named ``checkpoint-*`` at the top of ``output_dir``, so the Trainer's
``get_last_checkpoint`` and its rotation never see it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from . import commit
from .commit import atomic_write_json, is_committed, read_manifest

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint"
AEGIS_DIR = ".aegis"
STORE_MARKER = "store.json"
QUARANTINE_DIR = "quarantine"
TRASH_DIR = "trash"
STAGING_DIR = "staging"
QUARANTINE_RECORD = "aegis_quarantine.json"
_CHECKPOINT_RE = re.compile(rf"^{CHECKPOINT_PREFIX}-(\d+)$")


def checkpoint_dir_name(step: int) -> str:
    """The folder name the Trainer uses for ``step``."""
    return f"{CHECKPOINT_PREFIX}-{step}"


def parse_checkpoint_step(name: str) -> int | None:
    m = _CHECKPOINT_RE.match(name)
    return int(m.group(1)) if m else None


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

    # ---- staging (asynchronous saves) -----------------------------------------------------------------------
    def staging_path(self, step: int) -> Path:
        """Where an asynchronous save of ``step`` is written before it is published (not ``checkpoint-*``)."""
        return self.staging_dir / f"step-{step}"

    def publish(self, staged: Path, step: int) -> Path | None:
        """Make a committed staging folder visible as ``checkpoint-<step>`` in one rename. Returns the new path,
        or None when that checkpoint already exists (the Trainer saved the same step itself): the staged copy
        is then removed."""
        target = self.path_for_step(step)
        if target.exists():
            logger.debug("checkpoint-%d already exists; dropping the staged copy", step)
            shutil.rmtree(staged, ignore_errors=True)
            return None
        os.replace(staged, target)
        commit.fsync_dir(self.output_dir)
        commit.fsync_dir(self.staging_dir)
        return target

    def recover_staging(self) -> None:
        """After a crash: publish committed staging folders that are newer than every committed checkpoint (the
        process died between commit and publish), and remove the rest (interrupted writes, never visible)."""
        if not self.staging_dir.is_dir():
            return
        newest = max((e.step for e in self.committed()), default=-1)
        for staged in sorted(self.staging_dir.iterdir()):
            name = staged.name
            step = int(name[5:]) if name.startswith("step-") and name[5:].isdigit() else None
            if (
                step is not None
                and step > newest
                and is_committed(staged)
                and not self.path_for_step(step).exists()
            ):
                logger.warning(
                    "Publishing %s, committed before the process stopped, as checkpoint-%d", staged, step
                )
                self.publish(staged, step)
                newest = step
            else:
                logger.info("Removing unfinished staging folder %s (never a visible checkpoint)", staged)
                shutil.rmtree(staged, ignore_errors=True)

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
        # Through the module, so the one fault-injection seam (commit.fsync_dir) covers the store as well.
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
        """Committed checkpoints that retention would delete: all but the newest ``max_keep``, except
        protected paths and milestones. Uncommitted folders are never selected here."""
        committed = self.committed()
        keep = {e.path.resolve() for e in committed[-max_keep:]}
        keep |= {Path(p).resolve() for p in (protect or set())}
        if milestone_every_sec:
            keep |= self._milestones(committed, milestone_every_sec)
        return [e for e in committed if e.path.resolve() not in keep]

    @staticmethod
    def _milestones(committed: list[CheckpointEntry], every_sec: float) -> set[Path]:
        """The first committed checkpoint of each ``every_sec`` window of commit time."""
        first_in_window: dict[int, tuple[float, Path]] = {}
        for e in committed:
            try:
                t = read_manifest(e.path).committed_unix
            except (OSError, ValueError, KeyError):
                continue
            window = int(t // every_sec)
            if window not in first_in_window or t < first_in_window[window][0]:
                first_in_window[window] = (t, e.path.resolve())
        return {p for _t, p in first_in_window.values()}

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
