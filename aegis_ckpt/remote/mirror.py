"""``RemoteMirror``: uploads each committed checkpoint in the background, so training never waits on the
network.

One worker thread uploads one checkpoint at a time (its files through a small bounded pool, see ``upload``).
While it is busy, a newer commit replaces the one waiting: the remote always catches up to the newest
checkpoint, and a slow or dead remote at worst delays the next upload. When an upload fails, the mirror says
so once (one WARNING line, with the scrubbed reason), keeps the checkpoint waiting, tries again with growing
pauses (and at once when a newer checkpoint commits), and logs one line when the remote answers again.

The mirror's state (newest remote step, uploads pending, last error) is kept in ``.aegis/remote.json`` for
``aegis-ckpt status``; it never holds credentials.
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
from pathlib import Path
from typing import Any

from ..options import RemoteOptions
from ..storage.commit import Manifest, atomic_write_json, is_committed
from ..storage.layout import AEGIS_DIR, parse_checkpoint_step
from ..storage.store import CheckpointStore
from .catalog import list_remote, prune_remote
from .location import RemoteLocation, describe_error
from .upload import UploadResult, upload_checkpoint

logger = logging.getLogger(__name__)

REMOTE_STATUS_NAME = "remote.json"
RETRY_FIRST_SEC = 2.0
RETRY_MAX_SEC = 60.0


def read_remote_status(output_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The mirror's last recorded state in ``output_dir`` (None when no mirror ever ran there)."""
    try:
        return json.loads((Path(output_dir) / AEGIS_DIR / REMOTE_STATUS_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


class RemoteMirror:
    """Background uploads of one output directory's committed checkpoints.

    Args:
        options: the remote URL, retention and upload settings.
        output_dir: the local output directory (its ``.aegis/remote.json`` records the mirror's state).
        local_max_keep: remote retention when ``options.max_keep`` is None.
        location: an already opened remote (tests, the CLI); opened from ``options`` otherwise.
    """

    def __init__(
        self,
        options: RemoteOptions,
        output_dir: str | os.PathLike,
        *,
        local_max_keep: int = 5,
        location: RemoteLocation | None = None,
    ):
        self.options = options
        self.location = location if location is not None else RemoteLocation(options.url, options.options)
        self.store = CheckpointStore(output_dir)
        self.keep = options.max_keep or local_max_keep
        self._cond = threading.Condition()
        self._pending: Path | None = None
        self._current: Path | None = None
        self._catch_up = False
        self._checking = False  # the worker is looking whether the remote lacks the newest checkpoint
        self._closed = False
        self._wake = False
        self._failing = False
        self._thread: threading.Thread | None = None
        self._status_lock = threading.Lock()  # the worker and the training thread both record state
        self._status: dict[str, Any] = {
            "url": self.location.url,
            "newest_remote_step": None,
            "uploading_step": None,
            "pending_steps": [],
            "last_error": None,
            "last_error_unix": None,
            "last_upload_unix": None,
            "uploads": 0,
        }
        previous = read_remote_status(output_dir)
        if previous and previous.get("url") == self.location.url:
            self._status["newest_remote_step"] = previous.get("newest_remote_step")

    # ---- training-thread side (never blocks on the network) ----------------------------------------------------
    def submit(self, folder: Path, manifest: Manifest | None = None) -> None:
        """Queue the committed ``folder`` for upload; a checkpoint still waiting is replaced by this newer one."""
        with self._cond:
            if self._closed:
                return
            if self._pending is not None and self._pending != folder:
                logger.debug("%s replaces %s in the upload queue", folder.name, self._pending.name)
            self._pending = Path(folder)
            self._wake = True
            self._start_locked()
            self._cond.notify_all()
        self._write_status()

    def catch_up(self) -> None:
        """Upload the newest local committed checkpoint if the remote lacks it (e.g. the previous process was
        killed mid-upload). The remote is listed by the worker, not here."""
        with self._cond:
            self._catch_up = True
            self._start_locked()
            self._cond.notify_all()

    def in_flight(self) -> list[Path]:
        """The folders being uploaded or waiting: local retention must not delete them yet."""
        with self._cond:
            return [p for p in (self._current, self._pending) if p is not None]

    @property
    def pending(self) -> int:
        return len(self.in_flight())

    def flush(self, timeout_sec: float | None = None) -> bool:
        """Wait until nothing is waiting or uploading (at most ``timeout_sec``); True when all is uploaded.
        A checkpoint waiting after a failure is tried once more at once."""
        deadline = None if timeout_sec is None else time.monotonic() + timeout_sec
        with self._cond:
            self._wake = True
            self._cond.notify_all()
            self._flush_requested()
            while self._thread is not None and self._busy():
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                self._cond.wait(timeout=left)
            done = not self._busy()
        if not done:
            logger.warning(
                "Remote %s: %d upload(s) still pending after %.0f s; the local checkpoints stay the resume point "
                "and the next run uploads the newest one",
                self.location.url,
                self.pending,
                timeout_sec or 0,
            )
        return done

    def close(self, timeout_sec: float | None = None) -> bool:
        """Flush (bounded), then stop the worker."""
        done = self.flush(timeout_sec)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._write_status()
        return done

    def _busy(self) -> bool:
        return bool(self._pending or self._current or self._catch_up or self._checking or self._extra_due())

    # Hooks for mirrors that have more to do than upload checkpoints (``nodemirror``); called holding _cond.
    def _extra_due(self) -> bool:
        return False

    def _flush_requested(self) -> None:
        """A flush begins: work held back after a failure should be tried again now."""

    def _do_extra(self) -> None:
        """Called by the worker (not holding _cond) when ``_extra_due`` said so."""

    def _start_locked(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="aegis-remote-mirror", daemon=True)
            self._thread.start()

    # ---- worker ------------------------------------------------------------------------------------------------
    def _run(self) -> None:
        delay = RETRY_FIRST_SEC
        while True:
            with self._cond:
                while (
                    not self._closed
                    and self._pending is None
                    and not self._catch_up
                    and not self._extra_due()
                ):
                    self._cond.wait()
                if self._closed:  # close() already waited (bounded); what is left goes up with the next run
                    return
                extra = self._extra_due()
                catch_up, self._catch_up = self._catch_up, False
                self._checking = catch_up  # a flush waits for the look, not only for what it queues
            if extra:
                self._do_extra()
            if catch_up:
                queued = self._queue_missing_newest()
                with self._cond:
                    self._checking = False
                    self._cond.notify_all()
                if not queued:
                    continue
            with self._cond:
                self._current, self._pending = self._pending, None
                self._wake = False
                folder = self._current
            self._write_status()
            if folder is None:
                continue
            ok = self._upload(folder)
            with self._cond:
                self._current = None
                if not ok and self._pending is None and is_committed(folder):
                    self._pending = folder  # try again later, unless a newer checkpoint took its place
                self._cond.notify_all()
            self._write_status()
            if ok:
                delay = RETRY_FIRST_SEC
                continue
            self._pause(delay)
            delay = min(RETRY_MAX_SEC, delay * 2)

    def _pause(self, delay: float) -> None:
        """Wait before the next try (with jitter), but go at once for a newer checkpoint, a flush or close."""
        end = time.monotonic() + delay * (0.5 + random.random() / 2)
        with self._cond:
            while not self._wake and not self._closed:
                left = end - time.monotonic()
                if left <= 0:
                    return
                self._cond.wait(timeout=left)

    def _queue_missing_newest(self) -> bool:
        committed = self.store.committed()
        if not committed:
            return False
        newest = committed[-1]
        try:
            remote = {e.step for e in list_remote(self.location) if e.committed}
        except Exception as e:  # noqa: BLE001 - the upload itself retries and reports
            logger.debug(
                "Listing %s failed (%s); uploading %s anyway", self.location.url, describe_error(e), newest
            )
            remote = set()
        if newest.step in remote:
            with self._status_lock:
                self._status["newest_remote_step"] = max(remote)
            self._write_status()
            return False
        logger.info("Remote %s lacks %s: uploading it", self.location.url, newest.path.name)
        with self._cond:
            if self._pending is None:
                self._pending = newest.path
        return True

    def _send(self, folder: Path) -> UploadResult:
        """Upload one committed folder (``nodemirror`` sends a node's share of it instead)."""
        return upload_checkpoint(
            self.location,
            folder,
            workers=self.options.upload_workers,
            attempts=self.options.attempts,
            on_retry=lambda error: self._trouble(folder, error, retrying=True),
        )

    def _upload(self, folder: Path) -> bool:
        try:
            result = self._send(folder)
        except FileNotFoundError:
            logger.info("Not uploading %s: it was removed locally before its upload finished", folder.name)
            return True
        except Exception as e:  # noqa: BLE001 - an upload failure must never reach the training loop
            self._trouble(folder, e, retrying=False)
            return False
        self._uploaded(folder, result)
        return True

    def _uploaded(self, folder: Path, result: UploadResult) -> None:
        """A checkpoint is on the remote with its manifest: say so, record it, apply remote retention."""
        if self._failing:
            logger.warning("Remote %s answers again: %s uploaded", self.location.url, folder.name)
        else:
            logger.info(
                "Uploaded %s to %s (%.1f MB in %.1f s)",
                folder.name,
                self.location.url,
                result.size_bytes / 1e6,
                result.seconds,
            )
        self._failing = False
        self._record_remote(result.step)

    def _record_remote(self, step: int) -> None:
        """``step`` is committed on the remote: record it and apply remote retention."""
        with self._status_lock:
            newest = self._status.get("newest_remote_step")
            self._status.update(
                newest_remote_step=max(step, newest) if isinstance(newest, int) else step,
                last_upload_unix=time.time(),
                uploads=int(self._status.get("uploads") or 0) + 1,
            )
        try:
            prune_remote(self.location, self.keep, protect={step})
        except Exception as e:  # noqa: BLE001 - retention is retried after the next upload
            logger.warning(
                "Remote retention of %s failed (%s); will retry later", self.location.url, describe_error(e)
            )

    def _trouble(self, folder: Path, error: BaseException, *, retrying: bool) -> None:
        """An upload attempt failed: record it; say so once per outage (one WARNING line), not per retry."""
        reason = describe_error(error)
        with self._status_lock:
            self._status.update(last_error=f"{folder.name}: {reason}", last_error_unix=time.time())
        if not self._failing:
            logger.warning(
                "Upload of %s to %s failed (%s). Training goes on; uploads are retried in the background and the "
                "newest checkpoint is sent once the remote answers (said once; a line follows when it does).",
                folder.name,
                self.location.url,
                reason,
            )
        else:
            logger.debug(
                "Upload of %s failed again%s: %s", folder.name, " (retrying)" if retrying else "", reason
            )
        self._failing = True
        self._write_status()

    def _write_status(self) -> None:
        with self._cond:
            current, pending = self._current, self._pending
        steps = [parse_checkpoint_step(p.name) for p in (current, pending) if p is not None]
        with self._status_lock:
            self._status.update(
                uploading_step=parse_checkpoint_step(current.name) if current is not None else None,
                pending_steps=[s for s in steps if s is not None],
                updated_unix=time.time(),
                pid=os.getpid(),
            )
            try:
                self.store.aegis_dir.mkdir(parents=True, exist_ok=True)
                atomic_write_json(self.store.aegis_dir / REMOTE_STATUS_NAME, self._status)
            except OSError as e:
                logger.debug("Could not record the remote status: %s", e)
