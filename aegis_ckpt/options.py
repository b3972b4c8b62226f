"""Option dataclasses and their validation.

The callback, the seed managers, the YAML config and the CLI all map onto these classes, so a value is
validated in exactly one place and every error message says why the value is refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from .errors import ConfigError

VERIFY_MODES = ("full", "quick")
WHEN_BUSY_MODES = ("skip", "wait")


def _check_positive(name: str, value: float | None, why: str) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or value <= 0:
        raise ConfigError(f"{name} must be a number > 0 (got {value!r}): {why}")


def options_from_mapping(cls, values: dict[str, Any], where: str):
    """Build an options dataclass from a plain mapping (a YAML section), naming unknown keys in the error."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(
            f"unknown key(s) in {where}: {', '.join(unknown)} (known: {', '.join(sorted(known))})"
        )
    try:
        return cls(**values)
    except TypeError as e:  # wrong value types that the dataclass itself rejects
        raise ConfigError(f"{where}: {e}") from e


@dataclass(frozen=True, kw_only=True)
class CheckpointOptions:
    """When to save and how many committed checkpoints to keep."""

    save_interval_sec: float = 180.0
    """Wall-clock seconds between rolling saves, checked at every optimizer step end."""

    max_keep: int = 5
    """Committed rolling checkpoints to keep; older ones are deleted only after a newer one commits."""

    save_on_train_end: bool = True
    """Save (and commit) a checkpoint at the last step, so a finished run always ends on a committed state."""

    keep_milestone_every_sec: float | None = None
    """If set, also keep the first checkpoint committed in every window of this many seconds of training
    (e.g. 3600 keeps one per hour) on top of the rolling ``max_keep``."""

    keep_best: bool = True
    """Never prune the Trainer's ``best_model_checkpoint`` (``load_best_model_at_end``)."""

    verify: str = "full"
    """How ``find_resume_checkpoint`` checks a candidate: ``"full"`` re-hashes every file, ``"quick"``
    compares sizes only."""

    allow_unverified: bool = False
    """Accept checkpoints without a manifest (saved by a plain Trainer) after structural checks."""

    def __post_init__(self) -> None:
        _check_positive(
            "save_interval_sec",
            self.save_interval_sec,
            "it is the wall-clock time between two rolling saves.",
        )
        if isinstance(self.max_keep, bool) or not isinstance(self.max_keep, int) or self.max_keep < 1:
            raise ConfigError(
                f"max_keep must be an integer >= 1 (got {self.max_keep!r}): "
                "the newest committed checkpoint is the resume point and is always kept."
            )
        _check_positive(
            "keep_milestone_every_sec",
            self.keep_milestone_every_sec,
            "it is the spacing of milestone checkpoints kept beside the rolling window; use null to disable.",
        )
        if self.verify not in VERIFY_MODES:
            raise ConfigError(f"verify must be one of {VERIFY_MODES} (got {self.verify!r}).")

    @classmethod
    def from_mapping(cls, values: dict[str, Any], *, where: str = "checkpoint") -> CheckpointOptions:
        return options_from_mapping(cls, values, where)


@dataclass(frozen=True, kw_only=True)
class EmergencyOptions:
    """What happens on a stop signal or an exception during training."""

    handle_signals: bool = True
    """Turn SIGTERM, SIGINT, SIGHUP, SIGUSR1 (and Windows console close/Ctrl+C/Ctrl+Break/logoff/shutdown) into
    a checkpoint at the next step end followed by exit code 128 + signal number."""

    grace_period_sec: float = 20.0
    """After a signal, exit anyway if the emergency checkpoint is not committed within this time (torchrun
    sends SIGKILL 30 s after SIGTERM)."""

    save_on_exception: bool = True
    """On an exception escaping training (single process), save the last completed step if the state is
    consistent, then re-raise."""

    allow_world_size_change: bool = False
    """Resume a checkpoint saved with a different number of processes. Off by default: the Trainer would
    continue with other RNG streams and data order, i.e. not where it stopped."""

    def __post_init__(self) -> None:
        _check_positive(
            "grace_period_sec",
            self.grace_period_sec,
            "it bounds how long an emergency save may take after a signal.",
        )

    @classmethod
    def from_mapping(cls, values: dict[str, Any], *, where: str = "emergency") -> EmergencyOptions:
        return options_from_mapping(cls, values, where)


@dataclass(frozen=True, kw_only=True)
class AsyncOptions:
    """Two-phase saves: training stalls only for a copy into CPU memory; writing and committing happen in the
    background."""

    enabled: bool = True
    """Save asynchronously where the setup allows it (plain, DDP; not DeepSpeed, FSDP, adapters, quantized or
    offloaded models, which keep the Trainer's synchronous save, as logged once)."""

    when_busy: str = "skip"
    """A save that comes due while the previous one is still being written: ``skip`` (training goes on; the
    save is taken at the first step end after the writer is free) or ``wait`` (block until it is free)."""

    min_free_ram_fraction: float = 0.1
    """Fall back to a synchronous save when the snapshot would leave less than this fraction of RAM free."""

    def __post_init__(self) -> None:
        if self.when_busy not in WHEN_BUSY_MODES:
            raise ConfigError(f"when_busy must be one of {WHEN_BUSY_MODES} (got {self.when_busy!r}).")
        if not 0 <= self.min_free_ram_fraction < 1:
            raise ConfigError(
                f"min_free_ram_fraction must be in [0, 1) (got {self.min_free_ram_fraction!r}): it is the share of "
                "RAM an asynchronous snapshot must leave free."
            )

    @classmethod
    def from_mapping(cls, values: dict[str, Any], *, where: str = "async_save") -> AsyncOptions:
        return options_from_mapping(cls, values, where)
