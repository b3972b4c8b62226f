"""Structural checks for checkpoints that carry no aegis manifest (saved by a plain ``Trainer``).

Without a manifest nothing proves the folder is complete, so these checks look for the failures the Trainer
itself does not catch on resume: it silently starts with a fresh optimizer, scheduler or RNG when their files
are missing, and it cannot tell a truncated file from a whole one. Used only when the caller opts in.

``check_trainer_state`` is also asked of committed checkpoints: a manifest proves the bytes are the ones saved,
not that the Trainer can load them, and a ``trainer_state.json`` it cannot load would stop every restart.
Everything here is confined (``confine``): a folder holding a link or a special file is refused before any file
in it is read, and index names are checked like manifest names.
"""

from __future__ import annotations

import json
import os
import struct
import zipfile
from collections.abc import Collection
from pathlib import Path

from . import confine
from .layout import (
    JIT_INCOMPLETE_MARKER,
    OPTIMIZER_NAME,
    SCHEDULER_NAME,
    TRAINER_STATE_NAME,
    WEIGHT_FILES,
    WEIGHT_INDEXES,
)

MAX_SAFETENSORS_HEADER_BYTES = 100 * 1024 * 1024
"""The safetensors format's own limit on the JSON header."""
MAX_JSON_BYTES = 256 * 1024 * 1024
"""``trainer_state.json`` and weight indexes: generous, but a bound on what a hostile folder makes us read."""


def check_safetensors(path: Path) -> str | None:
    """Return a problem description, or None if the header parses and the data length matches it."""
    try:
        with open(path, "rb", opener=confine.open_no_follow) as f:
            size = os.fstat(f.fileno()).st_size
            raw = f.read(8)
            if len(raw) < 8:
                return f"{path.name} is truncated (no header)"
            (header_len,) = struct.unpack("<Q", raw)
            if header_len > size - 8:
                return f"{path.name} is truncated (header longer than file)"
            if header_len > MAX_SAFETENSORS_HEADER_BYTES:
                return f"{path.name} has a header of {header_len} bytes, beyond the format's limit"
            header = json.loads(f.read(header_len))
        ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
        if not all(isinstance(e, int) and not isinstance(e, bool) for e in ends):
            return f"{path.name} has a header with non-integer data offsets"
    except (OSError, ValueError, RecursionError, AttributeError, LookupError, TypeError) as e:
        return f"{path.name} unreadable: {type(e).__name__}: {e}"
    expected = 8 + header_len + (max(ends) if ends else 0)
    if expected != size:
        return f"{path.name} has {size} bytes, its header describes {expected}"
    return None


def check_torch_zip(path: Path) -> str | None:
    """``torch.save`` files are zip archives with CRC32 per member: test them all."""
    try:
        with open(path, "rb", opener=confine.open_no_follow) as f, zipfile.ZipFile(f) as zf:
            bad = zf.testzip()
    except (OSError, zipfile.BadZipFile, EOFError, ValueError) as e:
        return f"{path.name} is not a readable torch archive: {e}"
    if bad is not None:
        return f"{path.name} member {bad} fails its CRC check"
    return None


def read_index_shards(folder: Path, index_name: str) -> set[str]:
    """The shard names of a weight index (``model.safetensors.index.json``), each confined to ``folder``.

    Raises:
        ValueError: the index is not JSON, its ``weight_map`` is not a mapping of strings, or a shard name would
            leave the folder (``confine.ConfinementError`` is a ``ValueError``).
        OSError: it cannot be read.
    """
    body = confine.read_member_json(folder, index_name, max_bytes=MAX_JSON_BYTES)
    weight_map = body.get("weight_map") if isinstance(body, dict) else None
    if not isinstance(weight_map, dict):
        raise ValueError("weight_map is not a mapping")
    shards = set()
    for shard in weight_map.values():
        problem = confine.check_member_name(shard)
        if problem:
            raise confine.ConfinementError(f"weight_map: {problem}")
        shards.add(shard)
    return shards


