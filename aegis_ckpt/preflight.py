"""Checks before the first training step, so that a run fails at once instead of after hours of work."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import PreflightError


def check_output_dir(path: str | os.PathLike) -> Path:
    """Create ``path`` if needed and prove a file can be written, flushed and removed inside it."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise PreflightError(f"output_dir {path} exists and is a file, not a directory: choose another path")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PreflightError(f"cannot create output_dir {path}: {e.strerror or e}") from e
    try:
        fd, probe = tempfile.mkstemp(prefix=".aegis-write-probe-", dir=path)
        try:
            os.write(fd, b"probe")
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as e:
        raise PreflightError(f"output_dir {path} is not writable: {e.strerror or e}") from e
    return path
