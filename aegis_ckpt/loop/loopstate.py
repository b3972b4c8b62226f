"""What a custom-loop checkpoint holds, and how it goes back into the live objects.

Files inside ``checkpoint-<step>`` (names shared with the Trainer where the content is the same)::

    model.safetensors, config.json, ...   ``save_pretrained`` of a Hugging Face model (a PEFT model saves its
                                          adapter); any other ``nn.Module``: ``model.safetensors``
    tokenizer.json, tokenizer_config.json  the tokenizer, so the folder is a usable model folder
    optimizer.pt, scheduler.pt             ``state_dict()`` of each
    extra_state.pt                         ``state_dict()`` of every object registered by name (GradScaler, ...)
    rng_state.pth                          python, numpy, torch CPU and (when present) CUDA generators; under
                                           torch.distributed one per rank, ``rng_state_<rank>.pth``, each
                                           written by its own rank (``save_rank_state``)
    aegis_loop_state.json                  step, epoch and the loop's own JSON values

Everything is loaded with ``torch.load(weights_only=True)``: a checkpoint cannot run code when it is read.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from ..errors import AegisError
from ..rngstate import capture_plain_rng_state, restore_plain_rng_state
from ..storage import fsio
from ..storage.layout import (
    ADAPTER_WEIGHTS,
    MODEL_INDEX,
    MODEL_WEIGHTS,
    OPTIMIZER_NAME,
    SCHEDULER_NAME,
    rng_file_name,
)

EXTRA_STATE_NAME = "extra_state.pt"
LOOP_STATE_NAME = "aegis_loop_state.json"
LOOP_STATE_FORMAT = "aegis-ckpt-loop-state"


class RestoreError(AegisError):
    """A checkpoint does not fit the registered objects (different model, missing file)."""


def _unwrap(model):
    """The module that owns the weights: through DDP/FSDP ``.module`` and ``torch.compile``'s ``_orig_mod``."""
    while True:
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if not isinstance(inner, torch.nn.Module):
            return model
        model = inner


def _is_peft(model) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "save_pretrained")


# ---- save -----------------------------------------------------------------------------------------------------------
def save_training_state(
    folder: str | os.PathLike,
    *,
    model,
    tokenizer=None,
    optimizer=None,
    scheduler=None,
    extra: dict[str, Any] | None = None,
    loop_state: dict[str, Any],
    max_shard_bytes: int | None = None,
) -> None:
    """Write everything into ``folder`` (which the caller then commits): one process's whole checkpoint."""
    save_shared_state(
        folder,
        model=model,
        tokenizer=tokenizer,
        optimizer=optimizer,
        scheduler=scheduler,
        extra=extra,
        loop_state=loop_state,
        max_shard_bytes=max_shard_bytes,
    )
    save_rank_state(folder, rank=0, world_size=1)


def save_rank_state(folder: str | os.PathLike, *, rank: int, world_size: int) -> None:
    """Write this rank's own files: its generators (``rng_state.pth``, or ``rng_state_<rank>.pth`` among
    several ranks: each rank draws its own dropout and data noise, so each restores its own stream)."""
    torch.save(capture_plain_rng_state(), Path(folder) / rng_file_name(world_size, rank))


def save_shared_state(
    folder: str | os.PathLike,
    *,
    model,
    tokenizer=None,
    optimizer=None,
    scheduler=None,
    extra: dict[str, Any] | None = None,
    loop_state: dict[str, Any],
    max_shard_bytes: int | None = None,
) -> None:
    """Write what all ranks share (replicated weights, optimizer, loop state): rank 0 writes it. A Hugging Face
    model's weights are split into shards of ``max_shard_bytes`` (``CheckpointOptions``; None: its
    ``save_pretrained`` default) with ``model.safetensors.index.json``, which ``save_pretrained`` writes one
    shard at a time."""
    folder = Path(folder)
    inner = _unwrap(model)
    if hasattr(inner, "save_pretrained"):
        sharding = {} if max_shard_bytes is None or _is_peft(inner) else {"max_shard_size": max_shard_bytes}
        inner.save_pretrained(str(folder), **sharding)
    else:
        from safetensors.torch import save_model

        save_model(inner, str(folder / MODEL_WEIGHTS))
    if tokenizer is not None and hasattr(tokenizer, "save_pretrained"):
        tokenizer.save_pretrained(str(folder))
    if optimizer is not None:
        torch.save(optimizer.state_dict(), folder / OPTIMIZER_NAME)
    if scheduler is not None:
        torch.save(scheduler.state_dict(), folder / SCHEDULER_NAME)
    if extra:
        torch.save({name: obj.state_dict() for name, obj in extra.items()}, folder / EXTRA_STATE_NAME)
    body = {"format": LOOP_STATE_FORMAT, "version": 1, **loop_state}
    fsio.write_bytes(
        folder / LOOP_STATE_NAME, (json.dumps(body, indent=2, sort_keys=True) + "\n").encode("utf-8")
    )


