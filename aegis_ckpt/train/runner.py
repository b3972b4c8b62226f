"""``aegis-ckpt train CONFIG``: build everything from a YAML config, resume from the newest intact checkpoint,
train, export the final model and record completion.

Running the same command again after a crash continues the run; after it finished, it says so and exits 0
without training again (``.aegis/completed.json``).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from transformers import TrainerCallback

from .. import distributed
from ..cluster.nodes import find_common_resume_checkpoint, node_local_checkpoints, write_node_model_copy
from ..errors import ConfigError
from ..options import CheckpointOptions
from ..remote.finalmodel import mirror_final_model
from ..resume import find_resume_checkpoint
from ..runstate.completion import mark_completed, read_completion
from ..runstate.continuation import weigh_completion
from ..runstate.lease import holding_run_lock
from ..runstate.saves import SaveTail
from ..storage import fsio
from ..storage.commit import commit_checkpoint
from ..storage.layout import FINAL_MODEL_DIR, check_output_dir
from ..storage.store import CheckpointStore
from ..trainer.callback import AegisCheckpointCallback
from ..trainer.remoteranks import RankUploads
from .builders import (
    build_dataset,
    build_model,
    build_tokenizer,
    count_parameters,
    read_texts,
    require_train_extra,
)
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
        fsio.rmtree(staging, ignore_errors=True)
    distributed.barrier()
    started = time.perf_counter()
    trainer.save_model(str(staging))  # every rank takes part (FSDP/DeepSpeed gather); the main one writes
    if main and node_local_checkpoints(trainer.args) and distributed.rank() != 0:
        write_node_model_copy(trainer.model, staging)  # transformers writes weights on global rank 0 only
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


class _LoadProbe(TrainerCallback):
    """Tells a failure to load the resume checkpoint (before ``on_train_begin``) from a failure in training, and
    sets aside the newer folders that failed to load once an older one got training going."""

    def __init__(self, store: CheckpointStore, failed: dict[str, str]):
        self.store = store
        self.failed = failed
        self.began = False

    def on_train_begin(self, args, state, control, **kwargs):
        self.began = True
        if args.should_save:
            for folder, reason in self.failed.items():
                self.store.quarantine(folder, reason)
        return control


def _is_main_launcher_rank() -> bool:
    """Rank 0 of a torchrun/accelerate launch (or a single process): the one that holds the run lease."""
    try:
        return int(os.environ.get("RANK") or 0) == 0
    except ValueError:
        return True


def run_training(cfg: TrainConfig) -> TrainResult:
    """Run (or continue) the training a config describes. Raises ``AegisError`` subclasses on bad input.

    The run lease is taken first, before the completion check, the tokenizer cache and the resume scan, and
    held to the end: a second ``aegis-ckpt train`` on the same output dir is refused at once
    (``RunLockedError``, naming the holder) and changes nothing there."""
    started = time.perf_counter()
    require_train_extra()
    output_dir = check_output_dir(cfg.output_dir)
    if not _is_main_launcher_rank():
        return _run_holding_lease(cfg, output_dir, started)
    with holding_run_lock(output_dir):
        return _run_holding_lease(cfg, output_dir, started)


def _finished_record(args, output_dir: Path) -> dict | None:
    """The completion record when the run already finished, else None. A raised max_steps (or
    num_train_epochs) continues a finished run; the Trainer's entry says so in the log. In a node-local run each
    node reads its own record, yet every rank must take the same path (the finished path's collectives are not
    training's): the run counts as finished only when it is on every node."""
    done = read_completion(output_dir)
    finished = (
        done is not None
        and weigh_completion(done, max_steps=args.max_steps, num_train_epochs=args.num_train_epochs).finished
    )
    if node_local_checkpoints(args):
        finished = not distributed.agree_any(not finished)
    return done if finished else None


def _run_holding_lease(cfg: TrainConfig, output_dir: Path, started: float) -> TrainResult:
    from transformers import HfArgumentParser, TrainingArguments, set_seed

    try:  # the training section is parsed the way transformers parses its own argument files
        (args,) = HfArgumentParser(TrainingArguments).parse_dict(cfg.training)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"training: {e}") from e
    done = _finished_record(args, output_dir)
    if done is not None:
        final = output_dir / FINAL_MODEL_DIR
        # Every node's share of the last step, if its remote commit was cut short (node-local runs).
        if node_local_checkpoints(args):
            RankUploads(cfg.remote, lambda: cfg.checkpoint.max_keep).catch_up_finished(
                args, cfg.remote.flush_timeout_sec
            )
        if _is_main_launcher_rank():  # an upload of the final model that the finished run could not complete
            mirror_final_model(cfg.remote, final, only_if_missing=True)
        return TrainResult(
            "already_finished", int(done.get("step", 0)), output_dir, final if final.is_dir() else None
        )
    set_seed(args.seed)
    texts = read_texts(cfg.data)
    tokenizer = build_tokenizer(cfg.tokenizer, cfg.model, texts, output_dir)
    dataset = build_dataset(texts, tokenizer, cfg.data)
    failed: dict[str, str] = {}
    while True:
        trainer, probe = _build_trainer(cfg, args, tokenizer, dataset, output_dir, failed)
        resume = _find_resume(cfg, args, output_dir, exclude=list(failed))
        if resume:
            logger.info("Continuing from %s", resume)
        else:
            logger.info("Starting a new run in %s", output_dir)
        try:
            trainer.train(resume_from_checkpoint=resume)
        except Exception as e:
            if probe.began or not resume:
                raise
            # The checkpoint verified but the Trainer could not load it: try the next older one (and set this
            # one aside once that one loads), instead of failing the same way on every restart.
            reason = f"verified but could not be loaded: {type(e).__name__}: {e}".splitlines()[0]
            logger.error("%s %s; trying the next older checkpoint", Path(resume).name, reason)
            failed[resume] = reason
            set_seed(args.seed)
            continue
        break

    step = trainer.state.global_step
    store = CheckpointStore(output_dir)
    final = _export_final_model(trainer, tokenizer, store, step, cfg.checkpoint)
    if trainer.args.should_save:  # only once final_model/ is durable
        newest = store.committed()
        mark_completed(output_dir, step=step, checkpoint=str(newest[-1].path) if newest else None)
    if trainer.args.process_index == 0:  # the remote copy of the final model, its completion marker last
        mirror_final_model(cfg.remote, final)
    return TrainResult("finished", step, output_dir, final, resume, time.perf_counter() - started)


