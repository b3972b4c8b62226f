"""Checks before the first training step, so that a run fails at once instead of after hours of work.

``aegis-ckpt preflight CONFIG`` (called by ``launch/auto_train.bat`` and ``.sh`` before every start) runs, in
order, each giving one line:

* completion: a finished run (``.aegis/completed.json``) needs nothing else; the launchers then do nothing;
* output dir: it can be created, and a file in it written, fsynced and removed;
* disk: free space on the checkpoint drive against the projected need, ``checkpoint size x (max_keep + 1)``
  (the rolling window plus the one being written before the oldest is pruned), plus the final model export,
  plus ``preflight.disk_margin_gb``. The checkpoint size comes from the newest committed checkpoint's manifest
  when there is one, else from the parameter count of the model the config describes (built on the meta
  device: no memory, no weights, no download);
* gpu: presence and free memory through ``torch.cuda``. No GPU is a warning (training runs on the CPU) unless
  ``preflight.require_gpu`` is set.

``disk_usage`` and ``probe_gpus`` are module-level seams: tests replace them to simulate a nearly full drive or a
GPU that this machine does not have.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import PreflightError
from ..storage.layout import check_output_dir
from ..storage.space import format_bytes

if TYPE_CHECKING:
    from .config import TrainConfig

logger = logging.getLogger(__name__)

OK, WARNING, REFUSED = "OK", "WARNING", "REFUSED"
GIB = 1024**3
ADAM_STATE_BYTES_PER_PARAM = 8
"""AdamW keeps two float32 moments per trainable parameter (the Trainer's default optimizer)."""
SMALL_FILES_BYTES = 4 * 1024**2
"""Scheduler, RNG state, trainer_state.json, config and tokenizer files beside the tensors, rounded up."""


# ---- seams -----------------------------------------------------------------------------------------------------
def disk_usage(path: str | os.PathLike) -> shutil._ntuple_diskusage:  # type: ignore[name-defined]
    """Total, used and free bytes of the filesystem holding ``path`` (the seam for the nearly-full test)."""
    return shutil.disk_usage(path)


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    free_bytes: int
    total_bytes: int


def probe_gpus() -> list[GpuInfo]:
    """The CUDA GPUs torch can see, with their free memory; empty without CUDA (the seam for GPU tests)."""
    import torch

    if not torch.cuda.is_available():
        return []
    gpus = []
    for i in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(i)
        gpus.append(GpuInfo(i, torch.cuda.get_device_name(i), int(free), int(total)))
    return gpus


# ---- report ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CheckResult:
    name: str
    status: str  # OK, WARNING or REFUSED
    message: str

    def line(self) -> str:
        return f"[preflight] {self.status:<8} {self.name:<11} {self.message}"


@dataclass
class PreflightReport:
    checks: list[CheckResult] = field(default_factory=list)
    already_finished: dict[str, Any] | None = None
    """The completion record when the run already finished (then no other check ran)."""

    @property
    def refused(self) -> list[CheckResult]:
        return [c for c in self.checks if c.status == REFUSED]

    @property
    def warnings(self) -> list[CheckResult]:
        return [c for c in self.checks if c.status == WARNING]

    def summary(self) -> str:
        if self.already_finished is not None:
            return "[preflight] already finished: nothing to check or train"
        if self.refused:
            names = ", ".join(c.name for c in self.refused)
            return f"[preflight] REFUSED ({names}): training was not started"
        return f"[preflight] passed with {len(self.warnings)} warning(s): training can start"


def _bytes(n: float) -> str:
    """Sizes in preflight lines carry two decimals: a margin of 0.05 GiB is worth seeing."""
    return format_bytes(n, decimals=2)


# ---- size estimate ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SizeEstimate:
    checkpoint_bytes: int
    final_model_bytes: int
    source: str
    """Where the numbers come from, for the log line."""


def _size_from_manifest(output_dir: Path) -> SizeEstimate | None:
    from ..storage.commit import read_manifest
    from ..storage.store import CheckpointStore

    for entry in reversed(CheckpointStore(output_dir).committed()):
        try:
            manifest = read_manifest(entry.path)
        except Exception:  # a damaged manifest is resume's business; look at the next one
            continue
        weights = sum(
            f.size
            for name, f in manifest.files.items()
            if name.endswith((".safetensors", ".bin"))
            and "optimizer" not in name
            and "training_args" not in name
        )
        return SizeEstimate(
            manifest.total_bytes,
            weights,
            f"measured: committed {entry.path.name} holds {manifest.total_bytes} B",
        )
    return None


class _VocabOnly:
    """Stands in for the tokenizer that ``build_model`` sizes the embedding from (an upper bound here: the BPE
    trained in code has at most ``tokenizer.vocab_size`` entries)."""

    bos_token_id = eos_token_id = pad_token_id = 0

    def __init__(self, size: int):
        self._size = size

    def __len__(self) -> int:
        return self._size


def _size_from_model_config(cfg: TrainConfig) -> SizeEstimate:
    """Build the configured model on the meta device (no memory, no weights) and count bytes per parameter:
    the weights in their dtype, plus the AdamW moments of every trainable parameter."""
    import dataclasses

    import torch

    from .builders import build_model, count_parameters

    model_cfg = cfg.model
    if model_cfg.name_or_path:
        from transformers import AutoConfig

        loaded = AutoConfig.from_pretrained(
            model_cfg.name_or_path, trust_remote_code=model_cfg.trust_remote_code
        )
        model_cfg = dataclasses.replace(
            model_cfg, name_or_path=None, arch=loaded.model_type, config=loaded.to_diff_dict()
        )
    with torch.device("meta"):
        model = build_model(model_cfg, _VocabOnly(cfg.tokenizer.vocab_size), cfg.data.block_size)
    total, trainable = count_parameters(model)
    elt = next(model.parameters()).element_size()
    saved_params = trainable if cfg.model.lora is not None else total  # PEFT saves the adapter only
    optimizer = 0 if cfg.training.get("save_only_model") else trainable * ADAM_STATE_BYTES_PER_PARAM
    checkpoint = saved_params * elt + optimizer + SMALL_FILES_BYTES
    return SizeEstimate(
        checkpoint,
        saved_params * elt,
        f"estimated from the model config: {total / 1e6:.2f}M parameters, {trainable / 1e6:.2f}M trainable",
    )


def estimate_sizes(cfg: TrainConfig) -> SizeEstimate:
    """Checkpoint and final-model size: measured from a committed checkpoint, else estimated from the config."""
    return _size_from_manifest(cfg.output_dir) or _size_from_model_config(cfg)


# ---- checks ----------------------------------------------------------------------------------------------------
def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def _existing_checkpoint_bytes(output_dir: Path) -> int:
    """Bytes the committed checkpoints already occupy: retention replaces them, so they count as available."""
    from ..storage.commit import read_manifest
    from ..storage.store import CheckpointStore

    total = 0
    for entry in CheckpointStore(output_dir).committed():
        try:
            total += read_manifest(entry.path).total_bytes
        except Exception:
            continue
    return total


def check_disk(cfg: TrainConfig) -> CheckResult:
    output_dir = cfg.output_dir
    where = _nearest_existing(output_dir)
    try:
        free = disk_usage(where).free
    except OSError as e:
        return CheckResult("disk", WARNING, f"cannot read free space of {where}: {e.strerror or e}")
    try:
        size = estimate_sizes(cfg)
    except Exception as e:  # an unreachable Hub config must not stop an otherwise fine run
        return CheckResult(
            "disk",
            WARNING,
            f"{_bytes(free)} free on {where}; checkpoint size unknown ({type(e).__name__}: {e}), "
            "so the need could not be checked",
        )
    keep = cfg.checkpoint.max_keep + 1
    margin = int(cfg.preflight.disk_margin_gb * GIB)
    projected = size.checkpoint_bytes * keep + size.final_model_bytes + margin
    credit = _existing_checkpoint_bytes(output_dir)
    need = max(0, projected - credit)
    detail = (
        f"checkpoint ~{_bytes(size.checkpoint_bytes)} x {keep} (max_keep + 1) + final model "
        f"~{_bytes(size.final_model_bytes)} + margin {_bytes(margin)}"
        + (f" - {_bytes(credit)} already used by committed checkpoints" if credit else "")
        + f"; size {size.source}"
    )
    if free < need:
        return CheckResult(
            "disk",
            REFUSED,
            f"only {_bytes(free)} free on {where}, need ~{_bytes(need)} ({detail}): free some space, "
            "lower checkpoint.max_keep, or point training.output_dir at a larger drive",
        )
    return CheckResult("disk", OK, f"{_bytes(free)} free on {where}, need ~{_bytes(need)} ({detail})")


def check_gpu(cfg: TrainConfig) -> CheckResult:
    pre = cfg.preflight
    if cfg.training.get("use_cpu"):
        if pre.require_gpu:
            return CheckResult(
                "gpu",
                REFUSED,
                "preflight.require_gpu is true but training.use_cpu is true: remove one of them",
            )
        return CheckResult("gpu", OK, "not used: training.use_cpu is true")
    try:
        gpus = probe_gpus()
    except Exception as e:  # a broken driver is reported, not a crash of the check itself
        gpus = []
        probe_error = f" (probe failed: {type(e).__name__}: {e})"
    else:
        probe_error = ""
    if not gpus:
        if pre.require_gpu:
            return CheckResult(
                "gpu",
                REFUSED,
                f"no CUDA GPU visible{probe_error} and preflight.require_gpu is true: check the driver "
                "(nvidia-smi) and that torch is a CUDA build",
            )
        return CheckResult(
            "gpu",
            WARNING,
            f"no CUDA GPU visible{probe_error}: training runs on the CPU (set preflight.require_gpu: true to "
            "refuse instead)",
        )
    best = max(gpus, key=lambda g: g.free_bytes)
    listing = "; ".join(
        f"GPU {g.index} {g.name}: {_bytes(g.free_bytes)} free of {_bytes(g.total_bytes)}" for g in gpus
    )
    if pre.min_gpu_free_gb is not None and best.free_bytes < pre.min_gpu_free_gb * GIB:
        return CheckResult(
            "gpu",
            REFUSED,
            f"{listing}; preflight.min_gpu_free_gb is {pre.min_gpu_free_gb}: close what uses the GPU "
            "(nvidia-smi lists it) or lower the setting",
        )
    return CheckResult("gpu", OK, listing)


def check_completion(cfg: TrainConfig, done: dict[str, Any]) -> tuple[bool, CheckResult]:
    """(already finished?, the report line) for a run with a completion record: finished unless the config's
    last step is above the finished one (``training.max_steps`` or ``num_train_epochs`` raised), in which case
    ``aegis-ckpt train`` continues it (``runstate.continuation``)."""
    from ..runstate.continuation import weigh_completion

    run = weigh_completion(
        done,
        max_steps=cfg.training.get("max_steps", -1),
        num_train_epochs=cfg.training.get("num_train_epochs", 3.0),  # TrainingArguments' default
    )
    step = done.get("step")
    if run.finished:
        when = done.get("finished_at", "time unknown")
        text = f"already finished at step {step} ({when}); raise training.max_steps to train further"
    elif run.continues:
        text = f"finished at step {step} before; the last step is now {run.target}: training continues"
    else:
        text = f"finished at step {step} before with another num_train_epochs: training decides what is left"
    return run.finished, CheckResult("completion", OK, text)


def run_preflight(cfg: TrainConfig) -> PreflightReport:
    """Run every check and report them all (one refusal does not hide another)."""
    from ..runstate.completion import read_completion

    report = PreflightReport()
    done = read_completion(cfg.output_dir)
    if done is not None:
        finished, line = check_completion(cfg, done)
        report.checks.append(line)
        if finished:
            report.already_finished = done
            return report
    try:
        check_output_dir(cfg.output_dir)
        report.checks.append(CheckResult("output dir", OK, f"{cfg.output_dir} is writable"))
    except PreflightError as e:
        report.checks.append(CheckResult("output dir", REFUSED, str(e)))
    report.checks.append(check_disk(cfg))
    report.checks.append(check_gpu(cfg))
    for c in report.checks:
        logger.debug("preflight %s: %s %s", c.name, c.status, c.message)
    return report
