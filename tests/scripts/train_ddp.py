"""Train the tiny GPT-2 under torchrun (gloo, CPU) with AegisCheckpointCallback; used by the distributed tests.

Every rank appends one JSON line per event to ``<status-dir>/rank<N>.jsonl``: ``start`` (with its pid and the
step it resumes at), ``step`` (every step end), ``save`` (every on_save). Rank 0 writes the final weights.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import tinylib
from transformers import TrainerCallback

from aegis_ckpt import AegisCheckpointCallback, find_resume_checkpoint


class Report(TrainerCallback):
    def __init__(self, path: str, step_sleep: float):
        self.path = path
        self.step_sleep = step_sleep

    def write(self, **fields) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"pid": os.getpid(), "unix": time.time(), **fields}) + "\n")

    def on_train_begin(self, args, state, control, **kwargs):
        self.write(event="start", step=state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        time.sleep(self.step_sleep)
        self.write(event="step", step=state.global_step)

    def on_save(self, args, state, control, **kwargs):
        self.write(event="save", step=state.global_step)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--output-dir", required=True)
    p.add_argument("--status-dir", required=True)
    p.add_argument("--max-steps", type=int, default=30)
    p.add_argument("--save-interval", type=float, default=0.5)
    p.add_argument("--step-sleep", type=float, default=0.05)
    p.add_argument("--result")
    a = p.parse_args()

    tinylib.quiet_and_single_threaded()
    import logging

    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO, format=f"[rank{rank}] %(name)s %(levelname)s %(message)s")
    args = tinylib.training_args(a.output_dir, max_steps=a.max_steps, ddp_backend="gloo")
    resume = find_resume_checkpoint(a.output_dir)
    report = Report(os.path.join(a.status_dir, f"rank{args.process_index}.jsonl"), a.step_sleep)
    callbacks = [AegisCheckpointCallback(save_interval_sec=a.save_interval, max_keep=3), report]
    from transformers import Trainer

    trainer = Trainer(
        model=tinylib.build_model(), args=args, train_dataset=tinylib.TinyLMDataset(), callbacks=callbacks
    )
    trainer.train(resume_from_checkpoint=resume)
    print(f"AFTER TRAIN rank {args.process_index}", flush=True)
    if a.result and args.process_index == 0:
        tinylib.save_weights(trainer.model, a.result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
