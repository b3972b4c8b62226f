"""One side of a start-up race: runs ``aegis-ckpt train`` (the CLI entry point, ``aegis_ckpt.cli.main``) once per
round, each round released by a barrier file, so two such workers reach the run lease at the same instant.

    python race_worker.py WORKDIR ROUNDS -- TRAIN_ARGS...

Heavy imports happen once, before the first barrier, so the race is decided at the lease, not by import speed.
For round k the worker waits for ``WORKDIR/go-k``, runs ``main(["train", *TRAIN_ARGS, "--set",
"training.output_dir=WORKDIR/round-k"])`` with stderr captured in ``WORKDIR/round-k.<pid>.err``, and writes its
exit code to ``WORKDIR/round-k.<pid>.code``. A ``SystemExit`` (the emergency stop after SIGINT) ends the round,
not the worker.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path

import transformers  # noqa: F401 - imported before the barrier on purpose
from transformers import Trainer, TrainingArguments  # noqa: F401

from aegis_ckpt.cli import main


def wait_for(path: Path) -> None:
    while not path.exists():
        time.sleep(0.001)


def run_round(workdir: Path, k: int, train_args: list[str]) -> None:
    wait_for(workdir / f"go-{k}")
    pid = os.getpid()
    argv = ["train", *train_args, "--set", f"training.output_dir={workdir / f'round-{k}'}"]
    with open(workdir / f"round-{k}.{pid}.err", "w") as err, contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except KeyboardInterrupt:
            code = -2
    (workdir / f"round-{k}.{pid}.code").write_text(str(code))


def main_loop() -> None:
    workdir, rounds = Path(sys.argv[1]), int(sys.argv[2])
    train_args = sys.argv[sys.argv.index("--") + 1 :]
    (workdir / f"ready.{os.getpid()}").write_text("")
    for k in range(rounds):
        run_round(workdir, k, train_args)


if __name__ == "__main__":
    main_loop()
