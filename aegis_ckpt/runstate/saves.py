"""What follows every save, in one place: the Trainer callback, the custom-loop checkpointer and the final-model
export all end a save here.

A committed save gets one "Committed ..." log line, its record in the run's audit log, statistics and lease
(``RunRecorder``), and then retention (never before the commit: an older checkpoint is deleted only once a newer
one is safe). A failed save gets one error line, its ``save_failed`` record, and its leftover folder removed (or
set aside in quarantine with the reason, where the folder is the Trainer's own and may be worth a look; never
when the disk is full: the leftover is then deleted, since keeping it would keep the disk full).

With a remote mirror (``remote.RemoteMirror``), every committed folder is also handed to it for a background
upload, and retention keeps the folders it is still uploading.

The save policy's feedback (``record_save``) stays with the callers: the callback feeds it on every rank, also
after a failed commit, and an asynchronous save feeds it when the snapshot is taken, not when it commits.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Protocol

from ..options import CheckpointOptions
from ..storage import fsio
from ..storage.commit import Manifest
from ..storage.space import is_disk_full
from ..storage.store import CheckpointStore
from .recorder import RunRecorder

logger = logging.getLogger(__name__)


class Mirror(Protocol):
    """What the save tail asks of an off-machine mirror (``remote.RemoteMirror``): take a committed folder for
    a background upload (never blocking), and name the folders still being uploaded."""

    def submit(self, folder: Path, manifest: Manifest) -> None: ...

    def in_flight(self) -> list[Path]: ...


class SaveTail:
    """The bookkeeping after each save of one output directory.

    Args:
        store: the output directory's checkpoint store (retention, quarantine).
        options: ``max_keep`` and ``keep_milestone_every_sec`` for retention.
        recorder: returns the run's recorder, or None where nothing is recorded (a replica rank, a finished run).
        protect: returns the checkpoints retention must keep besides the newest (e.g. the Trainer's best model).
        mirror: uploads each committed checkpoint off the machine in the background (None: no remote copies).
    """

    def __init__(
        self,
        store: CheckpointStore,
        options: CheckpointOptions,
        *,
        recorder: Callable[[], RunRecorder | None] = lambda: None,
        protect: Callable[[], Iterable[Path]] = tuple,
        mirror: Mirror | None = None,
    ):
        self.store = store
        self.options = options
        self._recorder = recorder
        self._protect = protect
        self.mirror = mirror

    def committed(
        self,
        folder: Path,
        manifest: Manifest,
        *,
        reason: str,
        write_sec: float,
        commit_sec: float,
        duration_sec: float | None = None,
        tag: str | None = None,
        pinned: bool = False,
        background: bool = False,
        retain: bool = True,
    ) -> None:
        """``folder`` is committed (and in place): log it, record it, then apply retention (``retain``)."""
        timing = (
            f"async: snapshot {write_sec:.2f} s + write and commit {commit_sec:.2f} s in background"
            if background
            else f"write {write_sec:.2f} s + commit {commit_sec:.2f} s"
        )
        tagged = f", tag {tag!r}" + (", kept outside the rolling window" if pinned else "") if tag else ""
        logger.info(
            "Committed %s (step %d, %.1f MB, %s%s, %s)",
            folder,
            manifest.step,
            manifest.total_bytes / 1e6,
            reason,
            tagged,
            timing,
        )
        recorder = self._recorder()
        if recorder is not None:
            recorder.committed(
                folder,
                manifest,
                reason=reason,
                write_sec=write_sec,
                commit_sec=commit_sec,
                duration_sec=duration_sec,
                tag=tag,
            )
        if self.mirror is not None:
            self.mirror.submit(folder, manifest)
        if retain:
            self.prune(folder)

    def failed(
        self,
        *,
        step: int,
        reason: str,
        error: BaseException,
        leftover: Path | None = None,
        quarantine: bool = False,
        background: bool = False,
        log: bool = True,
    ) -> None:
        """The save of ``step`` did not commit: say so once (unless ``log`` is off because the caller raises the
        error instead), record it, and clear ``leftover`` away (delete it, or with ``quarantine`` move it aside
        with the reason: retention only deletes committed folders and the resume scan stops at the newest
        committed one, so a folder left in place would stay forever)."""
        recorder = self._recorder()
        if recorder is not None:
            recorder.save_failed(step=step, reason=reason, error=error)
        full = is_disk_full(error, leftover)
        if log:
            self._log_failure(step, error, background, full=full)
        if leftover is None:
            return
        if quarantine and not full:
            self.store.quarantine(leftover, f"commit failed: {error}")
        else:
            fsio.rmtree(leftover, ignore_errors=True)

    @staticmethod
    def _log_failure(step: int, error: BaseException, background: bool, *, full: bool = False) -> None:
        logger.error(
            "Checkpoint of step %d was NOT committed%s (%s%s: %s). The previous committed checkpoint stays the "
            "resume point; the next save is tried one interval from now.",
            step,
            " in the background" if background else "",
            "disk full, " if full else "",
            type(error).__name__,
            (str(error).strip().splitlines() or [""])[
                0
            ],  # one line: a writer process's error carries a traceback
        )

    def set_aside_later(self, step: int, reason: str) -> list[Path]:
        """Move every checkpoint with a step beyond ``step`` to quarantine with ``reason``: such folders belong to
        an abandoned timeline (training restarted from an older step), and retention would count them as the
        newest and delete the new saves instead. Returns the folders moved."""
        later = [entry.path for entry in self.store.checkpoints() if entry.step > step]
        for path in later:
            self.store.quarantine(path, reason)
        return later

    def prune(self, newest: Path) -> list[Path]:
        """Retention after ``newest`` committed: keep it, the protected ones, the newest ``max_keep`` and the best
        ``keep_best_k`` by metric."""
        return self.store.prune(
            self.options.max_keep,
            protect={newest, *(Path(p) for p in self._protect()), *self._uploading()},
            milestone_every_sec=self.options.keep_milestone_every_sec,
            keep_best_k=self.options.keep_best_k,
        )

    def _uploading(self) -> list[Path]:
        return self.mirror.in_flight() if self.mirror is not None else []
