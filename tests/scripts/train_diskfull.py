"""Train a (configurably wide) tiny GPT-2 with AegisCheckpointCallback on a small file system.

Saves are driven by a fake clock (``--seconds-per-step`` against ``--save-interval``), so which steps save is
exact. ``--fill-at-step N --leave-free BYTES`` writes a ballast file into the output dir's file system at step N
so that only BYTES stay free: the next saves meet a full disk. ``--log`` receives JSON lines.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time

import tinylib
from transformers import GPT2Config, GPT2LMHeadModel, TrainerCallback

from aegis_ckpt import AegisCheckpointCallback, find_resume_checkpoint
from aegis_ckpt.options import AsyncOptions


class FillDisk(TrainerCallback):
    """At the end of ``step`` (before a save decided at that step is written) leave only ``leave`` bytes free."""

    def __init__(self, step: int, leave: int, ballast: str):
        self.step, self.leave, self.ballast = step, leave, ballast

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            _wait_for_background_commits(args.output_dir)
            free = shutil.disk_usage(os.path.dirname(self.ballast)).free
            with open(self.ballast, "ab") as f:
                f.write(b"\0" * max(0, free - self.leave))


def _wait_for_background_commits(output_dir: str, timeout: float = 300.0) -> None:
    """Let a background save in flight finish its commit first, so the disk fills between saves."""
    staging = os.path.join(output_dir, ".aegis", "staging")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pending = [
            d
            for d in (os.listdir(staging) if os.path.isdir(staging) else [])
            if not os.path.exists(os.path.join(staging, d, "aegis_manifest.json"))
        ]
        if not pending:
            return
        time.sleep(0.05)


def log_event(path, **fields) -> None:
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"pid": os.getpid(), "unix": time.time(), **fields}) + "\n")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--output-dir", required=True)
    p.add_argument("--max-steps", type=int, default=6)
    p.add_argument("--width", type=int, default=32, help="n_embd of the tiny GPT-2")
    p.add_argument("--save-interval", type=float, default=25.0)
    p.add_argument("--seconds-per-step", type=float, default=10.0)
    p.add_argument("--max-keep", type=int, default=2)
    p.add_argument("--sync", action="store_true")
    p.add_argument("--writer", default="thread", choices=["thread", "process"])
    p.add_argument("--fill-at-step", type=int, default=0)
    p.add_argument("--leave-free", type=int, default=0)
    p.add_argument("--ballast", help="the ballast file (default: <output-dir>/../ballast)")
    p.add_argument(
        "--no-space-check",
        action="store_true",
        help="switch off the free-space checks before saves: the disk then fills while a save is written",
    )
    p.add_argument("--log")
    a = p.parse_args()
    if a.no_space_check:
        from aegis_ckpt.trainer import savefaults
        from aegis_ckpt.trainer.asyncsave import saver

        savefaults.shortfall = lambda path, nbytes: None
        saver.ensure_space = lambda path, nbytes, what: None

    tinylib.quiet_and_single_threaded()
    import torch

    torch.manual_seed(tinylib.MODEL_SEED)
    model = GPT2LMHeadModel(GPT2Config(**{**tinylib.GPT2_KW, "n_embd": a.width}))
    clock = tinylib.FakeClock()
    resume = find_resume_checkpoint(a.output_dir)
    log_event(a.log, event="start", resume=resume)
    callbacks = [
        tinylib.ClockTicker(clock, a.seconds_per_step),
        AegisCheckpointCallback(
            save_interval_sec=a.save_interval,
            max_keep=a.max_keep,
            async_options=AsyncOptions(enabled=not a.sync, writer=a.writer),
            clock=clock,
        ),
    ]
    if a.fill_at_step:
        ballast = a.ballast or os.path.join(os.path.dirname(os.path.abspath(a.output_dir)), "ballast")
        callbacks.insert(0, FillDisk(a.fill_at_step, a.leave_free, ballast))
    trainer = tinylib.make_trainer(a.output_dir, callbacks, model=model, max_steps=a.max_steps)
    trainer.train(resume_from_checkpoint=resume)
    log_event(a.log, event="done", step=trainer.state.global_step)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
