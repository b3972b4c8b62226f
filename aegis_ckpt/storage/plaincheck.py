"""Structural checks for checkpoints that carry no aegis manifest (saved by a plain ``Trainer``).

Without a manifest nothing proves the folder is complete, so these checks look for the failures the Trainer
itself does not catch on resume: it silently starts with a fresh optimizer, scheduler or RNG when their files
are missing, and it cannot tell a truncated file from a whole one. Used only when the caller opts in.
"""

from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path

from .layout import (
    JIT_INCOMPLETE_MARKER,
    OPTIMIZER_NAME,
    SCHEDULER_NAME,
    TRAINER_STATE_NAME,
    WEIGHT_FILES,
    WEIGHT_INDEXES,
)


def check_safetensors(path: Path) -> str | None:
    """Return a problem description, or None if the header parses and the data length matches it."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                return f"{path.name} is truncated (no header)"
            (header_len,) = struct.unpack("<Q", raw)
            if header_len > size - 8:
                return f"{path.name} is truncated (header longer than file)"
            header = json.loads(f.read(header_len))
    except (OSError, ValueError) as e:
        return f"{path.name} unreadable: {e}"
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
    expected = 8 + header_len + (max(ends) if ends else 0)
    if expected != size:
        return f"{path.name} has {size} bytes, its header describes {expected}"
    return None


def check_torch_zip(path: Path) -> str | None:
    """``torch.save`` files are zip archives with CRC32 per member: test them all."""
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
    except (OSError, zipfile.BadZipFile, EOFError, ValueError) as e:
        return f"{path.name} is not a readable torch archive: {e}"
    if bad is not None:
        return f"{path.name} member {bad} fails its CRC check"
    return None


def _check_weights(folder: Path) -> list[str]:
    for index_name in WEIGHT_INDEXES:
        index = folder / index_name
        if index.is_file():
            try:
                shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
            except (OSError, ValueError, KeyError) as e:
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


def check_plain_checkpoint(folder: str | Path, step: int) -> list[str]:
    """List what makes ``folder`` unfit to resume from; an empty list means it passed."""
    folder = Path(folder)
    problems: list[str] = []
    if (folder / JIT_INCOMPLETE_MARKER).exists():
        problems.append("the Trainer's JIT 'incomplete' marker is present")
    state_path = folder / TRAINER_STATE_NAME
    try:
        state = json.loads(state_path.read_text(encoding="utf-8"))
        if int(state.get("global_step", -1)) != step:
            problems.append(f"{TRAINER_STATE_NAME} says step {state.get('global_step')}, folder says {step}")
    except FileNotFoundError:
        problems.append(f"missing {TRAINER_STATE_NAME}")
    except (OSError, ValueError) as e:
        problems.append(f"{TRAINER_STATE_NAME} unreadable: {e}")
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
