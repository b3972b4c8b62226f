"""Progress bars for the long waits of large checkpoints: full verification (at every resume by default),
recovery of staged saves, and the commit of a large synchronous save.

tqdm, as transformers uses it; shown only on the local main process, only when the job is large
(``AEGIS_CKPT_PROGRESS_MIN_MB``, 512 MB by default) and never when transformers' progress bars are switched off
(``transformers.utils.logging.disable_progress_bar()`` or ``HF_HUB_DISABLE_PROGRESS_BARS``). Without a terminal
the bar refreshes at most every 30 s, so a log file gets a few lines, not thousands.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator

from .logsetup import is_local_main_process

MIN_BYTES_ENV = "AEGIS_CKPT_PROGRESS_MIN_MB"
DEFAULT_MIN_MB = 512.0
_LOG_REFRESH_SEC = 30.0


def _min_bytes() -> float:
    try:
        return float(os.environ.get(MIN_BYTES_ENV, DEFAULT_MIN_MB)) * 1e6
    except ValueError:
        return DEFAULT_MIN_MB * 1e6


def _bars_enabled() -> bool:
    hf_logging = sys.modules.get("transformers.utils.logging")
    if hf_logging is not None and not hf_logging.is_progress_bar_enabled():
        return False
    return os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS", "").lower() not in ("1", "true", "yes")


def wants_progress(total_bytes: int) -> bool:
    """Whether a job of ``total_bytes`` gets a bar in this process."""
    return 0 < total_bytes and total_bytes >= _min_bytes() and is_local_main_process() and _bars_enabled()


@contextlib.contextmanager
def byte_progress(total_bytes: int, desc: str) -> Iterator[Callable[[int], object] | None]:
    """Yield ``update(n_bytes)`` of a bar over ``total_bytes``, or None when no bar is wanted."""
    if not wants_progress(total_bytes):
        yield None
        return
    from tqdm.auto import tqdm

    tty = hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
    bar = tqdm(
        total=total_bytes,
        desc=desc,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        leave=False,
        file=sys.stderr,
        mininterval=0.5 if tty else _LOG_REFRESH_SEC,
        dynamic_ncols=tty,
    )
    try:
        yield bar.update
    finally:
        bar.close()
