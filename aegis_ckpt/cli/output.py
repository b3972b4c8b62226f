"""Machine-readable output of the CLI commands (``--json``)."""

from __future__ import annotations

import json
from typing import Any


def print_json(data: Any) -> None:
    """One JSON document on stdout: sorted keys, paths and other objects as strings."""
    print(json.dumps(data, indent=2, sort_keys=True, default=str))
