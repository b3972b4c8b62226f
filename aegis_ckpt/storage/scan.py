"""The resume scan: which ``checkpoint-<step>`` folder of an output directory training can resume from.

``scan_checkpoints`` walks the checkpoint folders newest first and chooses the first one that is committed,
matches its manifest and can be loaded by the Trainer. Every newer folder that fails is moved to quarantine with
the reason, so neither the Trainer's ``get_last_checkpoint`` nor its rotation can pick it up later. Folders
without a manifest are handled by where they come from (an interrupted save of ours is set aside, a plain
Trainer's checkpoint is ignored, accepted after structural checks, or adopted); the rules are in
``resume.find_resume_checkpoint``'s module docstring. This is the storage side only: the run lease, the
distributed broadcast and remote copies are ``resume``'s.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import CommitError, ConfigError
from ..options import VERIFY_MODES
from .commit import commit_checkpoint, verify_checkpoint
from .confine import check_folder
from .layout import JIT_INCOMPLETE_MARKER, TRAINER_STATE_NAME, WEIGHT_INDEXES
from .plaincheck import check_plain_checkpoint, check_trainer_state, read_index_shards
from .store import CheckpointEntry, CheckpointStore

logger = logging.getLogger(__name__)


@dataclass
class CandidateReport:
    """What the scan decided about one ``checkpoint-<step>`` folder."""

    step: int
    path: str
    status: str  # "chosen", "older" (not examined), "quarantined", "ignored"
    detail: str = ""


@dataclass
class ScanReport:
    """What one scan found: the chosen folder (None: nothing to resume from) and every folder's verdict."""

    output_dir: str
    chosen: str | None = None
    candidates: list[CandidateReport] = field(default_factory=list)
    seconds: float = 0.0


def _trainer_state_fields() -> frozenset[str] | None:
    """The fields ``TrainerState`` accepts (``TrainerState(**json)`` refuses others), if transformers is here."""
    try:
        from transformers import TrainerState
    except ImportError:
        return None
    return frozenset(f.name for f in dataclasses.fields(TrainerState))


def _load_problem(folder: Path, step: int, files) -> str | None:
    """Why the Trainer could not load a verified folder, as far as a cheap look tells; None when it can. The
    weight index is read too: the Trainer joins its shard names onto the folder, so each must be a file the
    manifest lists (and therefore confined and verified)."""
    for index_name in WEIGHT_INDEXES:
        if index_name in files:
            try:
                shards = read_index_shards(folder, index_name)
            except (OSError, ValueError) as e:
                return f"{index_name} unreadable: {e}"
            unlisted = sorted(s for s in shards if s not in files)
            if unlisted:
                return f"{index_name} names shard(s) the manifest does not list: {', '.join(unlisted[:3])}"
    if TRAINER_STATE_NAME not in files:
        return None  # a custom-loop checkpoint, or a layout without it: nothing the Trainer reads
    return check_trainer_state(folder, step, known_fields=_trainer_state_fields())


def scan_checkpoints(
    output_dir: str | os.PathLike,
    *,
    verify: str = "full",
    allow_unverified: bool = False,
    adopt_plain: bool = False,
    quarantine: bool = True,
    exclude: Collection[str | os.PathLike] = (),
) -> ScanReport:
    """Examine checkpoint folders newest first and pick the resume point (see the module docstring). Folders in
    ``exclude`` (ones that failed to load in this process) are passed over and left where they are; with
    ``quarantine=False`` nothing is moved and rejected folders are only reported."""
    if verify not in VERIFY_MODES:
        raise ConfigError(f"verify must be one of {VERIFY_MODES} (got {verify!r}).")
    started = time.perf_counter()
    store = CheckpointStore(output_dir)
    report = ScanReport(output_dir=str(output_dir))
    if quarantine:
        store.recover_staging()
    managed = store.is_managed()
    excluded = {os.path.abspath(p) for p in exclude}

    def set_aside(entry, reason: str) -> None:
        if quarantine:
            moved = store.quarantine(entry.path, reason)
            report.candidates.append(
                CandidateReport(entry.step, str(entry.path), "quarantined", f"{reason} -> {moved}")
            )
        else:
            report.candidates.append(CandidateReport(entry.step, str(entry.path), "rejected", reason))

    if adopt_plain and quarantine and not managed:
        _adopt_plain_checkpoints(store, set_aside)
    for entry in reversed(store.checkpoints()):
        if report.chosen is not None:
            report.candidates.append(CandidateReport(entry.step, str(entry.path), "older"))
        elif os.path.abspath(entry.path) in excluded:
            report.candidates.append(CandidateReport(entry.step, str(entry.path), "excluded"))
        else:
            _examine(
                entry, report, set_aside, verify=verify, allow_unverified=allow_unverified, managed=managed
            )
    report.seconds = time.perf_counter() - started
    return report


