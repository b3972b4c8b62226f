"""``NodeMirror``: the background mirror of one node when the nodes keep their checkpoints on local disks.

Each node holds files of a checkpoint that the others lack (``parts``), so no single process can upload a whole
remote copy. The first process of every node runs a ``NodeMirror``:

* on global rank 0 (the coordinator) it uploads every file of its copy but not the manifest; the step then
  waits until all ranks agree that every other node has uploaded its share up to that step (``peers_reached``,
  fed from the step-end agreement, so training never waits for it). Then the worker thread builds the manifest
  of the union and uploads it, last. A step some node skipped (a newer commit replaced it in that node's queue)
  or failed gets no manifest; a newer one follows;
* on the other nodes it uploads the node's own files and its part record, and reports the newest step so sent
  (``uploaded_step``) for the agreement.

Only the coordinator lists and prunes the remote.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ..options import RemoteOptions
from ..storage.commit import Manifest, read_manifest
from .location import RemoteError, RemoteLocation, describe_error
from .mirror import RemoteMirror
from .parts import commit_union, upload_part
from .upload import UploadResult, upload_checkpoint

logger = logging.getLogger(__name__)

MAX_WAITING = 8
"""Steps whose files are up but whose manifest waits for the other nodes, at most (the newest are kept)."""


class NodeMirror(RemoteMirror):
    """A ``RemoteMirror`` that uploads one node's share of each checkpoint (module docstring).

    Args:
        rank: this process's global rank (0: the coordinator, which uploads the manifests).
        session: a number every rank agreed on at train begin; tags this run's part records.
        parts_expected: how many other nodes upload a part of each checkpoint.
    """

    def __init__(
        self,
        options: RemoteOptions,
        output_dir: str | os.PathLike,
        *,
        rank: int,
        session: int,
        parts_expected: int,
        local_max_keep: int = 5,
        location: RemoteLocation | None = None,
    ):
        super().__init__(options, output_dir, local_max_keep=local_max_keep, location=location)
        self.rank = rank
        self.coordinator = rank == 0
        self.session = session
        self.parts_expected = parts_expected
        self.uploaded_step = 0
        """The newest step whose share this node has uploaded (0: none yet)."""
        self._waiting: dict[int, tuple[str, Manifest]] = {}  # coordinator: files up, manifest not yet
        self._peers_step = 0
        self._committing = False
        self._held = False  # a manifest upload failed: wait for news (a newer agreed step, a flush)

    # ---- training-thread side --------------------------------------------------------------------------------
    def peers_reached(self, step: int) -> None:
        """Every other node has uploaded its share up to ``step`` (what all ranks agreed); never blocks."""
        with self._cond:
            if step <= self._peers_step:
                return
            self._peers_step = step
            self._held = False
            if self._extra_due():
                self._start_locked()
                self._cond.notify_all()

    # ---- worker side -----------------------------------------------------------------------------------------
    def _extra_due(self) -> bool:
        ready = any(step <= self._peers_step for step in self._waiting)
        return self._committing or (ready and not self._held)

    def _flush_requested(self) -> None:
        self._held = False

    def _send(self, folder: Path) -> UploadResult:
        manifest = read_manifest(folder)
        on_retry = lambda error: self._trouble(folder, error, retrying=True)  # noqa: E731
        if not self.coordinator:
            return upload_part(
                self.location,
                folder,
                manifest,
                rank=self.rank,
                session=self.session,
                workers=self.options.upload_workers,
                attempts=self.options.attempts,
                on_retry=on_retry,
            )
        result = upload_checkpoint(
            self.location,
            folder,
            manifest=manifest,
            workers=self.options.upload_workers,
            attempts=self.options.attempts,
            on_retry=on_retry,
            with_manifest=False,
        )
        with self._cond:
            self._waiting[manifest.step] = (result.remote_path, manifest)
            for stale in sorted(self._waiting)[
                :-MAX_WAITING
            ]:  # a node that never catches up: keep it bounded
                del self._waiting[stale]
        return result

    def _uploaded(self, folder: Path, result: UploadResult) -> None:
        if self._failing:
            logger.warning("Remote %s answers again: %s uploaded", self.location.url, folder.name)
        self._failing = False
        logger.info(
            "Uploaded this node's files of %s to %s (%.1f MB in %.1f s)%s",
            folder.name,
            self.location.url,
            result.size_bytes / 1e6,
            result.seconds,
            "; its manifest follows once every node has uploaded its files" if self.coordinator else "",
        )
        with self._cond:
            self.uploaded_step = max(self.uploaded_step, result.step)
            if self._extra_due():
                self._cond.notify_all()

    def _do_extra(self) -> None:
        """Upload the manifest of the newest waiting step that every node has reached (coordinator only).

        Long because: it takes the step under the lock, commits it outside, and accounts for the three outcomes
        (committed, refused for good, failed for now) under the lock again."""
        with self._cond:
            ready = sorted(step for step in self._waiting if step <= self._peers_step)
            if not ready or self._committing:
                return
            self._committing = True
            step = ready[-1]
            remote_dir, manifest = self._waiting[step]
        committed = False
        try:
            commit_union(
                self.location,
                manifest,
                remote_dir=remote_dir,
                parts_expected=self.parts_expected,
                session=self.session,
                attempts=self.options.attempts,
                on_retry=None,
            )
            committed = True
        except RemoteError as e:  # a node's share is not there: this step never gets a manifest
            logger.warning("Remote copy of checkpoint-%d not committed: %s", step, describe_error(e))
        except Exception as e:  # noqa: BLE001 - a manifest upload failure must never reach the training loop
            with self._cond:
                self._held = True
                self._committing = False
                self._cond.notify_all()
            self._trouble(Path(remote_dir), e, retrying=False)
            return
        with self._cond:
            for older in [s for s in self._waiting if s <= step]:
                del self._waiting[older]
            self._committing = False
            self._cond.notify_all()
        if committed:
            logger.info(
                "Committed the remote copy of checkpoint-%d (every node's files, manifest last)", step
            )
            self._record_remote(step)
        self._write_status()
