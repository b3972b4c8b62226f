"""A consistent copy of a Trainer's checkpoint state in CPU memory, and writing it in the Trainer's own layout.

``take_snapshot`` runs on the training thread at a step boundary and is the only part of an asynchronous save
that blocks training: it copies the model and optimizer tensors into CPU buffers that are reused from one save
to the next (pinned when the source is on a GPU, so no allocation churn), and small state (scheduler, scaler,
RNG, ``trainer_state.json``) into plain objects. ``write_snapshot`` can then run on any thread and produces the
same files as ``Trainer._save_checkpoint`` (model through ``save_pretrained``, ``optimizer.pt``,
``scheduler.pt``, ``scaler.pt``, ``rng_state[_<rank>].pth``, ``trainer_state.json``, ``training_args.bin``,
tokenizer files), so a plain Trainer resumes from it.

``unsupported_reason`` names the setups whose state this cannot express (sharded or engine-owned state,
adapters, quantized or offloaded weights, a Trainer subclass with its own save methods); those keep the
Trainer's synchronous save.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import mmap
import os
import random
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...storage.directwrite import torch_save_file
from ...storage.layout import (
    OPTIMIZER_NAME,
    SCALER_NAME,
    SCHEDULER_NAME,
    TRAINER_STATE_NAME,
    TRAINING_ARGS_NAME,
    rng_file_name,
)

logger = logging.getLogger(__name__)


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


PAGE_ALIGNED_MIN_BYTES = 64 * 1024


class PageArena:
    """Page-aligned CPU tensors carved out of a few large anonymous maps.

    Why: the direct writer hands a tensor to the disk without copying it only when its storage starts on a page
    (``directwrite.DirectFile``); torch's allocator aligns large blocks to 64 bytes. One map per tensor would do,
    but a large mixture-of-experts model has tens of thousands of tensors with its optimizer state, and a process
    may hold only ~65k maps (``vm.max_map_count``), which every other allocation shares. Each tensor's storage is
    exactly its bytes (``torch.save`` writes whole storages); a map is freed with the last tensor that uses it,
    and the unused end of the newest map is never touched, so it costs address space, not memory."""

    CHUNK_BYTES = 256 * 1024 * 1024

    def __init__(self) -> None:
        self._map: mmap.mmap | None = None
        self._used = 0

    def empty(self, shape, dtype, nbytes: int):
        import torch

        size = -(-nbytes // mmap.PAGESIZE) * mmap.PAGESIZE
        if self._map is None or self._used + size > len(self._map):
            self._map = mmap.mmap(-1, max(self.CHUNK_BYTES, size))
            self._used = 0
        flat = torch.frombuffer(self._map, dtype=torch.uint8, count=nbytes, offset=self._used)
        self._used += size
        return flat.view(dtype).view(shape)


class SnapshotBuffers:
    """CPU tensors kept from one save to the next, keyed by name: the steady state allocates nothing.

    With ``shm_dir`` the buffers are files in shared memory (``torch.from_file``), so a writer process maps the
    same pages instead of receiving a copy (``shm_ref`` names the file behind a tensor)."""

    def __init__(self, shm_dir: str | os.PathLike | None = None) -> None:
        self._buffers: dict[Any, Any] = {}
        self._arena = PageArena()
        self._files: dict[Any, Path] = {}
        self._by_storage: dict[int, ShmRef] = {}
        self.shm_dir = Path(shm_dir) if shm_dir is not None else None
        self._next_file = 0
        self.copied_bytes = 0

    def _allocate(self, key, tensor):
        import torch

        if self.shm_dir is None:
            pin = tensor.is_cuda and torch.cuda.is_available()
            nbytes = tensor.numel() * tensor.element_size()
            if pin or nbytes < PAGE_ALIGNED_MIN_BYTES:
                return torch.empty(tensor.shape, dtype=tensor.dtype, device="cpu", pin_memory=pin)
            return self._arena.empty(tensor.shape, tensor.dtype, nbytes)
        old = self._files.pop(key, None)
        if old is not None:
            self._forget_storage(self._buffers[key])
            old.unlink(missing_ok=True)
        self.shm_dir.mkdir(parents=True, exist_ok=True)
        path = self.shm_dir / f"b{self._next_file}"
        self._next_file += 1
        numel = max(tensor.numel(), 1)
        flat = torch.from_file(str(path), shared=True, size=numel, dtype=tensor.dtype)
        buf = flat[: tensor.numel()].view(tensor.shape)
        self._files[key] = path
        self._by_storage[buf.untyped_storage().data_ptr()] = ShmRef(str(path), str(tensor.dtype), numel)
        return buf

    def _forget_storage(self, buf) -> None:
        self._by_storage.pop(buf.untyped_storage().data_ptr(), None)

    def copy(self, key, tensor):
        buf = self._buffers.get(key)
        if buf is None or buf.shape != tensor.shape or buf.dtype != tensor.dtype:
            buf = self._allocate(key, tensor)
            self._buffers[key] = buf
        buf.copy_(tensor.detach(), non_blocking=tensor.is_cuda)
        self.copied_bytes += buf.numel() * buf.element_size()
        return buf

    def shm_ref(self, tensor) -> ShmRef | None:
        """The shared-memory file holding ``tensor``'s storage, if it is one of these buffers."""
        return self._by_storage.get(tensor.untyped_storage().data_ptr())

    @property
    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self._buffers.values())

    def clear(self) -> None:
        """Drop the buffers (and their shared-memory files)."""
        self._buffers.clear()
        self._arena = PageArena()  # its maps go with the last tensor that uses them
        self._by_storage.clear()
        for path in self._files.values():
            path.unlink(missing_ok=True)
        self._files.clear()
        if self.shm_dir is not None:
            import shutil

            shutil.rmtree(self.shm_dir, ignore_errors=True)


