"""Trainer setups that cannot give what aegis-ckpt promises, found before the first step.

Each check names the setting, says what would go wrong and what to do. A combination that would silently lose
the user's result is refused (``ConfigError``); one that only weakens exact resume is a warning.
"""

from __future__ import annotations

import logging

from .errors import ConfigError
from .options import CheckpointOptions

logger = logging.getLogger(__name__)


def check_training_setup(args, options: CheckpointOptions) -> None:
    """Check the ``TrainingArguments`` (or a subclass: TRL's configs, ``Seq2SeqTrainingArguments``) against the
    checkpoint options."""
    if getattr(args, "load_best_model_at_end", False) and not options.keep_best:
        raise ConfigError(
            "load_best_model_at_end=True with keep_best=False: retention would delete the best checkpoint once "
            f"{options.max_keep} newer one(s) are committed, and the Trainer would then end on the last model "
            "instead of the best (it only logs a warning). Keep keep_best=True (the default), or set "
            "load_best_model_at_end=False."
        )
    if getattr(args, "sync_ref_model", False):
        # TRL (DPO and others): SyncRefModelCallback mixes the policy into the reference model in memory; the
        # Trainer's checkpoint holds the policy only.
        logger.warning(
            "sync_ref_model=True: the reference model changes during training but is not part of any checkpoint, "
            "so a resumed run continues with the initial reference model and does not end where an "
            "uninterrupted run would. Resume is exact with sync_ref_model=False."
        )
