"""Work lost to a SIGKILL, against the save interval: real kills at random moments of a real training process.

For each kill, lost work = the wall time of training between the end of the step held by the newest committed
checkpoint and the kill. Guarantee 2 of DESIGN.md bounds it by one interval plus one save; the expectation for a
kill at a uniformly random moment is about half an interval plus the save latency.

Usage: python benchmarks/bench_lost_work.py [--interval 2] [--kills 10] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, median  # noqa: E402


def child(out_dir: str, interval: float, log_path: str, async_save: bool) -> None:
    import torch
    from common import ModelSize, RandomTokens, quiet, training_args
    from transformers import Trainer, TrainerCallback

    from aegis_ckpt import AegisCheckpointCallback, find_resume_checkpoint

    torch.set_num_threads(1)
    quiet()
    size = ModelSize("10M", 4, 256, 32000)

    class StepLog(TrainerCallback):
        def __init__(self):
            self.f = open(log_path, "a", buffering=1)  # noqa: SIM115 - lives as long as the process

        def on_step_end(self, args, state, control, **kwargs):
            self.f.write(json.dumps({"step": state.global_step, "unix": time.time()}) + "\n")

    cb = AegisCheckpointCallback(save_interval_sec=interval, max_keep=3, async_save=async_save)
    trainer = Trainer(
        model=size.build(),
        args=training_args(out_dir, max_steps=100000, per_device_train_batch_size=4),
        train_dataset=RandomTokens(size.vocab),
        callbacks=[cb, StepLog()],
    )
    trainer.train(resume_from_checkpoint=find_resume_checkpoint(out_dir))


def one_kill(interval: float, rng: random.Random, async_save: bool) -> dict:
    from aegis_ckpt.storage.store import CheckpointStore

    with tempfile.TemporaryDirectory(prefix="aegis-lost-") as tmp:
        log = Path(tmp) / "steps.jsonl"
        env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
        cmd = [sys.executable, __file__, "--child", str(Path(tmp) / "out"), str(interval), str(log)]
        if not async_save:
            cmd.append("--sync")
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            while not (log.exists() and log.stat().st_size):
                if proc.poll() is not None:
                    raise RuntimeError("the training child ended early")
                time.sleep(0.05)
            # Kill at a uniformly random moment after a warm-up of two intervals.
            time.sleep(2 * interval + rng.uniform(0, 2 * interval))
            killed_at = time.time()
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
        steps = {}
        for line in log.read_text().splitlines():
            try:
                e = json.loads(line)
            except ValueError:
                continue  # a torn last line from the kill
            steps[e["step"]] = e["unix"]
        committed = CheckpointStore(Path(tmp) / "out").committed()
        if not committed:
            return {"lost_sec": killed_at - min(steps.values()), "resume_step": 0}
        newest = committed[-1].step
        return {"lost_sec": killed_at - steps[newest], "resume_step": newest, "last_step": max(steps)}


def measure(interval: float, kills: int, async_save: bool, seed: int = 7) -> dict:
    rng = random.Random(seed)
    losses = []
    for i in range(kills):
        r = one_kill(interval, rng, async_save)
        losses.append(r["lost_sec"])
        print(f"  {'async' if async_save else 'sync'} kill {i + 1}: lost {r['lost_sec']:.2f} s", flush=True)
    return {
        "mode": "async" if async_save else "sync",
        "interval_sec": interval,
        "kills": kills,
        "mean_lost_sec": sum(losses) / len(losses),
        "median_lost_sec": median(losses),
        "max_lost_sec": max(losses),
    }


def format_table(results: list[dict]) -> str:
    lines = [
        "| saves | interval | kills | mean lost | median lost | worst lost | worst / interval |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        lines.append(
            f"| {r['mode']} | {r['interval_sec']:g} s | {r['kills']} | {r['mean_lost_sec']:.2f} s | "
            f"{r['median_lost_sec']:.2f} s | {r['max_lost_sec']:.2f} s | {r['max_lost_sec'] / r['interval_sec']:.2f} |"
        )
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--interval", type=float, default=2.0)
    p.add_argument("--kills", type=int, default=10)
    p.add_argument("--json")
    p.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    p.add_argument("--sync", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        child(a.child[0], float(a.child[1]), a.child[2], async_save=not a.sync)
        return 0
    results = [measure(a.interval, a.kills, True), measure(a.interval, a.kills, False)]
    print(format_table(results))
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
