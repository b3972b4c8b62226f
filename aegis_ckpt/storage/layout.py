"""Every name on disk, spelled once: the folders and files aegis-ckpt keeps in an output directory, and the file
names of the Trainer's own checkpoint layout that several parts of the package read or write.

An output directory::

    checkpoint-<step>/            a checkpoint in the Trainer's layout; counts only with a valid manifest
        aegis_manifest.json       sizes and checksums of every file, written last (storage.commit)
    final_model/                  the exported model of a finished ``aegis-ckpt train`` run
    logs/                         the launchers' log files (auto_train.sh/.bat), unless given another folder
    .aegis/
        store.json                marks the directory as managed by aegis-ckpt
        staging/step-<n>/         checkpoints being written; published into place by one rename
        quarantine/               damaged or half-written folders set aside, each with aegis_quarantine.json
        trash/                    pruned checkpoints between their rename and their deletion
        scan.lock                 serialises resume scans of several ranks/processes
        run.lock, run.json        the run lease and its record (runstate.lease)
        run.owner.json            who holds the run lease now (pid, host), for the refusal message
        completed.json            the run finished (runstate.completion)
        audit.jsonl               the audit log (storage.audit)
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from ..errors import PreflightError
from . import fsio

# ---- the output directory -----------------------------------------------------------------------------------
CHECKPOINT_PREFIX = "checkpoint"
MANIFEST_NAME = "aegis_manifest.json"
FINAL_MODEL_DIR = "final_model"
LAUNCHER_LOGS_DIR = "logs"
AEGIS_DIR = ".aegis"
STORE_MARKER = "store.json"
STAGING_DIR = "staging"
STAGING_PREFIX = "step-"
STAGING_FINAL_DIR = "staging-final"
QUARANTINE_DIR = "quarantine"
QUARANTINE_RECORD = "aegis_quarantine.json"
TRASH_DIR = "trash"
SCAN_LOCK_NAME = "scan.lock"
RUN_LOCK_NAME = "run.lock"
RUN_RECORD_NAME = "run.json"
RUN_OWNER_NAME = "run.owner.json"
COMPLETED_NAME = "completed.json"
AUDIT_NAME = "audit.jsonl"

_CHECKPOINT_RE = re.compile(rf"^{CHECKPOINT_PREFIX}-(\d+)$")


def checkpoint_dir_name(step: int) -> str:
    """The folder name the Trainer uses for ``step``."""
    return f"{CHECKPOINT_PREFIX}-{step}"


def parse_checkpoint_step(name: str) -> int | None:
    m = _CHECKPOINT_RE.match(name)
    return int(m.group(1)) if m else None


# ---- the Trainer's checkpoint layout ------------------------------------------------------------------------
MODEL_WEIGHTS = "model.safetensors"
MODEL_INDEX = "model.safetensors.index.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
WEIGHT_FILES = (MODEL_WEIGHTS, "pytorch_model.bin", ADAPTER_WEIGHTS, "adapter_model.bin")
WEIGHT_INDEXES = (MODEL_INDEX, "pytorch_model.bin.index.json")
OPTIMIZER_NAME = "optimizer.pt"
SCHEDULER_NAME = "scheduler.pt"
SCALER_NAME = "scaler.pt"
TRAINER_STATE_NAME = "trainer_state.json"
TRAINING_ARGS_NAME = "training_args.bin"
RNG_STATE_NAME = "rng_state.pth"
JIT_INCOMPLETE_MARKER = "checkpoint-is-incomplete.txt"
"""Left by the Trainer's ``enable_jit_checkpoint`` save while it writes; such a folder is not a checkpoint."""


def rng_file_name(world_size: int, process_index: int) -> str:
    """``rng_state.pth`` for one process, ``rng_state_<rank>.pth`` for each of several (the Trainer's names)."""
    return f"rng_state_{process_index}.pth" if world_size > 1 else RNG_STATE_NAME


def check_output_dir(path: str | os.PathLike) -> Path:
    """Create ``path`` if needed and prove a file can be written, flushed and removed inside it."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise PreflightError(f"output_dir {path} exists and is a file, not a directory: choose another path")
    try:
        fsio.makedirs_durable(path)
    except OSError as e:
        raise PreflightError(f"cannot create output_dir {path}: {e.strerror or e}") from e
    try:
        fd, probe = tempfile.mkstemp(prefix=".aegis-write-probe-", dir=path)
        try:
            fsio.write_fd(fd, b"probe")
            fsio.fsync_fd(fd)
        finally:
            os.close(fd)
            fsio.unlink(probe)
    except OSError as e:
        raise PreflightError(f"output_dir {path} is not writable: {e.strerror or e}") from e
    return path
