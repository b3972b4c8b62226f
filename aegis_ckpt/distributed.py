"""Rank agreement under torch.distributed (torchrun, accelerate launch).

Every rank must take part in every save (the Trainer all-gathers inside ``_save_checkpoint``), so any decision
that starts a save is taken collectively: a flag raised on any rank is seen by all ranks at the same step.
Without a process group these functions are local no-ops.
"""

from __future__ import annotations

import sys


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


def agree_flags(flags: int) -> int:
    """Bitwise OR of ``flags`` over all ranks (one small all-reduce; local value when not distributed)."""
    dist = _dist()
    if dist is None or dist.get_world_size() == 1:
        return flags
    import torch

    # MAX over one-hot bit planes equals OR; keep it to a single small tensor.
    bits = torch.tensor(
        [(flags >> i) & 1 for i in range(8)], dtype=torch.int32, device=_collective_device(dist)
    )
    dist.all_reduce(bits, op=dist.ReduceOp.MAX)
    return sum(int(b) << i for i, b in enumerate(bits.tolist()))


def _collective_device(dist):
    """NCCL only reduces CUDA tensors; gloo and others take CPU tensors."""
    import torch

    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    dist = _dist()
    if dist is not None and dist.get_world_size() > 1:
        dist.barrier()
