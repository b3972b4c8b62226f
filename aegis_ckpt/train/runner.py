"""``aegis-ckpt train CONFIG``: build everything from a YAML config, resume from the newest intact checkpoint,
train, export the final model and record completion.

Running the same command again after a crash continues the run; after it finished, it says so and exits 0
without training again (``.aegis/completed.json``).
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from .. import distributed
from ..errors import ConfigError
from ..options import CheckpointOptions
from ..resume import find_resume_checkpoint
from ..runstate.completion import mark_completed, read_completion
from ..runstate.lease import ensure_not_locked
from ..runstate.saves import SaveTail
from ..storage.commit import commit_checkpoint
from ..storage.layout import FINAL_MODEL_DIR, check_output_dir
from ..storage.store import CheckpointStore
from ..trainer.callback import AegisCheckpointCallback
from .builders import build_dataset, build_model, build_tokenizer, count_parameters, read_texts
from .config import TrainConfig

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    status: str  # "finished" or "already_finished"
    step: int
    output_dir: Path
    final_model: Path | None
    resumed_from: str | None = None
    seconds: float = 0.0


def _export_final_model(
    trainer, tokenizer, store: CheckpointStore, step: int, options: CheckpointOptions
) -> Path:
    """Write the finished model to ``output_dir/final_model`` through the same commit protocol as a checkpoint:
    staged in ``.aegis/``, committed (manifest), then published by the store (one rename, directories
    fsynced), and logged by the save tail. Completion may be recorded only after this returns."""
    staging = store.final_model_staging()
    main = trainer.args.should_save
    if main:
        shutil.rmtree(staging, ignore_errors=True)
    distributed.barrier()
    started = time.perf_counter()
    trainer.save_model(str(staging))  # every rank takes part (FSDP/DeepSpeed gather); the main one writes
    distributed.barrier()
    if main:
        if tokenizer is not None and not (staging / "tokenizer_config.json").exists():
            tokenizer.save_pretrained(str(staging))
        written = time.perf_counter()
        manifest = commit_checkpoint(staging, step=step, reason="final_model")
        final = store.publish_final_model(staging)
        tail = SaveTail(store, options)  # the run record ended with training: log it, no retention
        tail.committed(
            final,
            manifest,
            reason="final_model",
            write_sec=written - started,
            commit_sec=time.perf_counter() - written,
            retain=False,
        )
    distributed.barrier()
    return store.output_dir / FINAL_MODEL_DIR


def _build_parts(cfg: TrainConfig, output_dir: Path):
    """The tokenizer, dataset and model the config describes (after the seed is set: the model's init uses it)."""
    texts = read_texts(cfg.data)
    tokenizer = build_tokenizer(cfg.tokenizer, cfg.model, texts, output_dir)
    dataset = build_dataset(texts, tokenizer, cfg.data)
    model = build_model(cfg.model, tokenizer, cfg.data.block_size)
    total, trainable = count_parameters(model)
    logger.info(
        "Model: %s, %.2fM parameters (%.2fM trainable); %d training blocks of %d tokens",
        cfg.model.name_or_path or cfg.model.arch,
        total / 1e6,
        trainable / 1e6,
        len(dataset),
        cfg.data.block_size,
    )
    return tokenizer, dataset, model


def run_training(cfg: TrainConfig) -> TrainResult:
    """Run (or continue) the training a config describes. Raises ``AegisError`` subclasses on bad input."""
    started = time.perf_counter()
    output_dir = check_output_dir(cfg.output_dir)
    ensure_not_locked(output_dir)  # a live run owns this directory: refuse before writing anything into it
    done = read_completion(output_dir)
    if done is not None:
        final = output_dir / FINAL_MODEL_DIR
        return TrainResult(
            "already_finished", int(done.get("step", 0)), output_dir, final if final.is_dir() else None
        )

    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments, set_seed

    try:
        args = TrainingArguments(**cfg.training)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"training: {e}") from e
    set_seed(args.seed)
    tokenizer, dataset, model = _build_parts(cfg, output_dir)

    callback = AegisCheckpointCallback(
        options=cfg.checkpoint,
        emergency=cfg.emergency,
        async_options=cfg.async_save,
        remote=cfg.remote,
        write_completion_marker=False,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
        processing_class=tokenizer,
        callbacks=[callback],
    )
    resume = find_resume_checkpoint(
        output_dir,
        verify=cfg.resume.verify,
        allow_unverified=cfg.resume.allow_unverified,
        remote_url=cfg.remote.url,
        remote_options=cfg.remote.options,
    )
    if resume:
        logger.info("Continuing from %s", resume)
    else:
        logger.info("Starting a new run in %s", output_dir)
    trainer.train(resume_from_checkpoint=resume)

    step = trainer.state.global_step
    store = CheckpointStore(output_dir)
    final = _export_final_model(trainer, tokenizer, store, step, cfg.checkpoint)
    if trainer.args.should_save:  # only once final_model/ is durable
        newest = store.committed()
        mark_completed(output_dir, step=step, checkpoint=str(newest[-1].path) if newest else None)
    return TrainResult("finished", step, output_dir, final, resume, time.perf_counter() - started)
