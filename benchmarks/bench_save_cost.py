"""What one save costs, measured without training around it: wall time and CPU time of each way to save the same
Trainer state (GPT-2-style models with AdamW after one step), side by side in one process, repeated and
interleaved.

Why besides ``bench_stall``: on a machine whose cores are busy with other work, the wall-clock difference of two
training runs is mostly noise, while the CPU seconds a save consumes are stable; and on a CPU-bound training
machine, a CPU second the background writer takes costs training about a second of wall time (docs/benchmarks.md).
So this reports, per save: the wall time training waits for (blocking part), the wall time until the checkpoint
is durable and verified, and the CPU seconds spent (``time.process_time``: every thread of the process; nothing
else runs in it meanwhile).

Modes:
  native            Trainer._save_checkpoint (page cache, not durable)
  native_fsync      the same, then fsync of every file and folder (the cheapest durable Trainer save)
  trainer_commit    the same, then our commit reading every file back to hash it (synchronous saves before
                    the direct writer; ``AsyncOptions(direct_sync_saves=False)``)
  ours_sync         trainer.directsave: the live state written in one hashed pass (O_DIRECT), commit = fsync
  ours_sync_sha256  the same with the audit's sha256 in that pass
  async             snapshot into reused CPU buffers (blocking), then the background writer: write, commit, read
                    back from disk (thread at the default lowered priority; the training thread waits here)
  async_sha256      the same with the audit's sha256

Usage: python benchmarks/bench_save_cost.py [--sizes 10M 50M 125M] [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, SIZES, ModelSize, fsync_tree, machine_description, median  # noqa: E402

ALL_SIZES = {**SIZES, "350M": ModelSize("350M", 24, 1024, 50257)}
MODES = ("native", "native_fsync", "trainer_commit", "ours_sync", "ours_sync_sha256", "async", "async_sha256")


def _one_save(trainer, mode: str, out: Path, state: dict) -> dict:
    """Run one save of ``mode``; returns its wall seconds (total and blocking) and CPU seconds."""
    from transformers import Trainer

    from aegis_ckpt.storage.commit import commit_checkpoint
    from aegis_ckpt.trainer.asyncsave.saver import SaveJob
    from aegis_ckpt.trainer.asyncsave.snapshot import take_snapshot

    folder = out / f"checkpoint-{trainer.state.global_step}"
    staging = out / "staging"
    for f in (folder, staging):
        shutil.rmtree(f, ignore_errors=True)
    result: dict = {}
    c0, t0 = time.process_time(), time.perf_counter()
    if mode in ("native", "native_fsync", "trainer_commit"):
        Trainer._save_checkpoint(trainer, trainer.model, None)
        if mode == "native_fsync":
            fsync_tree(folder)
        elif mode == "trainer_commit":
            commit_checkpoint(folder, step=1)
        result["blocking"] = time.perf_counter() - t0
    elif mode.startswith("ours_sync"):
        direct = state["direct"] if mode == "ours_sync" else state["direct_sha"]
        direct.save(trainer)
        commit_checkpoint(folder, step=1, sha256=mode.endswith("sha256"), known=direct.take_digests(folder))
        result["blocking"] = time.perf_counter() - t0
    else:
        snap = take_snapshot(trainer, state["buffers"])
        result["blocking"] = time.perf_counter() - t0
        writer = state["writer"]
        writer.submit(
            SaveJob(1, "bench", staging, snap, {}, result["blocking"], sha256=mode.endswith("sha256"))
        )
        job = writer.collect(wait=True)
        if job.error is not None:
            raise job.error
        result["read_back"] = job.read_back_sec
        result["persist"] = job.write_sec
    result["wall"] = time.perf_counter() - t0
    result["cpu"] = time.process_time() - c0
    return result


def child(size_name: str, repeats: int, out_dir: str) -> dict:
    import torch
    from common import RandomTokens, quiet, state_bytes, training_args
    from transformers import Trainer

    from aegis_ckpt.options import AsyncOptions
    from aegis_ckpt.trainer.asyncsave.buffers import SnapshotBuffers
    from aegis_ckpt.trainer.asyncsave.saver import AsyncCheckpointWriter
    from aegis_ckpt.trainer.directsave import DirectSyncSave

    torch.set_num_threads(2)
    quiet()
    size = ALL_SIZES[size_name]
    out = Path(out_dir)
    model = size.build()
    trainer = Trainer(
        model=model, args=training_args(out, max_steps=1), train_dataset=RandomTokens(size.vocab)
    )
    trainer.train()  # one step: the optimizer holds its state
    state = {
        "direct": DirectSyncSave(lambda: False),
        "direct_sha": DirectSyncSave(lambda: True),
        "buffers": SnapshotBuffers(),
        "writer": AsyncCheckpointWriter(niceness=AsyncOptions().thread_niceness),
    }
    runs: dict[str, list[dict]] = {m: [] for m in MODES}
    for m in MODES:  # warm-up: first-touch of buffers, imports, the first O_DIRECT open
        _one_save(trainer, m, out, state)
    for _ in range(repeats):
        for m in MODES:
            runs[m].append(_one_save(trainer, m, out, state))
    return {
        "size": size_name,
        "params": sum(p.numel() for p in model.parameters()),
        "state_bytes": state_bytes(model, trainer.optimizer),
        "checkpoint_bytes": sum(p.stat().st_size for p in (out / "staging").rglob("*") if p.is_file()),
        "runs": runs,
    }


def run_child(size: str, repeats: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="aegis-cost-", dir=os.environ.get("AEGIS_BENCH_DIR")) as tmp:
        env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
        cmd = [sys.executable, __file__, "--child", size, str(repeats), tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"{size} failed:\n{proc.stderr[-3000:]}")
        return json.loads(next(line[7:] for line in proc.stdout.splitlines() if line.startswith("RESULT ")))


def format_table(results: list[dict], disk_mb_s: float) -> str:
    """Long because: one table row per size, every column spelled out."""
    lines = [
        "| model | checkpoint | native | native+fsync | Trainer save + commit read-back (before) | ours sync "
        "| ours sync, sha256 | ours sync / native | ours sync / (native+fsync) | async: blocking snapshot "
        "| async: write+commit+read-back | async: read-back | async persist throughput | async sha256: persist |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        runs = r["runs"]

        def med(mode: str, key: str, runs=runs) -> float:
            return median([x[key] for x in runs[mode]])

        def cell(mode: str) -> str:
            return f"{med(mode, 'wall'):.2f} s ({med(mode, 'cpu'):.2f} s CPU)"

        gb = r["checkpoint_bytes"] / 1e9
        persist = med("async", "persist")
        lines.append(
            f"| {r['size']} ({r['params'] / 1e6:.0f}M) | {gb:.2f} GB | {cell('native')} | {cell('native_fsync')} "
            f"| {cell('trainer_commit')} | {cell('ours_sync')} | {cell('ours_sync_sha256')} "
            f"| {med('ours_sync', 'wall') / med('native', 'wall'):.2f} "
            f"| {med('ours_sync', 'wall') / med('native_fsync', 'wall'):.2f} "
            f"| {med('async', 'blocking'):.3f} s | {persist:.2f} s ({med('async', 'cpu'):.2f} s CPU in all) "
            f"| {med('async', 'read_back'):.2f} s | {gb * 1e3 / persist:.0f} MB/s ({gb * 1e3 / persist / disk_mb_s:.0%} "
            f"of disk) | {med('async_sha256', 'persist'):.2f} s ({med('async_sha256', 'cpu'):.2f} s CPU in all) |"
        )
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(ALL_SIZES))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", help="write raw runs here")
    p.add_argument("--child", nargs=3, metavar=("SIZE", "REPEATS", "DIR"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        print("RESULT " + json.dumps(child(a.child[0], int(a.child[1]), a.child[2])))
        return 0
    from common import direct_write_fsync_bandwidth, write_fsync_bandwidth

    with tempfile.TemporaryDirectory(prefix="aegis-bw-", dir=os.environ.get("AEGIS_BENCH_DIR")) as tmp:
        buffered, direct = write_fsync_bandwidth(Path(tmp)), direct_write_fsync_bandwidth(Path(tmp))
    disk = max(buffered, direct or 0.0) / 1e6
    print(f"machine: {machine_description()}; load average {os.getloadavg()[0]:.1f}", flush=True)
    print(
        f"write+fsync: {buffered / 1e6:.0f} MB/s page cache, {(direct or 0) / 1e6:.0f} MB/s O_DIRECT",
        flush=True,
    )
    results = []
    for size in a.sizes:
        results.append(run_child(size, a.repeats))
        print(f"  {size} done (load average {os.getloadavg()[0]:.1f})", flush=True)
    print(format_table(results, disk))
    if a.json:
        Path(a.json).write_text(json.dumps({"results": results, "disk_mb_per_sec": disk}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