@dataclass(frozen=True)
class ShmRef:
    """A shared-memory file that holds one buffer's whole storage: ``numel`` elements of ``dtype``."""

    path: str
    dtype: str
    numel: int


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


def _trainer_rng_state(args) -> dict:
    """The dict ``Trainer._save_rng_state`` writes (CUDA: all devices when distributed, else the current one)."""
    import numpy as np
    import torch
    from transformers.training_args import ParallelMode

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "cpu": torch.random.get_rng_state()}
    if torch.cuda.is_available():
        if args.parallel_mode == ParallelMode.DISTRIBUTED:
            state["cuda"] = torch.cuda.random.get_rng_state_all()
        else:
            state["cuda"] = torch.cuda.random.get_rng_state()
    return state


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


def take_snapshot(trainer, buffers: SnapshotBuffers) -> TrainerSnapshot:
    """Copy the state of ``trainer`` at this step boundary (every rank calls this at the same step)."""
    import torch

    args = trainer.args
    trainer.store_flos()  # collective under DDP: every rank is here at the same step
    snap = TrainerSnapshot(
        step=trainer.state.global_step,
        rng_file=rng_file_name(args.world_size, args.process_index),
        rng_state=_trainer_rng_state(args),
        is_main=bool(args.should_save),
    )
    if not snap.is_main:
        return snap
    buffers.copied_bytes = 0
    model = trainer.accelerator.unwrap_model(trainer.model, keep_torch_compile=False)
    snap.model = model
    snap.model_state = _copy_state_dict_preserving_ties(model.state_dict(), buffers, "model")
    if not args.save_only_model:
        if trainer.optimizer is not None:
            snap.optimizer_state = _copy_optimizer_state(trainer.optimizer.state_dict(), buffers)
        if trainer.lr_scheduler is not None:
            snap.scheduler_state = copy.deepcopy(trainer.lr_scheduler.state_dict())
        scaler = getattr(trainer.accelerator, "scaler", None)
        if scaler is not None:
            snap.scaler_state = copy.deepcopy(scaler.state_dict())
    if any(t.is_cuda for t in model.parameters()):
        torch.cuda.synchronize()  # the non_blocking copies into pinned buffers must land before anyone reads them
    snap.trainer_state_json = _trainer_state_json(trainer)
    snap.args = args
    processing = trainer.processing_class
    if processing is None:
        processing = getattr(trainer.data_collator, "tokenizer", None)
    snap.processing_class = processing
    snap.nbytes = buffers.copied_bytes
    return snap