def _find_resume(cfg: TrainConfig, args, output_dir: Path, *, exclude: list[str]) -> str | None:
    """The checkpoint to continue from: one every node holds when nodes keep their own copies."""
    if node_local_checkpoints(args):  # every node has its own copy: resume from a step all of them have
        return find_common_resume_checkpoint(output_dir, verify=cfg.resume.verify, remote=cfg.remote)
    return find_resume_checkpoint(
        output_dir,
        verify=cfg.resume.verify,
        allow_unverified=cfg.resume.allow_unverified,
        adopt_plain=cfg.resume.adopt_plain,
        exclude=exclude,
        remote_url=cfg.remote.url,
        remote_options=cfg.remote.options,
    )


def _build_trainer(cfg: TrainConfig, args, tokenizer, dataset, output_dir: Path, failed: dict[str, str]):
    """A model and a Trainer with the aegis callback (built anew for each resume attempt: a failed load may have
    changed the weights), and the probe that tells load failures apart."""
    from transformers import DataCollatorForLanguageModeling, Trainer

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
    callback = AegisCheckpointCallback(
        options=cfg.checkpoint,
        emergency=cfg.emergency,
        async_options=cfg.async_save,
        remote=cfg.remote,
        write_completion_marker=False,
    )
    probe = _LoadProbe(CheckpointStore(output_dir), failed)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
        processing_class=tokenizer,
        callbacks=[probe, callback],
    )
    return trainer, probe
