"""Field checks for a parsed ``aegis_manifest.json``, before any of its values is used.

The manifest's own checksum only catches accidental damage: whoever writes a manifest can recompute it. So every
field is checked for its type and range here, and every file name for confinement (``confine``): a manifest that
fails is "invalid", its folder is set aside with the one-line reason, and no file it names is touched.
"""

from __future__ import annotations

import math
import re
from typing import Any

from .confine import check_member_name

MAX_MANIFEST_BYTES = 64 * 1024 * 1024
"""A manifest lists names, sizes and checksums: even a million files stay far below this."""
XXH3_HEX_CHARS = 32
SHA256_HEX_CHARS = 64
_HEX_RE = re.compile(r"[0-9a-f]+")


class ManifestFieldError(ValueError):
    """A manifest field has the wrong type or value; the message names the field."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_hex(value: Any, length: int) -> bool:
    return isinstance(value, str) and len(value) == length and _HEX_RE.fullmatch(value) is not None


def _check_file_entry(name: Any, entry: Any, hash_name: str) -> None:
    problem = check_member_name(name)
    if problem:
        raise ManifestFieldError(f"files: {problem}")
    if not isinstance(entry, dict):
        raise ManifestFieldError(f"files[{name!r}] is {type(entry).__name__}, not a mapping")
    size = entry.get("size")
    if not _is_int(size) or size < 0:
        raise ManifestFieldError(f"files[{name!r}].size is {size!r}, not a non-negative integer")
    if not _is_hex(entry.get(hash_name), XXH3_HEX_CHARS):
        raise ManifestFieldError(
            f"files[{name!r}].{hash_name} is not a {XXH3_HEX_CHARS}-digit lowercase hex string"
        )
    sha = entry.get("sha256")
    if sha is not None and not _is_hex(sha, SHA256_HEX_CHARS):
        raise ManifestFieldError(
            f"files[{name!r}].sha256 is not a {SHA256_HEX_CHARS}-digit lowercase hex string"
        )


def check_manifest_fields(body: dict[str, Any], *, hash_name: str) -> None:
    """Raise ``ManifestFieldError`` unless every field ``Manifest.from_json_dict`` reads has its type and range.

    Args:
        body: the parsed JSON object (format, version and checksum already checked by the caller).
        hash_name: the key of each file's xxh3 digest.
    """
    step = body.get("step")
    if not _is_int(step) or step < 0:
        raise ManifestFieldError(f"step is {step!r}, not a non-negative integer")
    committed = body.get("committed_unix")
    if not isinstance(committed, (int, float)) or isinstance(committed, bool) or not math.isfinite(committed):
        raise ManifestFieldError(f"committed_unix is {committed!r}, not a finite number")
    if not isinstance(body.get("reason", ""), str):
        raise ManifestFieldError("reason is not a string")
    if not isinstance(body.get("meta", {}), dict):
        raise ManifestFieldError("meta is not a mapping")
    files = body.get("files")
    if not isinstance(files, dict):
        raise ManifestFieldError(f"files is {type(files).__name__}, not a mapping of file names")
    if not files:
        raise ManifestFieldError("files is empty: a committed checkpoint lists at least one file")
    for name, entry in files.items():
        _check_file_entry(name, entry, hash_name)