def _check_weights(folder: Path) -> list[str]:
    for index_name in WEIGHT_INDEXES:
        index = folder / index_name
        if index.is_file():
            try:
                shards = read_index_shards(folder, index_name)
            except (OSError, ValueError) as e:
                return [f"{index_name} unreadable: {e}"]
            missing = sorted(s for s in shards if not (folder / s).is_file())
            if missing:
                return [f"missing weight shard(s): {', '.join(missing)}"]
            return [
                p
                for s in sorted(shards)
                if s.endswith(".safetensors") and (p := check_safetensors(folder / s))
            ]
    for name in WEIGHT_FILES:
        path = folder / name
        if path.is_file():
            if name.endswith(".safetensors"):
                problem = check_safetensors(path)
            else:
                problem = check_torch_zip(path)
            return [problem] if problem else []
    if any(p.is_dir() and p.name.startswith("global_step") for p in folder.iterdir()):
        return []  # DeepSpeed layout: the engine checks its own files
    return ["no model weights found"]


_STATE_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "epoch": (int, float),
    "max_steps": (int,),
    "logging_steps": (int, float),
    "eval_steps": (int, float),
    "save_steps": (int, float),
    "train_batch_size": (int, type(None)),
    "num_train_epochs": (int, float),
    "num_input_tokens_seen": (int, float),
    "total_flos": (int, float),
    "log_history": (list, type(None)),
    "best_metric": (int, float, type(None)),
    "best_global_step": (int, type(None)),
    "best_model_checkpoint": (str, type(None)),
    "stateful_callbacks": (dict, type(None)),
}
"""What the Trainer does with the fields of ``trainer_state.json`` when it resumes (arithmetic, ``os.path``,
``.items()``): a value of another type fails there, after the run has started."""


def check_trainer_state(
    folder: str | Path, step: int, *, known_fields: Collection[str] | None = None
) -> str | None:
    """Why the Trainer could not resume from ``trainer_state.json`` of ``folder`` (or None when it can): not a
    JSON object, ``global_step`` not ``step``, a field of the wrong type, or (when ``known_fields`` is given:
    the fields of the installed ``TrainerState``) a field the Trainer would refuse as an unexpected argument."""
    try:
        state = confine.read_member_json(folder, TRAINER_STATE_NAME, max_bytes=MAX_JSON_BYTES)
    except FileNotFoundError:
        return f"missing {TRAINER_STATE_NAME}"
    except (OSError, ValueError) as e:
        return f"{TRAINER_STATE_NAME} unreadable: {type(e).__name__}: {e}"
    if not isinstance(state, dict):
        return f"{TRAINER_STATE_NAME} is not a JSON object"
    global_step = state.get("global_step")
    if not isinstance(global_step, int) or isinstance(global_step, bool) or global_step != step:
        return f"{TRAINER_STATE_NAME} says step {global_step!r}, folder says {step}"
    for key, types in _STATE_FIELD_TYPES.items():
        value = state.get(key)
        if key in state and (isinstance(value, bool) or not isinstance(value, types)):
            return f"{TRAINER_STATE_NAME}: {key} is {type(value).__name__}, the Trainer cannot load it"
    unknown = sorted(set(state) - set(known_fields)) if known_fields is not None else []
    if unknown:
        return f"{TRAINER_STATE_NAME} has field(s) this Trainer does not know: {', '.join(unknown[:5])}"
    return None


def check_plain_checkpoint(folder: str | Path, step: int) -> list[str]:
    """List what makes ``folder`` unfit to resume from; an empty list means it passed."""
    folder = Path(folder)
    problem = confine.check_folder(folder)
    if problem:
        return [problem]
    foreign = confine.foreign_entries(folder)
    if foreign:
        return foreign  # nothing in a folder holding links or special files is read
    problems: list[str] = []
    if (folder / JIT_INCOMPLETE_MARKER).exists():
        problems.append("the Trainer's JIT 'incomplete' marker is present")
    problem = check_trainer_state(folder, step)
    if problem:
        problems.append(problem)
    problems += _check_weights(folder)
    for name in (OPTIMIZER_NAME, SCHEDULER_NAME):
        path = folder / name
        if not path.is_file():
            problems.append(f"missing {name} (the Trainer would silently restart it from scratch)")
        elif problem := check_torch_zip(path):
            problems.append(problem)
    rng_files = sorted(folder.glob("rng_state*.pth"))
    if not rng_files:
        problems.append("missing rng_state*.pth (resume would not be reproducible)")
    for path in rng_files:
        if problem := check_torch_zip(path):
            problems.append(problem)
    return problems
