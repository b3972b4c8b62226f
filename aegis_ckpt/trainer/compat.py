"""Trainer setups that cannot give what aegis-ckpt promises, found before the first step.

Each check names the setting, says what would go wrong and what to do. A combination that would silently lose
the user's result is refused (``ConfigError``); one that only weakens exact resume is a warning.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from ..errors import ConfigError
from ..options import CheckpointOptions

logger = logging.getLogger(__name__)

_WORLD_SIZE_VARS = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


def started_alone_by_accelerate_cpu_launcher(env: Mapping[str, str]) -> bool:
    """True for a process that ``accelerate launch --cpu --num_processes N`` (or a ``MULTI_CPU`` config) started
    without MPI: accelerate's simple launcher sets ``MASTER_ADDR``/``MASTER_PORT`` only when asked for several
    processes, then starts this one process alone, with no world size for it to join."""
    return (
        "ACCELERATE_USE_CPU" in env and "MASTER_PORT" in env and not any(v in env for v in _WORLD_SIZE_VARS)
    )


def check_training_setup(args, options: CheckpointOptions, env: Mapping[str, str] | None = None) -> None:
    """Check the ``TrainingArguments`` (or a subclass: TRL's configs, ``Seq2SeqTrainingArguments``) against the
    checkpoint options and the launcher's environment (``os.environ`` by default)."""
    env = os.environ if env is None else env
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
    if getattr(args, "world_size", 1) == 1 and started_alone_by_accelerate_cpu_launcher(env):
        logger.warning(
            "accelerate launch was asked for several CPU processes but started only this one: its MULTI_CPU "
            "launcher (--cpu) starts several processes only through MPI (mpirun_hostfile). Training goes on in "
            "one process, and its checkpoints are for one process. For several processes without MPI, use a "
            "torchrun-based accelerate config (see docs/integrations.md) or torchrun."
        )
