"""Train one ``integlib`` scenario (TRL SFT + LoRA, DPO, PEFT, Seq2Seq, gradient accumulation, epochs, best
model) with AegisCheckpointCallback, resuming from whatever ``find_resume_checkpoint`` picks. Used as a child
process by ``tests/integration/test_integrations.py``.

``--plain`` trains the same scenario without aegis-ckpt (the uninterrupted reference). ``--sigterm-step N`` sends a real SIGTERM to this process at the beginning of step N (so it arrives during that
step). ``--status`` receives one JSON line per event: ``start`` (with the step resumed at), ``step`` (every step
end) and ``save`` (every on_save, after the commit). ``AFTER TRAIN`` is printed only when ``trainer.train()``
returned; ``--result`` receives the final weights.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal

import integlib
import tinylib
from transformers import TrainerCallback

from aegis_ckpt import AegisCheckpointCallback, find_resume_checkpoint


class Status(TrainerCallback):
    def __init__(self, path: str | None, sigterm_step: int | None):
        self.path = path
        self.sigterm_step = sigterm_step

    def write(self, **fields) -> None:
        if self.path:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps({"pid": os.getpid(), **fields}) + "\n")

    def on_train_begin(self, args, state, control, **kwargs):
        self.write(event="start", step=state.global_step)

    def on_step_begin(self, args, state, control, **kwargs):
        if self.sigterm_step is not None and state.global_step + 1 == self.sigterm_step:
            os.kill(os.getpid(), signal.SIGTERM)

    def on_step_end(self, args, state, control, **kwargs):
        self.write(event="step", step=state.global_step)

    def on_save(self, args, state, control, **kwargs):
        self.write(event="save", step=state.global_step)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--scenario", required=True, choices=sorted(integlib.SCENARIOS))
    p.add_argument("--output-dir", required=True)
    p.add_argument("--save-interval", type=float, default=1000.0)
    p.add_argument("--max-keep", type=int, default=2)
    p.add_argument("--step-sleep", type=float, default=0.0)
    p.add_argument("--sigterm-step", type=int)
    p.add_argument("--status")
    p.add_argument("--result")
    p.add_argument("--plain", action="store_true", help="reference run: no aegis callback, no resume")
    a = p.parse_args()

    tinylib.quiet_and_single_threaded()
    import datasets

    datasets.disable_progress_bars()
    logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s %(message)s")

    resume = None if a.plain else find_resume_checkpoint(a.output_dir)
    callbacks = [tinylib.SleepPerStep(a.step_sleep), Status(a.status, a.sigterm_step)]
    if not a.plain:
        callbacks.insert(1, AegisCheckpointCallback(save_interval_sec=a.save_interval, max_keep=a.max_keep))
    trainer = integlib.build_trainer(a.scenario, a.output_dir, callbacks)
    trainer.train(resume_from_checkpoint=resume)
    print("AFTER TRAIN", flush=True)
    if a.result:
        tinylib.save_weights(trainer.model, a.result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