def _examine(
    entry: CheckpointEntry,
    report: ScanReport,
    set_aside: Callable[[CheckpointEntry, str], None],
    *,
    verify: str,
    allow_unverified: bool,
    managed: bool,
) -> None:
    """Choose ``entry`` as the resume point, set it aside, or ignore it, by what kind of folder it is."""
    unsafe = check_folder(entry.path)
    if unsafe:
        set_aside(entry, "unsafe: " + unsafe)
    elif entry.is_committed:
        problem = _committed_problem(entry, full=verify == "full")
        if problem:
            set_aside(entry, "damaged: " + problem)
        else:
            _choose(report, entry, f"{verify} verify ok")
    elif (entry.path / JIT_INCOMPLETE_MARKER).exists():
        set_aside(entry, "incomplete: the Trainer's JIT checkpoint marker is present")
    elif allow_unverified:
        problems = check_plain_checkpoint(entry.path, entry.step)
        if problems:
            set_aside(entry, "unverified checkpoint failed structural checks: " + "; ".join(problems))
        else:
            logger.warning(
                "Resuming from %s, which has no aegis manifest: it passed structural checks only "
                "(allow_unverified=True).",
                entry.path,
            )
            _choose(report, entry, "structural checks ok")
    elif managed:
        set_aside(entry, "uncommitted: no manifest (the save was interrupted before it committed)")
    else:
        logger.warning(
            "Ignoring %s: it has no aegis manifest (saved by a plain Trainer?). To take such checkpoints over "
            "after structural checks, pass adopt_plain=True (YAML: resume.adopt_plain: true; CLI: aegis-ckpt "
            "train CONFIG --adopt-plain); otherwise training starts from scratch and sets them aside.",
            entry.path,
        )
        report.candidates.append(CandidateReport(entry.step, str(entry.path), "ignored", "no manifest"))


def _choose(report: ScanReport, entry: CheckpointEntry, detail: str) -> None:
    report.chosen = str(entry.path)
    report.candidates.append(CandidateReport(entry.step, str(entry.path), "chosen", detail))


def _committed_problem(entry: CheckpointEntry, *, full: bool) -> str | None:
    """Why a committed folder cannot be the resume point (it does not match its manifest, the manifest is of
    another step, or the Trainer could not load it); None when it can."""
    result = verify_checkpoint(entry.path, full=full)
    if result.ok and result.manifest is not None and result.manifest.step != entry.step:
        result.ok = False
        result.problems.append(f"manifest is for step {result.manifest.step}, folder name says {entry.step}")
    if result.ok and result.manifest is not None:
        problem = _load_problem(entry.path, entry.step, result.manifest.files)
        if problem:
            result.ok = False
            result.problems.append(f"cannot be loaded: {problem}")
    return None if result.ok else result.summary()


def _adopt_plain_checkpoints(store: CheckpointStore, set_aside) -> None:
    """Take over the plain Trainer's checkpoints of an unmanaged directory: each folder without a manifest that
    passes the structural checks gets one (its files as they are now, flushed first), the others are set aside."""
    adopted = []
    for entry in store.checkpoints():
        if entry.is_committed or (entry.path / JIT_INCOMPLETE_MARKER).exists():
            continue
        problems = check_plain_checkpoint(entry.path, entry.step)
        if problems:
            set_aside(entry, "plain checkpoint failed structural checks: " + "; ".join(problems))
            continue
        try:
            commit_checkpoint(entry.path, step=entry.step, reason="adopted", meta={"adopted": True})
        except CommitError as e:
            set_aside(entry, f"could not adopt: {e}")
            continue
        adopted.append(entry.path.name)
    if adopted:
        logger.info(
            "Adopted %d plain Trainer checkpoint(s) after structural checks (%s): manifests written, they count "
            "as committed from now on",
            len(adopted),
            ", ".join(adopted),
        )
