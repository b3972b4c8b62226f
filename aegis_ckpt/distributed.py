"""Rank agreement under torch.distributed (torchrun, accelerate launch).

Every rank must take part in every save (the Trainer all-gathers inside ``_save_checkpoint``; one rank saving
alone hangs), so anything that starts a save must be decided identically on all ranks: "the save interval is
due on some rank's clock" and "some rank received a stop signal".

``StepAgreement`` does this without a blocking collective per step: at step ``k`` each rank starts an
asynchronous all-reduce (MAX) of its local flags on a small gloo group of its own, and at step ``k + 1`` it reads
the result, which every rank then acts on at that same step. The wait at ``k + 1`` almost never blocks, since
the reduction had a whole training step to complete; decisions simply take effect one step later. The group is
separate from the training group, so these CPU tensors never interleave with NCCL streams or DDP buckets.

Without a process group (or with one process) everything here is local and immediate.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass

logger = logging.getLogger(__name__)


def _dist():
    mod = sys.modules.get("torch.distributed")
    if mod is not None and mod.is_available() and mod.is_initialized():
        return mod
    return None


def world_size() -> int:
    dist = _dist()
    return dist.get_world_size() if dist is not None else 1


def rank() -> int:
    dist = _dist()
    return dist.get_rank() if dist is not None else 0


def is_distributed() -> bool:
    return world_size() > 1


def barrier() -> None:
    dist = _dist()
    if dist is not None and dist.get_world_size() > 1:
        dist.barrier()


def agree_any(flag: bool) -> bool:
    """True on every rank if ``flag`` is true on any rank (one blocking all-reduce on the default group; for
    rare decisions such as refusing to start, not for every step)."""
    dist = _dist()
    if dist is None or dist.get_world_size() == 1:
        return bool(flag)
    import torch

    device = torch.device("cpu")
    if dist.get_backend() == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    value = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


@dataclass(frozen=True)
class StepFlags:
    """What one rank knows at a step end; agreement takes the MAX of each field over all ranks."""

    save_due: int = 0
    """1 when the save interval has elapsed on this rank's clock."""
    signal: int = 0
    """The number of a stop signal this rank received, else 0."""
    writer_busy: int = 0
    """1 when this rank's background writer is still persisting an earlier save."""
    sync_only: int = 0
    """1 when this rank cannot take an asynchronous snapshot (e.g. not enough free RAM): all ranks save
    synchronously then, since a save is collective."""

    def as_list(self) -> list[int]:
        return [self.save_due, self.signal, self.writer_busy, self.sync_only]

    @classmethod
    def from_list(cls, values: list[int]) -> StepFlags:
        return cls(*(int(v) for v in values))

    def merge(self, other: StepFlags) -> StepFlags:
        return StepFlags.from_list([max(a, b) for a, b in zip(self.as_list(), other.as_list(), strict=True)])


class PeerLostError(RuntimeError):
    """A collective failed: another rank is gone (killed, crashed), so no collective save is possible."""


class StepAgreement:
    """Pipelined agreement on ``StepFlags`` (see the module docstring)."""

    def __init__(self) -> None:
        self._group = None
        self._pending = None
        self._pending_step: int | None = None
        self._buffer = None
        self.world_size = 1
        self.result_step: int | None = None
        """The step at which the flags returned by the last ``exchange`` were contributed."""

    def setup(self) -> None:
        """Collective: every rank calls this at the same point (train begin)."""
        self.close()
        dist = _dist()
        self.world_size = dist.get_world_size() if dist is not None else 1
        if self.world_size > 1:
            self._group = dist.new_group(backend="gloo")

    @property
    def active(self) -> bool:
        return self._group is not None

    def exchange(self, local: StepFlags, *, step: int, sync: bool = False) -> StepFlags:
        """Contribute this step's flags; return the flags all ranks agreed on.

        Pipelined (default): returns what the ranks contributed at the previous call (``result_step`` says at
        which step). ``sync=True``: also reduces this step's flags before returning (one blocking collective),
        for decisions that cannot wait a step, such as the last step of training. All ranks must use the same
        ``sync`` value at the same call.
        """
        if not self.active:
            self.result_step = step
            return local
        self.result_step = self._pending_step
        agreed = self._collect_pending()
        if sync:
            self.result_step = step
            return agreed.merge(self._reduce(local, async_op=False))
        self._reduce(local, async_op=True)
        self._pending_step = step
        return agreed

    def drain(self) -> StepFlags:
        """Wait for an outstanding reduction (end of training) and return its result."""
        if not self.active:
            return StepFlags()
        return self._collect_pending()

    def close(self) -> None:
        if self._group is None:
            return
        try:
            self.drain()
        except PeerLostError as e:
            logger.debug("agreement drain on close failed: %s", e)
        dist = _dist()
        if dist is not None:
            try:
                dist.destroy_process_group(self._group)
            except (RuntimeError, ValueError) as e:
                logger.debug("could not destroy the agreement group: %s", e)
        self._group = None

    # ---- internals ---------------------------------------------------------------------------------------------
    def _collect_pending(self) -> StepFlags:
        if self._pending is None:
            return StepFlags()
        try:
            self._pending.wait()
        except RuntimeError as e:
            raise PeerLostError(f"rank agreement failed, a peer rank is gone: {e}") from e
        finally:
            self._pending = None
            self._pending_step = None
        return StepFlags.from_list(self._buffer.tolist())

    def _reduce(self, local: StepFlags, *, async_op: bool) -> StepFlags:
        import torch

        dist = _dist()
        buffer = torch.tensor(local.as_list(), dtype=torch.int64)
        try:
            work = dist.all_reduce(buffer, op=dist.ReduceOp.MAX, group=self._group, async_op=async_op)
        except RuntimeError as e:
            raise PeerLostError(f"rank agreement failed, a peer rank is gone: {e}") from e
        if async_op:
            self._pending, self._buffer = work, buffer
            return StepFlags()
        return StepFlags.from_list(buffer.tolist())
