"""Save statistics kept in ``<output_dir>/.aegis/stats.json``: per-save duration, bytes and throughput.

They survive restarts, feed the adaptive interval (a resumed run starts from the measured save cost instead of
guessing) and are shown by ``aegis-ckpt status``.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..storage import fsio

logger = logging.getLogger(__name__)

STATS_NAME = "stats.json"
RECENT_KEPT = 50


@dataclass(frozen=True)
class SaveRecord:
    """One committed save."""

    step: int
    finished_unix: float
    duration_sec: float
    """Time training was blocked: from the save decision to the committed manifest."""
    write_sec: float
    commit_sec: float
    size_bytes: int
    reason: str = ""

    @property
    def throughput_bytes_per_sec(self) -> float | None:
        return self.size_bytes / self.duration_sec if self.duration_sec > 0 else None


class SaveStats:
    """Accumulated save statistics of one output directory."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.count = 0
        self.total_sec = 0.0
        self.total_bytes = 0
        self.recent: list[SaveRecord] = []
        self.interval_sec: float | None = None

    @classmethod
    def load(cls, aegis_dir: str | os.PathLike) -> SaveStats:
        stats = cls(Path(aegis_dir) / STATS_NAME)
        try:
            body = json.loads(stats.path.read_text(encoding="utf-8"))
            stats.count = int(body.get("count", 0))
            stats.total_sec = float(body.get("total_sec", 0.0))
            stats.total_bytes = int(body.get("total_bytes", 0))
            stats.interval_sec = body.get("interval_sec")
            stats.recent = [SaveRecord(**r) for r in body.get("recent", [])]
        except FileNotFoundError:
            pass
        except (OSError, ValueError, TypeError, KeyError) as e:
            # Advisory data: a damaged file only costs the history, never the run.
            logger.warning("Ignoring unreadable save statistics %s: %s", stats.path, e)
            stats = cls(stats.path)
        return stats

    def record(self, rec: SaveRecord, *, interval_sec: float | None = None) -> None:
        self.count += 1
        self.total_sec += rec.duration_sec
        self.total_bytes += rec.size_bytes
        self.recent = (self.recent + [rec])[-RECENT_KEPT:]
        if interval_sec is not None:
            self.interval_sec = interval_sec
        try:
            fsio.makedirs_durable(self.path.parent)
            fsio.atomic_write_json(self.path, self.to_json_dict())
        except OSError as e:
            logger.warning("Could not write save statistics %s: %s", self.path, e)

    def typical_cost_sec(self) -> float | None:
        """Median duration of the recent saves (robust to one slow outlier), or None without any."""
        return statistics.median(r.duration_sec for r in self.recent) if self.recent else None

    def summary(self) -> dict[str, Any]:
        recent = self.recent
        durations = [r.duration_sec for r in recent]
        rates = [r.throughput_bytes_per_sec for r in recent if r.throughput_bytes_per_sec]
        return {
            "saves": self.count,
            "total_save_sec": round(self.total_sec, 3),
            "total_bytes": self.total_bytes,
            "last_save_sec": round(durations[-1], 3) if durations else None,
            "median_save_sec": round(statistics.median(durations), 3) if durations else None,
            "max_save_sec": round(max(durations), 3) if durations else None,
            "last_size_bytes": recent[-1].size_bytes if recent else None,
            "median_throughput_bytes_per_sec": round(statistics.median(rates)) if rates else None,
            "interval_sec": self.interval_sec,
            "last_save_unix": recent[-1].finished_unix if recent else None,
        }

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "format": "aegis-ckpt-stats",
            "version": 1,
            "updated_unix": time.time(),
            "count": self.count,
            "total_sec": self.total_sec,
            "total_bytes": self.total_bytes,
            "interval_sec": self.interval_sec,
            "summary": self.summary(),
            "recent": [asdict(r) for r in self.recent],
        }
