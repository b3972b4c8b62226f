"""Trainer setups that cannot give what aegis-ckpt promises, found before the first step, and the setups an
asynchronous save cannot express.

Each check names the setting, says what would go wrong and what to do. A combination that would silently lose
the user's result is refused (``ConfigError``); one that only weakens exact resume is a warning.
``unsupported_reason`` names the setups whose state an asynchronous snapshot cannot express (sharded or
engine-owned state, adapters, quantized or offloaded weights, a Trainer subclass with its own save methods); those
keep the Trainer's synchronous save.
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


# Trainer methods that write into a checkpoint folder. A subclass that overrides one may add or change files
# (TRL's GRPOTrainer writes entropy_ctrl_state.json after super()._save_checkpoint; users save EMA weights or
# extra heads that way); an asynchronous save writes the folder itself and would silently leave them out.
_SAVE_METHODS = (
    "_save_checkpoint",
    "save_model",
    "_save",
    "_save_optimizer_and_scheduler",
    "_save_scaler",
    "_save_rng_state",
)
# _save_checkpoint overrides that only write a model card into output_dir (outside the checkpoint folder) and
# then call the Trainer's: checked in TRL 1.16.
_MODEL_CARD_ONLY_OVERRIDES = {
    ("trl.trainer.sft_trainer", "SFTTrainer"),
    ("trl.trainer.dpo_trainer", "DPOTrainer"),
    ("trl.trainer.reward_trainer", "RewardTrainer"),
    ("trl.trainer.kto_trainer", "KTOTrainer"),
    ("trl.trainer.rloo_trainer", "RLOOTrainer"),
    ("trl.trainer.distillation_trainer", "DistillationTrainer"),
}


def overridden_save_method(trainer) -> str | None:
    """``Class.method`` of the first save method a subclass of ``transformers.Trainer`` overrides, if any."""
    from transformers import Trainer

    for cls in type(trainer).__mro__:
        if cls is Trainer:
            break
        for name in _SAVE_METHODS:
            if name not in vars(cls):
                continue
            if (
                name == "_save_checkpoint"
                and (cls.__module__, cls.__qualname__) in _MODEL_CARD_ONLY_OVERRIDES
            ):
                continue
            return f"{cls.__qualname__}.{name}"
    return None


def unsupported_reason(trainer) -> str | None:
    """Why the Trainer's state cannot be snapshotted here (None when it can)."""
    from transformers import PreTrainedModel

    if trainer is None:
        return "the Trainer is unknown (callback added with add_callback after the Trainer was built)"
    override = overridden_save_method(trainer)
    if override is not None:
        return f"{override} is overridden, and may add files that only the Trainer's own save writes"
    for flag, name in (
        ("is_deepspeed_enabled", "DeepSpeed owns the model and optimizer state"),
        ("is_fsdp_enabled", "FSDP state is sharded across ranks"),
        ("is_fsdp_xla_enabled", "FSDP on XLA"),
    ):
        if getattr(trainer, flag, False):
            return name
    try:
        from transformers.utils import is_sagemaker_mp_enabled, is_torch_xla_available

        if is_torch_xla_available():
            return "XLA devices"
        if is_sagemaker_mp_enabled():
            return "SageMaker model parallelism"
    except ImportError:
        pass
    if getattr(trainer, "is_distributed_loading_by_transformers", False):
        return "the model was sharded at load time (tensor parallelism)"
    model = trainer.accelerator.unwrap_model(trainer.model, keep_torch_compile=False)
    if not isinstance(model, PreTrainedModel):
        return (
            f"the model is a {type(model).__name__}, not a transformers PreTrainedModel (e.g. a PEFT wrapper)"
        )
    if getattr(model, "_hf_peft_config_loaded", False):
        return "adapters are attached (the Trainer's save is small for them anyway)"
    if getattr(model, "hf_quantizer", None) is not None:
        return "the model is quantized"
    device_map = getattr(model, "hf_device_map", None) or {}
    if "cpu" in device_map.values() or "disk" in device_map.values():
        return "some weights are offloaded"
    args = trainer.args
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", args.world_size))
    if args.world_size > 1 and local_world != args.world_size:
        return "ranks run on several machines (per-rank files cannot meet in one staging folder)"
    return None