# ---- restore --------------------------------------------------------------------------------------------------------
def _load_weights_file(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def _load_model(model, folder: Path) -> None:
    inner = _unwrap(model)
    if _is_peft(inner) and (folder / ADAPTER_WEIGHTS).is_file():
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(inner, _load_weights_file(folder / ADAPTER_WEIGHTS))
        unexpected = getattr(result, "unexpected_keys", [])
        if unexpected:
            raise RestoreError(
                f"{folder}: adapter weights do not fit the model (unexpected: {unexpected[:5]})"
            )
        return
    if (folder / MODEL_INDEX).is_file():
        index = json.loads((folder / MODEL_INDEX).read_text(encoding="utf-8"))
        state: dict[str, torch.Tensor] = {}
        for shard in sorted(set(index["weight_map"].values())):
            state.update(_load_weights_file(folder / shard))
    elif (folder / MODEL_WEIGHTS).is_file():
        state = _load_weights_file(folder / MODEL_WEIGHTS)
    else:
        raise RestoreError(f"{folder} holds no model weights ({MODEL_WEIGHTS} or {MODEL_INDEX})")
    own = inner.state_dict()
    missing, unexpected = inner.load_state_dict(state, strict=False)
    # save_pretrained and safetensors store a tied weight (lm_head = embeddings) once: a "missing" key that shares
    # storage with a loaded one was restored through it.
    loaded = {own[k].data_ptr() for k in state if k in own}
    missing = [k for k in missing if own[k].data_ptr() not in loaded]
    if missing or unexpected:
        raise RestoreError(
            f"{folder}: the saved weights do not fit the registered model (missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}). Was a different model registered?"
        )


def _torch_load(path: Path):
    return torch.load(path, map_location="cpu", weights_only=True)


def read_loop_state(folder: str | os.PathLike) -> dict[str, Any]:
    path = Path(folder) / LOOP_STATE_NAME
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RestoreError(
            f"{folder} is not a custom-loop checkpoint: {LOOP_STATE_NAME} is missing"
        ) from None
    if body.get("format") != LOOP_STATE_FORMAT:
        raise RestoreError(f"{path} is not an aegis loop state")
    return body


def load_training_state(
    folder: str | os.PathLike,
    *,
    model,
    optimizer=None,
    scheduler=None,
    extra: dict[str, Any] | None = None,
    restore_rng: bool = True,
    rank: int = 0,
    world_size: int = 1,
) -> dict[str, Any]:
    """Load a checkpoint into the live objects; returns the loop state (``step``, ``epoch``, ``user``). Every
    rank loads the shared files and its own ``rng_state_<rank>.pth``."""
    folder = Path(folder)
    loop_state = read_loop_state(folder)
    expected = [(optimizer, OPTIMIZER_NAME), (scheduler, SCHEDULER_NAME)]
    for obj, name in expected:
        if obj is not None and not (folder / name).is_file():
            # The Trainer silently starts a fresh optimizer here; a changed learning curve is worse than a stop.
            raise RestoreError(f"{folder} has no {name}, but one is registered: it was saved without it")
    _load_model(model, folder)
    if optimizer is not None:
        optimizer.load_state_dict(_torch_load(folder / OPTIMIZER_NAME))
    if scheduler is not None:
        scheduler.load_state_dict(_torch_load(folder / SCHEDULER_NAME))
    if extra:
        if not (folder / EXTRA_STATE_NAME).is_file():
            raise RestoreError(f"{folder} has no {EXTRA_STATE_NAME}, but state objects are registered")
        saved = _torch_load(folder / EXTRA_STATE_NAME)
        absent = sorted(set(extra) - set(saved))
        if absent:
            raise RestoreError(
                f"{folder} holds no state for {absent} (registered now, not when it was saved)"
            )
        for name, obj in extra.items():
            obj.load_state_dict(saved[name])
    if restore_rng:
        rng_file = folder / rng_file_name(world_size, rank)
        if rng_file.is_file():
            restore_plain_rng_state(_torch_load(rng_file))
        elif world_size > 1:
            raise RestoreError(
                f"{folder} has no {rng_file.name}: rank {rank} cannot continue its own streams"
            )
    return loop_state
