"""A hand-written DDP training loop on the seed API, started by the tests under ``torchrun`` (or ``accelerate
launch``) with 2 CPU processes on gloo.

A tiny MLP with dropout, AdamW and a LambdaLR schedule; each rank trains on its own slice of a seeded batch and
draws its own dropout masks and input noise (torch, numpy and python generators seeded per rank), so an exact
resume needs the shared state (weights, optimizer, scheduler, step) and every rank's own generators.

    torchrun --nproc_per_node 2 custom_loop_ddp.py OUT --status-dir DIR --steps 60 --interval 0.3
        [--api rolling|enhanced] [--step-sleep SEC] [--slow-rank-write RANK:SEC] [--result FILE]

Each rank appends JSON lines to DIR/rank<r>.jsonl (``start`` with its pid and resume step, ``step``, ``exit``
with the code of a ``SystemExit``). ``--slow-rank-write`` delays that rank's own files in every save, so a
commit that does not wait for every rank would miss them. ``--result``: rank 0 writes the final weights there.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

FEATURES, HIDDEN, OUTPUTS, BATCH = 8, 16, 4, 8


def event(status: Path, rank: int, kind: str, **fields) -> None:
    with open(status / f"rank{rank}.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps({"event": kind, "pid": os.getpid(), **fields}) + "\n")


def batch_at(step: int, rank: int, world: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The data order follows from the step alone (a seeded batch, sliced per rank); noise from the RNGs."""
    gen = torch.Generator().manual_seed(10_000 + step)
    x = torch.randn(BATCH * world, FEATURES, generator=gen)
    y = torch.randn(BATCH * world, OUTPUTS, generator=gen)
    x, y = x[rank * BATCH : (rank + 1) * BATCH], y[rank * BATCH : (rank + 1) * BATCH]
    noise = torch.from_numpy(np.random.standard_normal(x.shape).astype(np.float32)) * 0.01
    return x + noise * random.random(), y


def slow_rank_writes(rank: int, spec: str) -> None:
    """Delay this rank's own files in every save (a slow disk on one rank)."""
    slow_rank, seconds = spec.split(":")
    if int(slow_rank) != rank:
        return
    import aegis_ckpt.loop.savepath as savepath

    real = savepath.save_rank_state

    def slow(folder, **kwargs):
        time.sleep(float(seconds))
        real(folder, **kwargs)

    savepath.save_rank_state = slow


def build_manager(ns, rank: int):
    """The manager the test asks for (``--api``); both are context managers."""
    from aegis_ckpt import EnhancedAutoCheckpointManager, RollingCheckpointManager

    if ns.api == "enhanced":
        return EnhancedAutoCheckpointManager(ns.out, max_keep=3, save_interval_sec=ns.interval)
    return RollingCheckpointManager(ns.out, max_keep=3, save_interval_sec=ns.interval)


def train(ns, rank: int, world: int, status: Path) -> None:
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(FEATURES, HIDDEN),
        torch.nn.ReLU(),
        torch.nn.Dropout(0.2),
        torch.nn.Linear(HIDDEN, OUTPUTS),
    )
    model = DDP(net)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 / (1.0 + 0.05 * s))
    torch.manual_seed(100 + rank)
    np.random.seed(200 + rank)
    random.seed(300 + rank)
    with build_manager(ns, rank) as ckpt:
        if ns.api == "enhanced":
            state = ckpt.start(model, optimizer=optimizer, scheduler=scheduler)
        else:
            ckpt.register_model(model, optimizer=optimizer, scheduler=scheduler)
            state = ckpt.resume()
            ckpt.start_auto_save(model)
        step = state["step"] if state else 0
        event(status, rank, "start", step=step)
        try:
            while step < ns.steps:
                x, y = batch_at(step, rank, world)
                loss = torch.nn.functional.mse_loss(model(x), y)
                loss.backward()
                with ckpt.unsafe():
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad()
                    step += 1
                    ckpt.step(step)
                event(status, rank, "step", step=step)
                if ns.step_sleep:
                    time.sleep(ns.step_sleep)
            ckpt.finish()
        except SystemExit as e:
            event(status, rank, "exit", code=e.code, step=ckpt.global_step)
            print(f"RANK {rank} EXIT {e.code} AT STEP {ckpt.global_step}", flush=True)
            raise
    if rank == 0 and ns.result:
        from safetensors.torch import save_model

        save_model(net, ns.result)
    print(f"RANK {rank} FINISHED AT STEP {step}", flush=True)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--status-dir", required=True)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--interval", type=float, default=0.3)
    p.add_argument("--api", choices=("rolling", "enhanced"), default="enhanced")
    p.add_argument("--step-sleep", type=float, default=0.0)
    p.add_argument("--slow-rank-write", default="")
    p.add_argument("--result", default="")
    ns = p.parse_args()
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    logging.basicConfig(level=logging.INFO, format=f"[rank{rank}] %(name)s %(levelname)s %(message)s")
    status = Path(ns.status_dir)
    status.mkdir(parents=True, exist_ok=True)
    if ns.slow_rank_write:
        slow_rank_writes(rank, ns.slow_rank_write)
    train(ns, rank, world, status)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
