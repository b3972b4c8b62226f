"""Multi-node runs whose nodes keep their checkpoints on local disks.

With ``save_on_each_node=True`` (TrainingArguments) the first process of every node writes a full checkpoint to
its own ``output_dir`` (the same path, on each node's own disk), and every rank its RNG file beside it. The nodes'
copies can then differ: a node may have lost its newest checkpoint (a disk replaced, a save that failed there).
Resuming each node from its own newest one would mix steps. So:

* ``find_common_resume_checkpoint``: the first process of each node scans its own copy; all ranks agree (a MIN
  all-reduce, in rounds) on the newest step that is intact on every node, and resume from it. A node missing the
  newest checkpoint makes everyone take the previous common one; never a step that one node lacks. A node's
  newer checkpoints are then set aside by the callback as an abandoned timeline.
* ``CommonCheckpointGuard``: retention on every node keeps the newest step known to be committed on all of them,
  even when a node committed newer ones that another node failed to commit.

With one shared output dir (the default) nothing here is needed: rank 0 scans and broadcasts
(``find_resume_checkpoint``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from filelock import FileLock

from .. import distributed
from ..options import RemoteOptions
from ..runstate.lease import ensure_not_locked
from ..storage.commit import verify_checkpoint
from ..storage.layout import AEGIS_DIR, MODEL_WEIGHTS, SCAN_LOCK_NAME, checkpoint_dir_name
from ..storage.scan import scan_checkpoints
from ..storage.store import CheckpointStore

logger = logging.getLogger(__name__)

NO_STEP = 0
""""Nothing intact": checkpoint steps start at 1."""
_UNBOUNDED = 2**62
"""What a rank without a copy to check offers to the MIN: it never constrains the agreed step."""


def is_node_leader() -> bool:
    """The first process on its node (``LOCAL_RANK`` 0, as torchrun and accelerate set it)."""
    return int(os.environ.get("LOCAL_RANK", "0") or 0) == 0


def node_local_checkpoints(args) -> bool:
    """Whether this run keeps a checkpoint copy per node (``save_on_each_node`` with several processes)."""
    return bool(getattr(args, "save_on_each_node", False)) and distributed.is_distributed()


def newest_intact_step(output_dir: str | os.PathLike, *, at_most: int, verify: str = "full") -> int:
    """The newest committed checkpoint with step <= ``at_most`` that matches its manifest (``NO_STEP``: none)."""
    for entry in reversed(CheckpointStore(output_dir).committed()):
        if entry.step > at_most:
            continue
        result = verify_checkpoint(entry.path, full=verify == "full")
        if result.ok and result.manifest is not None and result.manifest.step == entry.step:
            return entry.step
    return NO_STEP


def _first_scan(output_dir: Path, verify: str) -> int:
    """This node's newest intact step, after the same scan as a single-node resume (damaged and interrupted
    folders set aside)."""
    if not output_dir.is_dir():
        return NO_STEP
    ensure_not_locked(output_dir)
    (output_dir / AEGIS_DIR).mkdir(exist_ok=True)
    with FileLock(str(output_dir / AEGIS_DIR / SCAN_LOCK_NAME)):
        report = scan_checkpoints(output_dir, verify=verify)
    return int(Path(report.chosen).name.rpartition("-")[2]) if report.chosen else NO_STEP


def find_common_resume_checkpoint(
    output_dir: str | os.PathLike, verify: str = "full", *, remote: RemoteOptions | None = None
) -> str | None:
    """The checkpoint every rank resumes from when each node has its own copy: the newest step intact on every
    node (see the module docstring), or with ``remote`` a newer remote copy whose share every node fetched
    (``noderemote``). A collective: every rank must call it. None means a fresh start."""
    output_dir = Path(output_dir)
    step, newest_here = _agree_common_step(output_dir, verify)
    if remote is not None and remote.enabled:
        from .noderemote import pull_newer_common  # it builds on this module

        step = pull_newer_common(output_dir, step, remote, verify=verify)
    if step == NO_STEP:
        logger.info("No checkpoint is intact on every node: starting from scratch")
        return None
    folder = output_dir / checkpoint_dir_name(step)
    if is_node_leader():
        if newest_here > step:
            logger.warning(
                "Resuming every node from %s, the newest checkpoint intact on all nodes (this node's newest is "
                "step %d)",
                folder,
                newest_here,
            )
        elif newest_here == step:
            logger.info("Resuming from %s (intact on every node, %s verification)", folder, verify)
    return str(folder)


def _agree_common_step(output_dir: Path, verify: str) -> tuple[int, int]:
    """(the newest step intact on every node's disk or ``NO_STEP``, this node's own newest intact step)."""
    leader = is_node_leader()
    mine = _first_scan(output_dir, verify) if leader else _UNBOUNDED
    newest_here = mine
    while True:
        step = distributed.agree_min(mine)
        if step == NO_STEP:
            return NO_STEP, newest_here
        here = (
            not leader or mine == step or newest_intact_step(output_dir, at_most=step, verify=verify) == step
        )
        if not distributed.agree_any(not here):
            return step, newest_here
        # Some node has an intact checkpoint older than ``step`` but not ``step`` itself: look further back.
        mine = newest_intact_step(output_dir, at_most=step - 1, verify=verify) if leader else _UNBOUNDED


def write_node_model_copy(model, folder: str | os.PathLike) -> None:
    """Write the model's weights and configs into ``folder`` on a node leader other than global rank 0.

    transformers 5 writes a model's weights and config from global rank 0 only (``save_pretrained`` checks the
    ``torch.distributed`` rank), even with ``save_on_each_node=True``: the other nodes' checkpoints would lack
    ``model.safetensors`` and could not be resumed from. Shared tensors (tied embeddings) are written once, as
    ``save_pretrained`` does; loading restores both names."""
    from safetensors.torch import save_file

    folder = Path(folder)
    weights = folder / MODEL_WEIGHTS
    if weights.exists() or not hasattr(model, "config"):
        return
    folder.mkdir(parents=True, exist_ok=True)
    save_file(_untied_state_dict(model), str(weights), metadata={"format": "pt"})
    model.config.save_pretrained(str(folder))
    generation = getattr(model, "generation_config", None)
    if generation is not None and getattr(model, "can_generate", lambda: False)():
        generation.save_pretrained(str(folder))


def _untied_state_dict(model) -> dict:
    """The state dict with each shared tensor once, under the name ``save_pretrained`` keeps (not the tied
    alias, e.g. ``lm_head.weight`` tied to the input embeddings)."""
    state = model.state_dict()
    tied = set(dict(getattr(model, "all_tied_weights_keys", None) or {}))
    groups: dict[tuple, list[str]] = {}
    for name, tensor in state.items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        groups.setdefault(key, []).append(name)
    kept = {}
    for names in groups.values():
        name = next((n for n in names if n not in tied), names[0])
        kept[name] = state[name].detach().contiguous()
    return kept


class CommonCheckpointGuard:
    """Names the checkpoint retention must keep on every node: the newest step known to be committed on all of
    them. It starts as the step training resumed from (common by construction) and moves on only when every
    node confirms its commit of a newer one (``confirm``, a collective after each synchronous save)."""

    def __init__(self, output_dir: str | os.PathLike, *, active: bool):
        self.output_dir = Path(output_dir)
        self.active = active
        self.step: int | None = None

    def start(self, step: int) -> None:
        self.step = step if self.active and step > NO_STEP else None

    def confirm(self, step: int, *, committed_here: bool) -> None:
        """Every rank, after the save of ``step``: did this rank's node commit it (True on ranks that do not
        commit)?"""
        if not self.active:
            return
        if not distributed.agree_any(not committed_here):
            self.step = step
        else:
            logger.warning(
                "checkpoint-%d is not committed on every node: retention keeps checkpoint-%s on all nodes",
                step,
                self.step,
            )

    def complete_node_copy(self, model, folder: Path, *, writes_files: bool) -> None:
        """Before the commit on a node leader: add what transformers wrote on global rank 0 only."""
        if self.active and writes_files and distributed.rank() != 0 and model is not None:
            write_node_model_copy(model, folder)

    def protected(self) -> list[Path]:
        return [self.output_dir / checkpoint_dir_name(self.step)] if self.step is not None else []
