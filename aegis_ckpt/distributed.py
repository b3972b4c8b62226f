"""Rank agreement under torch.distributed (torchrun, accelerate launch).

Every rank must take part in every save (the Trainer all-gathers inside ``_save_checkpoint``; one rank saving
alone hangs), so anything that starts a save must be decided identically on all ranks: "the save interval is
due on some rank's clock" and "some rank received a stop signal".

``StepAgreement`` does this without a blocking collective per step: at an agreement step each rank starts an
asynchronous all-reduce (MAX) of its local flags on a small gloo group of its own, and at the next agreement
step it reads the result, which every rank then acts on at that same step. The wait almost never blocks, since
the reduction had at least a whole training step to complete. The group is separate from the training group, so
these CPU tensors never interleave with NCCL streams or DDP buckets.

Starting an all-reduce costs 0.1-0.5 ms on the training thread (measured with gloo, 2 ranks on 2 cores), which
is several percent of a small model's step. So agreement steps are spaced: every rank proposes a stride (how
many step ends apart) from its own step time, aiming at one agreement per ``AGREE_EVERY_SEC``, and the MAX of the
proposals travels with the flags. Every rank reads the same result at the same step end and so schedules the
next agreement at the same step. A decision (a save coming due, a signal on some rank) is contributed at the
first agreement step after it and acted on at the one after that: within about ``2 * AGREE_EVERY_SEC`` plus two
steps.

Without a process group (or with one process) everything here is local and immediate.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from dataclasses import dataclass

logger = logging.getLogger(__name__)

AGREE_EVERY_SEC = 0.2
"""Aimed time between two agreement steps: the extra delay of a save or a stop decision under torchrun."""
MAX_STRIDE = 100
"""At most this many step ends between two agreement steps, whatever the step time."""
NO_UPLOAD_LIMIT = 2**62
"""What a rank that uploads nothing offers to ``StepFlags.uploads_from``: it never holds the agreed step back."""


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


def agree_min(value: int) -> int:
    """The smallest ``value`` over all ranks, on every rank (one blocking all-reduce on the default group; for
    rare decisions such as the step every node can resume from)."""
    return _reduce_int(value, "MIN")


def agree_sum(value: int) -> int:
    """The sum of ``value`` over all ranks, on every rank (one blocking all-reduce on the default group; for
    rare questions such as how many processes upload a share of each checkpoint)."""
    return _reduce_int(value, "SUM")


def _reduce_int(value: int, op: str) -> int:
    dist = _dist()
    if dist is None or dist.get_world_size() == 1:
        return int(value)
    import torch

    device = torch.device("cpu")
    if dist.get_backend() == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    tensor = torch.tensor([int(value)], dtype=torch.int64, device=device)
    dist.all_reduce(tensor, op=getattr(dist.ReduceOp, op))
    return int(tensor.item())


def share_from_main(value):
    """``value`` as rank 0 has it, on every rank (one blocking broadcast of a picklable object on the default
    group; for rare decisions that only rank 0 can take, such as which checkpoint every rank resumes from)."""
    dist = _dist()
    if dist is None or dist.get_world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


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
    uploads_from: int = 0
    """Node-local remote copies: minus the newest step whose files this rank has uploaded (ranks that upload no
    share offer ``-NO_UPLOAD_LIMIT``). The MAX over ranks is minus the newest step that every uploading rank has
    reached: a MIN carried by the same MAX all-reduce (``uploaded_by_all``)."""

    def as_list(self) -> list[int]:
        return [self.save_due, self.signal, self.writer_busy, self.sync_only, self.uploads_from]

    @property
    def uploaded_by_all(self) -> int:
        """The newest step every uploading rank has uploaded its files of (0: none, or no agreement yet)."""
        return max(0, -self.uploads_from)

    @classmethod
    def from_list(cls, values: list[int]) -> StepFlags:
        return cls(*(int(v) for v in values))

    def merge(self, other: StepFlags) -> StepFlags:
        return StepFlags.from_list([max(a, b) for a, b in zip(self.as_list(), other.as_list(), strict=True)])


class PeerLostError(RuntimeError):
    """A collective failed: another rank is gone (killed, crashed), so no collective save is possible."""


class StepAgreement:
    """Pipelined agreement on ``StepFlags`` (see the module docstring)."""

    def __init__(self, clock=time.monotonic) -> None:
        self._group = None
        self._pending = None
        self._pending_step: int | None = None
        self._buffer = None
        self._clock = clock
        self.world_size = 1
        self.result_step: int | None = None
        """The step at which the flags returned by the last ``exchange`` were contributed (None when the last
        call was not an agreement step)."""
        self._reset_cadence()

    def _reset_cadence(self) -> None:
        self._calls = 0
        self._next_agreement_call = 1
        self._last_call_at: float | None = None
        self._step_sec: float | None = None  # exponential average of the time between calls
        self.stride = 1
        """Step ends between two agreement steps, as agreed by all ranks."""

    def setup(self) -> None:
        """Collective: every rank calls this at the same point (train begin)."""
        self.close()
        dist = _dist()
        self.world_size = dist.get_world_size() if dist is not None else 1
        self._reset_cadence()
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
        self._calls += 1
        self._time_step()
        if not sync and self._calls < self._next_agreement_call:
            self.result_step = None
            return StepFlags()
        self.result_step = self._pending_step
        agreed = self._collect_pending()
        if sync:
            self.result_step = step
            return agreed.merge(self._reduce(local, async_op=False))
        self._reduce(local, async_op=True)
        self._pending_step = step
        self._next_agreement_call = self._calls + self.stride
        return agreed

    def _time_step(self) -> None:
        now = self._clock()
        if self._last_call_at is not None:
            dt = now - self._last_call_at
            self._step_sec = dt if self._step_sec is None else 0.8 * self._step_sec + 0.2 * dt
        self._last_call_at = now

    def _proposed_stride(self) -> int:
        if not self._step_sec or self._step_sec <= 0:
            return 1
        return max(1, min(MAX_STRIDE, math.ceil(AGREE_EVERY_SEC / self._step_sec)))

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
        *flags, stride = self._buffer.tolist()
        self.stride = max(1, int(stride))  # the same on every rank: the MAX of all proposals
        return StepFlags.from_list(flags)

    def _reduce(self, local: StepFlags, *, async_op: bool) -> StepFlags:
        import torch

        dist = _dist()
        buffer = torch.tensor([*local.as_list(), self._proposed_stride()], dtype=torch.int64)
        try:
            work = dist.all_reduce(buffer, op=dist.ReduceOp.MAX, group=self._group, async_op=async_op)
        except RuntimeError as e:
            raise PeerLostError(f"rank agreement failed, a peer rank is gone: {e}") from e
        if async_op:
            self._pending, self._buffer = work, buffer
            return StepFlags()
        return StepFlags.from_list(buffer.tolist()[:-1])
