"""A user's script with AegisCheckpointCallback, for Ctrl+C tests: trains the tiny GPT-2 for a long time.

    python interrupt_train.py OUTPUT_DIR STATUS_FILE [--slow-begin] [--slow-cleanup]

With ``--slow-begin`` a callback registered before ours spends a long time in ``on_train_begin`` (as a tracker's
start-up does), so a Ctrl+C can land inside ``trainer.train()`` before the first step. ``STATUS_FILE`` is written
when that wait begins. With ``--slow-cleanup`` the script's own ``finally`` block takes a long time after
``trainer.train()`` ended (``STATUS_FILE.cleanup`` is written when it starts), as a tracker's shutdown does.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import tinylib
from transformers import TrainerCallback

from aegis_ckpt import AegisCheckpointCallback


class SlowBegin(TrainerCallback):
    def __init__(self, status: Path, seconds: float):
        self.status, self.seconds = status, seconds

    def on_train_begin(self, args, state, control, **kwargs):
        self.status.write_text("begin")
        time.sleep(self.seconds)


def main() -> None:
    output_dir, status = sys.argv[1], Path(sys.argv[2])
    tinylib.quiet_and_single_threaded()
    slow = [SlowBegin(status, 120.0)] if "--slow-begin" in sys.argv else []
    trainer = tinylib.make_trainer(
        output_dir,
        callbacks=[*slow, AegisCheckpointCallback(save_interval_sec=0.2)],
        max_steps=1_000_000,
    )
    try:
        trainer.train()
        print("AFTER TRAIN", flush=True)
    finally:
        if "--slow-cleanup" in sys.argv:  # a tracker flushing its last records, say
            Path(str(status) + ".cleanup").write_text("cleanup")
            time.sleep(60)


if __name__ == "__main__":
    main()
