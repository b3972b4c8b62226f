"""A consistent copy of a Trainer's checkpoint state in CPU memory.

``take_snapshot`` runs on the training thread at a step boundary and is the only part of an asynchronous save
that blocks training: it copies the model and optimizer tensors into CPU buffers that are reused from one save
to the next (``buffers``; from a GPU on a side stream, ``devicecopy``), and small state (scheduler, scaler, RNG,
``trainer_state.json``) into plain objects. ``hflayout`` then writes the snapshot, on any thread, as the same
files as ``Trainer._save_checkpoint``.

The setups whose state this cannot express keep the Trainer's synchronous save (``trainer.compat``).
"""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from ...rngstate import trainer_rng_file_state
from ...storage.layout import rng_file_name
from .buffers import SnapshotBuffers


@dataclass
class TrainerSnapshot:
    """Everything a checkpoint folder holds, detached from the live training objects."""

    step: int
    rng_file: str
    rng_state: dict
    is_main: bool
    model: Any = None
    model_state: dict | None = None
    optimizer_state: dict | None = None
    scheduler_state: dict | None = None
    scaler_state: dict | None = None
    trainer_state_json: str = ""
    args: Any = None
    processing_class: Any = None
    nbytes: int = 0
    max_shard_bytes: int | None = None  # the weights' shard size for save_pretrained (None: its default)


def _copy_state_dict_preserving_ties(state_dict: dict, buffers: SnapshotBuffers, prefix: str) -> dict:
    """Copy every tensor; names that share storage (tied weights) share one buffer, so ``save_pretrained`` still
    recognises and drops the alias exactly as it does for the live model."""
    import torch

    out: dict = {}
    by_storage: dict = {}
    for name, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            out[name] = copy.deepcopy(value)
            continue
        identity = (
            value.device,
            value.untyped_storage().data_ptr(),
            value.storage_offset(),
            tuple(value.shape),
        )
        if identity in by_storage:
            out[name] = by_storage[identity]
            continue
        out[name] = by_storage[identity] = buffers.copy((prefix, name), value)
    return out


def _copy_optimizer_state(state_dict: dict, buffers: SnapshotBuffers) -> dict:
    import torch

    state = {}
    for pid, per_param in state_dict.get("state", {}).items():
        state[pid] = {
            k: buffers.copy(("optim", pid, k), v) if isinstance(v, torch.Tensor) else copy.deepcopy(v)
            for k, v in per_param.items()
        }
    out = {k: copy.deepcopy(v) for k, v in state_dict.items() if k != "state"}
    out["state"] = state
    return out


def _trainer_state_json(trainer) -> str:
    """``trainer_state.json`` as ``Trainer._save_checkpoint`` writes it, with stateful callbacks updated."""
    from transformers.trainer_callback import ExportableState

    state = trainer.state
    control = trainer.control
    # The Trainer records its control as it is during a save (should_save set); record the same, so both
    # layouts are identical. A resumed run resets these flags at its first step anyway.
    saving, control.should_save = control.should_save, True
    try:
        for cb in [
            c for c in trainer.callback_handler.callbacks + [control] if isinstance(c, ExportableState)
        ]:
            name = cb.__class__.__name__
            if isinstance(state.stateful_callbacks.get(name), list):
                state.stateful_callbacks[name].append(cb.state())
            else:
                state.stateful_callbacks[name] = cb.state()
    finally:
        control.should_save = saving
    return json.dumps(dataclasses.asdict(state), indent=2, sort_keys=True) + "\n"


def take_snapshot(trainer, buffers: SnapshotBuffers | None) -> TrainerSnapshot:
    """Copy the state of ``trainer`` at this step boundary (every rank calls this at the same step).

    With ``buffers=None`` nothing is copied: the snapshot refers to the live tensors and state dicts, for a
    synchronous save that writes them while training waits (``trainer.directsave``)."""
    args = trainer.args
    trainer.store_flos()  # collective under DDP: every rank is here at the same step
    snap = TrainerSnapshot(
        step=trainer.state.global_step,
        rng_file=rng_file_name(args.world_size, args.process_index),
        rng_state=trainer_rng_file_state(args),
        is_main=bool(args.should_save),
    )
    if not snap.is_main:
        return snap
    live = buffers is None
    if not live:
        buffers.begin()
    model = trainer.accelerator.unwrap_model(trainer.model, keep_torch_compile=False)
    snap.model = model
    state = model.state_dict()
    snap.model_state = state if live else _copy_state_dict_preserving_ties(state, buffers, "model")
    if not args.save_only_model:
        if trainer.optimizer is not None:
            optim = trainer.optimizer.state_dict()
            snap.optimizer_state = optim if live else _copy_optimizer_state(optim, buffers)
        keep = (lambda x: x) if live else copy.deepcopy
        if trainer.lr_scheduler is not None:
            snap.scheduler_state = keep(trainer.lr_scheduler.state_dict())
        scaler = getattr(trainer.accelerator, "scaler", None)
        if scaler is not None:
            snap.scaler_state = keep(scaler.state_dict())
    if not live:
        buffers.finish()  # the copies from a GPU must land before the step goes on and anyone reads them
    snap.trainer_state_json = _trainer_state_json(trainer)
    snap.args = args
    processing = trainer.processing_class
    if processing is None:
        processing = getattr(trainer.data_collator, "tokenizer", None)
    snap.processing_class = processing
    snap.nbytes = 0 if live else buffers.copied_bytes
    return snap
