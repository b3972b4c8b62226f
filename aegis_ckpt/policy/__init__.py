"""Decisions, no I/O: when to save (``interval``, ``adaptive``) and which checkpoints to keep (``retention``).

A policy never reads a clock itself; the caller passes ``now`` (from an injected ``clock``, by default
``time.monotonic``), so tests drive it with a fake clock instead of patching ``time``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .adaptive import AdaptivePolicy, IntervalChange
from .interval import IntervalPolicy, SavePolicy

if TYPE_CHECKING:
    from ..options import CheckpointOptions

__all__ = ["AdaptivePolicy", "IntervalChange", "IntervalPolicy", "SavePolicy", "make_policy"]


def make_policy(options: CheckpointOptions) -> SavePolicy:
    """The policy the options ask for: adaptive, or a fixed interval."""
    if options.adaptive:
        return AdaptivePolicy.from_options(options)
    return IntervalPolicy(options.save_interval_sec)
