"""The callback's settings: its options built from flat keyword arguments or option objects, the Trainer
arguments it takes over (``save_total_limit``) or follows (the log level)."""

from __future__ import annotations

import dataclasses
import logging
from typing import TypeVar

from ..options import CheckpointOptions

logger = logging.getLogger(__name__)

T = TypeVar("T")

PACKAGE_LOGGER = "aegis_ckpt"


def build_options(cls: type[T], given_object: T | None, **flat) -> T:
    """``given_object``, or ``cls`` built from the keyword arguments that were set (not None); both at once is
    a ``TypeError``, since one of them would be silently ignored."""
    given = {k: v for k, v in flat.items() if v is not None}
    if given_object is not None:
        if given:
            raise TypeError(
                f"pass either the {cls.__name__} object or keyword options, not both (got {sorted(given)})"
            )
        return given_object
    return cls(**given)


def take_over_rotation(args, options: CheckpointOptions, *, max_keep_explicit: bool) -> CheckpointOptions:
    """Switch off the Trainer's mtime rotation (``save_total_limit``), whose deletes come before a newer
    checkpoint is committed; retention runs after each commit instead. Its limit becomes ``max_keep`` unless
    that was given explicitly. Returns the options to use."""
    limit = getattr(args, "save_total_limit", None)
    if not limit:
        return options
    if not max_keep_explicit:
        options = dataclasses.replace(options, max_keep=int(limit))
    logger.warning(
        "save_total_limit=%s is handled by aegis-ckpt retention (max_keep=%d): the Trainer's own rotation "
        "deletes checkpoints before a newer one is committed, so it is switched off for this run.",
        limit,
        options.max_keep,
    )
    args.save_total_limit = None
    return options


def follow_trainer_logging(args) -> None:
    """Log like the Trainer: replicas get ``log_level_replica``; the main process changes only if ``log_level``
    was set, so an application that configured the aegis_ckpt logger keeps its level ("passive" default). And
    say once per run that ``save_only_model`` checkpoints cannot resume exactly."""
    if not args.should_log or getattr(args, "log_level", "passive") != "passive":
        logging.getLogger(PACKAGE_LOGGER).setLevel(args.get_process_log_level())
    if getattr(args, "save_only_model", False):
        logger.warning(
            "save_only_model=True: checkpoints hold no optimizer, scheduler or RNG state, so a resumed run "
            "will not continue exactly where it stopped."
        )
