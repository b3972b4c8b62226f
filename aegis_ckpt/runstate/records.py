"""Reading the run-state records back (``run.json``, the lock owner, ``completed.json``).

They are advisory: checkpoints carry their own proof (the manifest), these only describe the run. So a record
that is missing, half-written by a process that died, not JSON, or not a JSON object reads as no record at all,
never as an error that could stop a resume.
"""

from __future__ import annotations

import json
import os
from typing import Any


def read_json_record(path: str | os.PathLike) -> dict[str, Any] | None:
    """The JSON object in ``path``, or None when there is none to read (see the module docstring)."""
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None
