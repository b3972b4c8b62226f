"""The callback's settings: its options built from flat keyword arguments or option objects, the Trainer
arguments it takes over (``save_total_limit``) or follows (the log level)."""

from __future__ import annotations

import dataclasses
import logging
from typing import TypeVar

from ..logsetup import apply_training_log_level
from ..options import AsyncOptions, CheckpointOptions, EmergencyOptions

logger = logging.getLogger(__name__)

T = TypeVar("T")


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


def refuse_mixed(args, others: dict) -> None:
    """``AegisArguments`` carries every option: any other option argument beside it would be ignored."""
    given = sorted(k for k, v in others.items() if v is not None)
    if given:
        raise TypeError(
            f"pass either args={type(args).__name__}(...) or the other option arguments, not both (got {given})"
        )


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
    """Log like the Trainer (``logsetup.apply_training_log_level``: ``log_level`` / ``log_level_replica``, else
    transformers' verbosity when set). And say once per run that ``save_only_model`` checkpoints cannot resume
    exactly."""
    apply_training_log_level(args)
    if getattr(args, "save_only_model", False):
        logger.warning(
            "save_only_model=True: checkpoints hold no optimizer, scheduler or RNG state, so a resumed run "
            "will not continue exactly where it stopped."
        )


def resolve_options(
    args, *, options, emergency, async_options, preempt_signals=None, **flat
) -> tuple[CheckpointOptions, EmergencyOptions, AsyncOptions, bool]:
    """The callback's three option objects from its constructor arguments: ``AegisArguments`` (``args``), the
    option objects, or the flat keyword arguments (``flat``), never two of them for the same option. Also
    whether ``max_keep`` was given explicitly: an explicit one wins over the Trainer's ``save_total_limit``."""
    if args is not None:
        refuse_mixed(
            args, {**flat, "options": options, "emergency": emergency, "async_options": async_options}
        )
        options, emergency, async_options = args.to_options()
        max_keep_explicit = args.explicit_max_keep  # AegisArguments leaves max_keep None when unset
    else:
        max_keep_explicit = options is not None or flat["max_keep"] is not None
    checkpoint = build_options(
        CheckpointOptions,
        options,
        save_interval_sec=flat["save_interval_sec"],
        max_keep=flat["max_keep"],
        save_on_train_end=flat["save_on_train_end"],
        keep_milestone_every_sec=flat["keep_milestone_every_sec"],
        keep_best=flat["keep_best"],
        keep_best_k=flat["keep_best_k"],
    )
    emergency = build_options(
        EmergencyOptions,
        emergency,
        handle_signals=flat["handle_signals"],
        grace_period_sec=flat["grace_period_sec"],
        save_on_exception=flat["save_on_exception"],
        preempt_signals=preempt_signals,
    )
    async_options = build_options(AsyncOptions, async_options, enabled=flat["async_save"])
    return checkpoint, emergency, async_options, max_keep_explicit
