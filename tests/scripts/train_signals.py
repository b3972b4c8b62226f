"""Train the tiny GPT-2 with AegisCheckpointCallback and inject one event: a real signal sent to this process, an
exception, a slow save. Used as a child process by the emergency-save tests.

Prints ``AFTER TRAIN`` (and writes ``--marker``) only when ``trainer.train()`` returned: an emergency stop must
keep that code from running. ``--status`` receives JSON lines the test waits on (``saving`` when a save starts).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import time

import tinylib
from transformers import Trainer, TrainerCallback

from aegis_ckpt import AegisCheckpointCallback, find_resume_checkpoint


def note(path: str | None, **fields) -> None:
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"pid": os.getpid(), **fields}) + "\n")


class SlowSaveTrainer(Trainer):
    """A Trainer on a slow disk: every checkpoint write starts with a pause (the folder already exists)."""

    slow_save_sec = 0.0
    status_path: str | None = None

    def _save_checkpoint(self, model, trial):
        folder = os.path.join(self.args.output_dir, f"checkpoint-{self.state.global_step}")
        os.makedirs(folder, exist_ok=True)
        note(self.status_path, event="saving", step=self.state.global_step)
        time.sleep(self.slow_save_sec)
        return super()._save_checkpoint(model, trial)


class Status(TrainerCallback):
    def __init__(self, path: str | None):
        self.path = path

    def on_train_begin(self, args, state, control, **kwargs):
        note(self.path, event="train_begin", step=state.global_step)


class Inject(TrainerCallback):
    """Sends a real signal to this process at the beginning of a step (so it arrives during that step), or
    raises from the step end / the optimizer update."""

    def __init__(self, act: str, step: int, signum: int):
        self.act, self.step, self.signum = act, step, signum
        self.running_step = 0

    def attach(self, model) -> None:
        """For ``forward-exception``: fail inside the forward pass of the target step, after the dropout of the
        earlier layers drew from the RNG (as a CUDA out-of-memory error in the forward would)."""

        def fail_in_forward(module, inputs, output):
            if self.act == "forward-exception" and self.running_step == self.step:
                raise RuntimeError(f"injected failure in the forward pass of step {self.step}")

        model.lm_head.register_forward_hook(fail_in_forward)

    def on_step_begin(self, args, state, control, **kwargs):
        self.running_step = state.global_step + 1
        if state.global_step + 1 != self.step:
            return
        if self.act == "signal":
            os.kill(os.getpid(), self.signum)
        elif self.act == "keyboard-interrupt":
            raise KeyboardInterrupt

    def on_optimizer_step(self, args, state, control, **kwargs):
        if self.act == "optimizer-exception" and state.global_step + 1 == self.step:
            raise RuntimeError(f"injected failure inside the optimizer update of step {self.step}")

    def on_step_end(self, args, state, control, **kwargs):
        if self.act == "exception" and state.global_step == self.step:
            raise RuntimeError(f"injected failure after step {self.step}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--output-dir", required=True)
    p.add_argument("--max-steps", type=int, default=20)
    p.add_argument("--save-interval", type=float, default=1000.0)
    p.add_argument("--step-sleep", type=float, default=0.0)
    p.add_argument("--act", default="none")
    p.add_argument("--act-step", type=int, default=5)
    p.add_argument("--signal", default="SIGTERM")
    p.add_argument("--slow-save", type=float, default=0.0, help="pause at the start of every save")
    p.add_argument("--grace", type=float, default=20.0)
    p.add_argument(
        "--user-handler", help="install a SIGTERM handler before training that appends to this file"
    )
    p.add_argument("--jit", action="store_true", help="TrainingArguments(enable_jit_checkpoint=True)")
    p.add_argument("--result", help="write the final weights here")
    p.add_argument("--status", help="append JSON lines about progress here")
    a = p.parse_args()

    tinylib.quiet_and_single_threaded()
    import logging

    logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s %(message)s")

    user_handler = None
    if a.user_handler:

        def user_handler(signum, frame):
            with open(a.user_handler, "a", encoding="utf-8") as f:
                f.write(f"user handler saw {signal.Signals(signum).name}\n")

        signal.signal(signal.SIGTERM, user_handler)

    resume = find_resume_checkpoint(a.output_dir)
    callbacks = [
        tinylib.SleepPerStep(a.step_sleep),
        AegisCheckpointCallback(save_interval_sec=a.save_interval, max_keep=3, grace_period_sec=a.grace),
        Inject(a.act, a.act_step, int(getattr(signal, a.signal))),
        Status(a.status),
    ]
    SlowSaveTrainer.slow_save_sec = a.slow_save
    SlowSaveTrainer.status_path = a.status
    extra = {"enable_jit_checkpoint": True} if a.jit else {}
    model = tinylib.build_model()
    callbacks[2].attach(model)
    trainer = SlowSaveTrainer(
        model=model,
        args=tinylib.training_args(a.output_dir, max_steps=a.max_steps, **extra),
        train_dataset=tinylib.TinyLMDataset(),
        callbacks=callbacks,
    )
    trainer.train(resume_from_checkpoint=resume)
    print("AFTER TRAIN", flush=True)
    if a.result:
        tinylib.save_weights(trainer.model, a.result)
    if user_handler is not None:
        print(
            "HANDLER RESTORED" if signal.getsignal(signal.SIGTERM) is user_handler else "HANDLER LOST",
            flush=True,
        )
    print(f"SIGTERM HANDLER AFTER TRAIN: {signal.getsignal(signal.SIGTERM)!r}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
