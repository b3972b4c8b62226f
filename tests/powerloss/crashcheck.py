"""Replay a recorded save through ``SimFS``, materialise every distinct crash state it can leave, and check each
one against the promises of the commit protocol.

For a cut after each recorded operation, and for each family of crash state (``simfs``), the files are written to
a scratch folder and checked:

* **committed means durable**: every folder that carries a manifest that parses (a checkpoint, a staged save, the
  final model) passes full verification: the manifest never reaches the disk before the data it describes;
* **atomic files are old or new**: a file that was put in place by a rename holds, if present, one of the
  versions that were renamed onto that name (or its content before the save), never an empty or torn one;
* **completion implies a durable model**: a parseable ``.aegis/completed.json`` comes with a ``final_model/`` that
  verifies and holds exactly the exported bytes;
* **resume**: ``find_resume_checkpoint(verify="full")`` picks the new checkpoint with exactly the bytes that were
  saved, or the newest one from before the save with its old bytes, never another one and never a damaged one;
  and once the save reported success (a mark in the log), always the new one.

Tests add their own checks (caches, start-up) through ``extra``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import xxhash
from recorder import _REAL_OPEN, Recorder
from simfs import FILE, SimFS, state_key

from aegis_ckpt.resume import find_resume_checkpoint
from aegis_ckpt.runstate.completion import read_completion
from aegis_ckpt.storage.audit import read_audit
from aegis_ckpt.storage.commit import Manifest, read_manifest, verify_checkpoint
from aegis_ckpt.storage.layout import (
    AEGIS_DIR,
    AUDIT_NAME,
    COMPLETED_NAME,
    FINAL_MODEL_DIR,
    MANIFEST_NAME,
    STAGING_DIR,
    checkpoint_dir_name,
    parse_checkpoint_step,
)


@dataclass
class Expect:
    """What the recorded operations were meant to achieve."""

    new_step: int | None = None
    """The checkpoint the recorded save creates (None: the recording saves no checkpoint)."""
    done_mark: str | None = None
    """A mark recorded when the save reported success: from there on the new checkpoint must be the resume point."""
    resume: bool = True
    """Run ``find_resume_checkpoint`` on every state."""
    audit_commit: bool = True
    """Once the save reported success, the audit log holds its ``commit`` event."""
    not_atomic: tuple[str, ...] = ()
    """Paths (relative) exempt from the old-or-new check (files documented as not durable)."""


@dataclass
class Report:
    operations: int = 0
    states: int = 0
    """Crash states generated (cuts x families)."""
    distinct: int = 0
    """Distinct crash states checked."""
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        head = f"{self.operations} operations, {self.states} crash states, {self.distinct} distinct"
        return head + (
            "" if not self.problems else f"; {len(self.problems)} problems:\n" + "\n".join(self.problems)
        )


Extra = Callable[[Path, int, str], list[str]]
"""``extra(state_dir, cut, family)`` -> problems found by a test's own checks on one crash state."""


def check_recording(
    rec: Recorder,
    expect: Expect,
    scratch: Path,
    extra: Extra | None = None,
    *,
    max_problems: int = 5,
    cuts: range | None = None,
    per_cut: bool = False,
) -> Report:
    """Check every distinct crash state of ``rec`` (of the cuts in ``cuts`` only, when given: the operations
    before are replayed, not checked); returns the count and the first problems found. ``per_cut``: check a
    state again at every cut it occurs (for ``extra`` checks whose verdict depends on the cut)."""
    final = _final_tree(rec)
    done_at = rec.index_of_mark(expect.done_mark) if expect.done_mark else None
    report = Report(operations=len(rec.ops))
    fs = SimFS(rec.initial)
    versions: dict[str, set[bytes]] = {}
    damaged_at_start = {f for f, ok in _intact_at_start(rec.initial).items() if not ok}
    seen: set[tuple] = set()
    quiet = logging.getLogger("aegis_ckpt")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        for cut, op in enumerate(rec.ops):
            _note_versions(fs, op, versions, rec.initial)
            fs.apply(op)
            if cuts is not None and cut not in cuts:
                continue
            must_be_new = done_at is not None and cut >= done_at
            for family, files in fs.crash_states():
                report.states += 1
                # The same files are held to more once the save returned (and by some extra checks, later on).
                key = (state_key(files), must_be_new, cut if per_cut else None)
                if key in seen:
                    continue
                seen.add(key)
                report.distinct += 1
                where = f"cut after op {cut} ({op.describe()}), {family}"
                state_dir = _materialise(files, scratch)
                problems = _check_atomic(files, versions, expect, rec.initial)
                problems += _check_committed(state_dir, damaged_at_start)
                problems += _check_completion(state_dir, final)
                if expect.resume:
                    problems += _check_resume(state_dir, rec.initial, final, expect, must_be_new)
                if must_be_new and expect.audit_commit and expect.new_step is not None:
                    problems += _check_audit(state_dir, expect.new_step)
                if extra is not None:
                    problems += extra(state_dir, cut, family)
                for p in problems:
                    report.problems.append(f"{where}: {p}")
                if len(report.problems) >= max_problems:
                    return report
    finally:
        quiet.setLevel(level)
    return report


