"""The size of one weight shard (``CheckpointOptions.max_shard_bytes``), read from a number or a text like "2GB".

Why a parser of its own: the option is set from Python, YAML, ``--set`` overrides and ``HfArgumentParser``
flags, where a size arrives as an int or as the text people write (``"5GB"``, ``"500MiB"``). It is turned into
bytes once, when the options are built, so every save sees an int and a typo fails before training starts, in
one line, instead of inside ``save_pretrained`` at the first checkpoint. Units follow ``save_pretrained``'s
``max_shard_size``: ``KB``/``MB``/``GB``/``TB`` are powers of 1000, ``KiB``/``MiB``/``GiB``/``TiB`` of 1024.
"""

from __future__ import annotations

import math
import re

from .errors import ConfigError

_UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}
_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]I?B|B)?\s*", re.IGNORECASE)
_HELP = "the largest weight shard of a checkpoint, in bytes or as a size such as '5GB' or '500MiB'; null for the Trainer's default"


def shard_size_bytes(value: int | str | None) -> int | None:
    """``value`` in bytes (None stays None: ``save_pretrained`` then uses its own default, as the Trainer does).

    Raises:
        ConfigError: not a whole number of bytes >= 1 nor a size text with a known unit.
    """
    if value is None:
        return None
    size: float | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    elif isinstance(value, str) and (match := _SIZE_RE.fullmatch(value)):
        size = float(match.group(1)) * _UNITS[(match.group(2) or "").upper()]
    if size is None or not math.isfinite(size) or size < 1:
        raise ConfigError(f"max_shard_bytes must be {_HELP} (got {value!r}).")
    return int(size)
