"""``.aegis/completed.json``: a finished run leaves it; ``aegis-ckpt train`` (and autostart after a reboot)
reads it and does not train again."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from ..storage import fsio
from ..storage.layout import AEGIS_DIR, COMPLETED_NAME
from .records import read_json_record


def completion_path(output_dir: str | os.PathLike) -> Path:
    return Path(output_dir) / AEGIS_DIR / COMPLETED_NAME


def mark_completed(output_dir: str | os.PathLike, *, step: int, checkpoint: str | None) -> None:
    """Record durably that training reached its last step and its final checkpoint is committed."""
    path = completion_path(output_dir)
    fsio.makedirs_durable(path.parent)
    fsio.atomic_write_json(
        path,
        {
            "step": step,
            "checkpoint": checkpoint,
            "finished_unix": time.time(),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
    )


def read_completion(output_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The completion record, or None when the run has not finished (or the record is unreadable)."""
    return read_json_record(completion_path(output_dir))


def withdraw_completion(output_dir: str | os.PathLike) -> None:
    """Remove the record durably when a finished run is continued to a higher step: until that run ends, the
    directory holds an unfinished run again (status, preflight and the next start must say so), and the end of
    the continuation writes a new record."""
    path = completion_path(output_dir)
    fsio.unlink(path, missing_ok=True)
    fsio.fsync_dir(path.parent)