# ---- states --------------------------------------------------------------------------------------------------------
def _final_tree(rec: Recorder) -> dict[str, bytes | None]:
    fs = SimFS(rec.initial)
    for op in rec.ops:
        fs.apply(op)
    return dict(fs.crash_states()).get("full") or {}


def _materialise(files: dict[str, bytes | None], scratch: Path) -> Path:
    state_dir = scratch / "state"
    if state_dir.exists():
        shutil.rmtree(state_dir)
    state_dir.mkdir(parents=True)
    for rel in sorted(files, key=lambda r: r.count("/")):
        path = state_dir / rel
        if files[rel] is None:
            path.mkdir(exist_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            with _REAL_OPEN(path, "wb") as f:
                f.write(files[rel])
    return state_dir


# ---- old or new ------------------------------------------------------------------------------------------------------
def _note_versions(fs: SimFS, op, versions: dict[str, set[bytes]], initial) -> None:
    """Before an operation is applied: the content a rename puts onto a name is a complete version of that name
    (as is the name's content before the recording); a name written in place is no longer checked."""
    if op.kind in ("write", "truncate", "create"):
        versions.pop(op.path, None)
        return
    if op.kind != "rename":
        return
    ino = fs.lookup(op.path)
    if ino is None:
        return
    stack = [(op.dst, ino)]
    while stack:
        rel, i = stack.pop()
        node = fs.inodes[i]
        if node.kind == FILE:
            known = versions.setdefault(rel, {initial[rel]} if initial.get(rel) is not None else set())
            known.add(bytes(node.data))
        else:
            stack.extend((f"{rel}/{name}", child) for name, child in node.children.items())


def _check_atomic(files, versions, expect: Expect, initial) -> list[str]:
    problems = []
    for rel, allowed in versions.items():
        content = files.get(rel)
        if content is None or content in allowed or rel in expect.not_atomic:
            continue
        problems.append(
            f"{rel} holds {len(content)} bytes that were never put in place whole (renamed before its data was "
            "flushed, or flushed after the rename)"
        )
    return problems


# ---- committed means durable --------------------------------------------------------------------------------------
def _manifest_folders(state_dir: Path) -> list[Path]:
    folders = [p for p in state_dir.iterdir() if p.is_dir() and parse_checkpoint_step(p.name) is not None]
    folders.append(state_dir / FINAL_MODEL_DIR)
    staging = state_dir / AEGIS_DIR / STAGING_DIR
    if staging.is_dir():
        folders.extend(p for p in staging.iterdir() if p.is_dir())
    return [p for p in folders if (p / MANIFEST_NAME).is_file()]


def _check_committed(state_dir: Path, damaged_at_start: set[str]) -> list[str]:
    problems = []
    for folder in _manifest_folders(state_dir):
        if folder.relative_to(state_dir).as_posix() in damaged_at_start:
            continue  # damaged before the recording began (the test's doing), not by a cut
        try:
            read_manifest(folder)
        except (OSError, ValueError, KeyError, TypeError):
            continue  # a manifest that does not parse promises nothing
        result = verify_checkpoint(folder, full=True)
        if not result.ok:
            problems.append(
                f"{folder.relative_to(state_dir)} has a valid manifest but its files are not durable: "
                f"{result.summary()}"
            )
    return problems


def _check_completion(state_dir: Path, final: dict[str, bytes | None]) -> list[str]:
    record = read_completion(state_dir)
    if record is None:
        return []
    problems = []
    named = record.get("checkpoint")
    if named and not verify_checkpoint(state_dir / Path(str(named)).name, full=True).ok:
        problems.append(f"{AEGIS_DIR}/{COMPLETED_NAME} names {Path(str(named)).name}, which is not durable")
    exported = _subtree(final, FINAL_MODEL_DIR)
    if exported:
        model = state_dir / FINAL_MODEL_DIR
        if not verify_checkpoint(model, full=True).ok:
            problems.append(
                f"{AEGIS_DIR}/{COMPLETED_NAME} says the run finished, but {FINAL_MODEL_DIR}/ is missing or damaged"
            )
        elif _subtree_of_dir(model) != exported:
            problems.append(f"{FINAL_MODEL_DIR}/ differs from the exported model")
    return problems


# ---- audit log ----------------------------------------------------------------------------------------------------
def _check_audit(state_dir: Path, step: int) -> list[str]:
    events = read_audit(state_dir / AEGIS_DIR / AUDIT_NAME).events
    if any(e.get("event") == "commit" and e.get("step") == step for e in events):
        return []
    return [f"the audit log lost the commit event of step {step} (appended before the save reported success)"]


# ---- resume ----------------------------------------------------------------------------------------------------------
def _subtree(files: dict[str, bytes | None], prefix: str) -> dict[str, bytes]:
    head = prefix.rstrip("/") + "/"
    return {rel[len(head) :]: c for rel, c in files.items() if rel.startswith(head) and c is not None}


def _subtree_of_dir(folder: Path) -> dict[str, bytes]:
    out = {}
    for root, _dirs, names in os.walk(folder):
        for name in names:
            path = Path(root) / name
            with _REAL_OPEN(path, "rb") as f:
                out[path.relative_to(folder).as_posix()] = f.read()
    return out


def _intact_at_start(initial: dict[str, bytes | None]) -> dict[str, bool]:
    """Folder (relative path) -> whether it was intact, for every folder of the starting point that has a
    manifest that parses (checked in memory)."""
    out = {}
    for rel, body in initial.items():
        if not rel.endswith("/" + MANIFEST_NAME) or body is None:
            continue
        folder = rel[: -len(MANIFEST_NAME) - 1]
        try:
            manifest = Manifest.from_json_dict(json.loads(body))
        except (ValueError, KeyError, TypeError):
            continue
        files = _subtree(initial, folder)
        out[folder] = all(
            name in files and xxhash.xxh3_128_hexdigest(files[name]) == digest.xxh3_128
            for name, digest in manifest.files.items()
        )
    return out


def _newest_committed(initial: dict[str, bytes | None]) -> int | None:
    """The newest checkpoint of the starting point that is committed and intact."""
    steps = [parse_checkpoint_step(f) for f, ok in _intact_at_start(initial).items() if ok and "/" not in f]
    steps = [s for s in steps if s is not None]
    return max(steps) if steps else None


def _check_resume(state_dir, initial, final, expect: Expect, must_be_new: bool) -> list[str]:
    previous = _newest_committed(initial)
    try:
        chosen = find_resume_checkpoint(state_dir, verify="full")
    except Exception as e:  # noqa: BLE001 - a crash state must never make the resume scan fail
        return [f"find_resume_checkpoint raised {type(e).__name__}: {e}"]
    step = parse_checkpoint_step(Path(chosen).name) if chosen else None
    if must_be_new and step != expect.new_step:
        return [f"the save had reported success, but resume picks {step} instead of {expect.new_step}"]
    if step is None:
        return (
            [] if previous is None else [f"resume finds nothing although checkpoint-{previous} was committed"]
        )
    if step == expect.new_step:
        want = _subtree(final, checkpoint_dir_name(step))
    elif step == previous:
        want = _subtree(initial, checkpoint_dir_name(step))
    else:
        return [
            f"resume picks checkpoint-{step}; only {expect.new_step} (new) or {previous} (previous) may be"
        ]
    got = _subtree_of_dir(Path(chosen))
    if got != want:
        differ = sorted(n for n in set(got) | set(want) if got.get(n) != want.get(n))
        return [f"resume picks checkpoint-{step} whose bytes differ from what was saved: {differ}"]
    return []
