"""Train the tiny GPT-2 with AegisCheckpointCallback, resuming from whatever ``find_resume_checkpoint`` picks.

Used as a child process by the tests (it must import ``aegis_ckpt`` from the repo under test: the caller sets
``PYTHONPATH``). Kill it at any moment and start it again with the same arguments: it continues where the newest
committed checkpoint left off, and at the end writes the final weights to ``--result``.

``--log`` receives one JSON line per event: ``start`` (at train begin, after the resume scan and our callback's
own train-begin work, with the checkpoint resumed from) and ``done`` (with the final step).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import tinylib
from transformers import TrainerCallback

from aegis_ckpt import AegisCheckpointCallback, find_resume_checkpoint


class LogTrainBegin(TrainerCallback):
    def __init__(self, log_path: str | None, resume: str | None):
        self.log_path = log_path
        self.resume = resume

    def on_train_begin(self, args, state, control, **kwargs):
        log_event(self.log_path, event="start", resume=self.resume, step=state.global_step)


def log_event(path: str | None, **fields) -> None:
    if not path:
        return
    line = json.dumps({"pid": os.getpid(), "unix": time.time(), **fields}) + "\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--output-dir", required=True)
    p.add_argument("--max-steps", type=int, default=20)
    p.add_argument(
        "--save-interval", type=float, default=1.0, help="AegisCheckpointCallback save_interval_sec"
    )
    p.add_argument("--max-keep", type=int, default=2)
    p.add_argument("--step-sleep", type=float, default=0.0, help="seconds slept at every optimizer step")
    p.add_argument("--verify", default="full", choices=["full", "quick"])
    p.add_argument(
        "--sync", action="store_true", help="async_save=False: the Trainer writes every save itself"
    )
    p.add_argument("--remote-url", help="mirror checkpoints there and resume from it (remote_url)")
    p.add_argument("--result", help="write the final weights (torch.save of the state dict) here")
    p.add_argument("--log", help="append JSON lines (start/done events) here")
    a = p.parse_args()

    tinylib.quiet_and_single_threaded()
    resume = find_resume_checkpoint(a.output_dir, a.verify, remote_url=a.remote_url)
    callbacks = [
        tinylib.SleepPerStep(a.step_sleep),
        AegisCheckpointCallback(
            save_interval_sec=a.save_interval,
            max_keep=a.max_keep,
            async_save=not a.sync,
            remote_url=a.remote_url,
        ),
        LogTrainBegin(a.log, resume),
    ]
    trainer = tinylib.make_trainer(a.output_dir, callbacks, max_steps=a.max_steps)
    trainer.train(resume_from_checkpoint=resume)
    if a.result:
        tinylib.save_weights(trainer.model, a.result)
    log_event(a.log, event="done", step=trainer.state.global_step)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
