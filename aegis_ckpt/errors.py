"""Exception hierarchy.

Every error this package raises on purpose is an :class:`AegisError`, so callers (and the CLI) can tell our
clear, actionable failures apart from bugs and from errors of the libraries underneath.
"""

from __future__ import annotations


class AegisError(Exception):
    """Base class of all errors raised by aegis-ckpt on purpose."""


class ConfigError(AegisError, ValueError):
    """An option or config file value is invalid; the message says which and why."""


class CommitError(AegisError):
    """A checkpoint could not be committed; the previous committed checkpoints are untouched."""


class DiskFullError(CommitError):
    """A checkpoint does not fit on its file system (checked before writing, or the write ran out of space).
    Nothing of it is kept; the previous committed checkpoints are untouched."""


class PreflightError(AegisError):
    """A check before training found a condition under which training would fail or lose work."""


class RunLockedError(AegisError):
    """Another live process is already training into the same output directory."""