def write_rng_file(snap: TrainerSnapshot, folder: Path) -> None:
    torch_save_file(snap.rng_state, folder / snap.rng_file)


def write_snapshot(
    snap: TrainerSnapshot, folder: str | os.PathLike, *, defer_large: list | None = None
) -> None:
    """Write the main process's files of a snapshot into ``folder`` (Trainer layout). No fsync: the commit
    protocol flushes every file afterwards.

    With ``defer_large`` (a list), the two large kinds of file are not written but appended to it as
    ``LargeFile`` entries, for a writer process: the weight shards (exactly as ``save_pretrained`` would pass
    them to safetensors) and ``optimizer.pt``. Everything else is written here."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    capture = (
        _capture_safetensors_writes(defer_large) if defer_large is not None else contextlib.nullcontext()
    )
    with capture, _no_shard_progress_bar():
        snap.model.save_pretrained(str(folder), state_dict=dict(snap.model_state), safe_serialization=True)
    if snap.processing_class is not None:
        snap.processing_class.save_pretrained(str(folder))
    torch_save_file(snap.args, folder / TRAINING_ARGS_NAME)
    if snap.optimizer_state is not None:
        if defer_large is None:
            torch_save_file(snap.optimizer_state, folder / OPTIMIZER_NAME)
        else:
            defer_large.append(LargeFile("torch", str(folder / OPTIMIZER_NAME), snap.optimizer_state))
    if snap.scheduler_state is not None:
        torch_save_file(snap.scheduler_state, folder / SCHEDULER_NAME)
    if snap.scaler_state is not None:
        torch_save_file(snap.scaler_state, folder / SCALER_NAME)
    write_rng_file(snap, folder)
    (folder / TRAINER_STATE_NAME).write_text(snap.trainer_state_json, encoding="utf-8")


def write_snapshot_files(snap: TrainerSnapshot, folder: str | os.PathLike, *, buffer, sha256: bool = False):
    """``write_snapshot`` for a background writer: the small files as usual, the weight shards and
    ``optimizer.pt`` through ``directwrite`` with ``buffer`` (a reused ``AlignedBuffer``: one copy, no page
    cache, hashed from memory). Returns the digests of those large files by name relative to ``folder``, for
    ``commit_checkpoint(known=...)``."""
    from ...storage.directwrite import write_large_files

    large: list[LargeFile] = []
    write_snapshot(snap, folder, defer_large=large)
    return write_large_files(large, buffer, folder=folder, sha256=sha256)


@dataclass
class LargeFile:
    """A large file left for ``directwrite`` (on the writer thread, or in a writer process): ``kind`` is ``safetensors`` (``obj``: name -> tensor, with ``metadata``)
    or ``torch`` (``obj`` goes through ``torch.save``)."""

    kind: str
    path: str
    obj: Any
    metadata: dict | None = None


_capture_lock = threading.Lock()


@contextlib.contextmanager
def _no_shard_progress_bar():
    """``save_pretrained`` draws a "Writing model shards" bar; from a background save it would break into the
    training progress bar on every checkpoint."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    if enabled:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


@contextlib.contextmanager
def _capture_safetensors_writes(into: list):
    """Let ``save_pretrained`` do all its own work (tied weights, weight-format conversion, sharding, config,
    index) but record each shard instead of writing it."""
    from transformers import modeling_utils

    capturing_thread = threading.get_ident()

    with _capture_lock:
        original = modeling_utils.safe_save_file

        def record(tensors, filename, metadata=None):
            # The patch is module-wide: a save_pretrained on another thread (the Trainer's own save while a
            # background save runs) must still write its weights.
            if threading.get_ident() != capturing_thread:
                return original(tensors, filename, metadata=metadata)
            into.append(LargeFile("safetensors", os.fspath(filename), dict(tensors), metadata))

        modeling_utils.safe_save_file = record
        try:
            yield
        finally:
            modeling_utils.safe_save_file = original
