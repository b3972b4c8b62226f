"""Stall per checkpoint as the training loop sees it, for GPT-2-style models of ~10M, ~50M and ~125M parameters
with AdamW, and the memory and throughput of an asynchronous save.

Stall = (wall time of a run with k saves - wall time of the same run without saves) / k. It therefore includes
the blocking part of a save AND every step slowed down while a background writer runs. Each run is a fresh
process (so memory and page-cache effects do not leak between runs); runs of the same size are interleaved and
repeated, and the median is reported with the spread.

Besides that total, each run records when every step began, so the extra time can be split by save: the first
save (which also allocates the snapshot buffers and pays the one-time costs), the saves in the middle of the run
(the steady state of a long run, whose hundreds of saves all look like these), and the last one (whose background
write ends while training waits at the end). Each split is the same run's time minus the paired baseline's over
the same steps.

Modes:
  baseline      no saves
  native        the Trainer's own save_steps save (files in the page cache, not durable)
  native_fsync  the same followed by fsync of every file (durable, what the Trainer alone cannot promise)
  ours_sync     AegisCheckpointCallback(async_save=False): the Trainer writes, we fsync + hash + manifest
  ours_async    AegisCheckpointCallback(): snapshot to CPU memory, write + fsync + commit + read-back on a
                background thread at lowered priority; the audit records the manifest's xxh3 (the default)
  ours_async_sha256  ours_async with CheckpointOptions(audit_digest="sha256"): the audit's sha256 computed in the
                same pass over the bytes
  ours_async_process  the same with AsyncOptions(writer="process"): a child process at nice 19 writes from
                shared memory (no GIL shared with training)

Usage: python benchmarks/bench_stall.py [--sizes 10M 50M 125M] [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, SIZES, fsync_tree, machine_description, median  # noqa: E402
from stall_report import MODES, SAVES, format_table, print_read_back  # noqa: E402,F401 - format_table: run_all

STEPS_BETWEEN_SAVES = {"10M": 12, "50M": 8, "125M": 8}


# ---- one run (child process) -----------------------------------------------------------------------------------
def child(size_name: str, mode: str, out_dir: str) -> dict:
    import torch
    from common import PeakRSS, RandomTokens, quiet, state_bytes, training_args
    from transformers import Trainer, TrainerCallback

    torch.set_num_threads(2)
    quiet()
    size = SIZES[size_name]
    every = STEPS_BETWEEN_SAVES[size_name]
    max_steps = SAVES * every + every // 2  # the last save has half an interval to finish in the background

    class Clock:
        now = 0.0

        def __call__(self):
            return self.now

    clock = Clock()

    class TickPerStep(TrainerCallback):
        """One fake second per step: our time-based callback then saves at exactly the same steps as save_steps."""

        def on_step_begin(self, args, state, control, **kwargs):
            clock.now += 1.0

    step_begins: list[float] = []

    class StepTimes(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            step_begins.append(time.perf_counter())

    class NoEndSave(TrainerCallback):
        """The Trainer also saves at the last step with save_strategy=steps; keep exactly SAVES saves."""

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step >= state.max_steps and state.global_step % every:
                control.should_save = False

    class FsyncAfterSave(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            fsync_tree(Path(args.output_dir) / f"checkpoint-{state.global_step}")

    commits: list[dict] = []
    read_backs: list[
        float
    ] = []  # seconds of each read-back of an async save (on the writer, before publishing)

    class CommitLog(logging.Handler):
        read_back = re.compile(r"read back .* in ([\d.]+) s")

        pattern = re.compile(
            r"\((?:step) (\d+), ([\d.]+) MB, \w+, async: snapshot ([\d.]+) s \+ write and commit ([\d.]+) s"
        )

        def emit(self, record):
            r = self.read_back.search(record.getMessage())
            if r:
                read_backs.append(float(r[1]))
            m = self.pattern.search(record.getMessage())
            if m:
                commits.append(
                    {
                        "step": int(m[1]),
                        "mb": float(m[2]),
                        "snapshot_sec": float(m[3]),
                        "write_sec": float(m[4]),
                    }
                )

    logging.getLogger("aegis_ckpt").addHandler(CommitLog())
    logging.getLogger("aegis_ckpt").setLevel(logging.INFO)
    logging.getLogger("aegis_ckpt.storage.readback").setLevel(logging.DEBUG)

    args = {"max_steps": max_steps}
    callbacks: list = [StepTimes(), TickPerStep()]
    if mode in ("native", "native_fsync"):
        args.update(save_strategy="steps", save_steps=every)
        callbacks.append(NoEndSave())
        if mode == "native_fsync":
            callbacks.append(FsyncAfterSave())
    elif mode.startswith("ours_"):
        from aegis_ckpt import AegisCheckpointCallback, AsyncOptions, CheckpointOptions

        callbacks.append(
            AegisCheckpointCallback(
                options=CheckpointOptions(
                    save_interval_sec=every - 0.5,
                    max_keep=2,
                    save_on_train_end=False,
                    audit_sha256=mode != "ours_async_sha256",
                ),
                async_options=AsyncOptions(
                    enabled=mode != "ours_sync",
                    writer="process" if mode == "ours_async_process" else "thread",
                ),
                handle_signals=False,
                clock=clock,
            )
        )
    model = size.build()
    trainer = Trainer(
        model=model,
        args=training_args(out_dir, **args),
        train_dataset=RandomTokens(size.vocab),
        callbacks=callbacks,
    )
    with PeakRSS() as rss:
        started = time.perf_counter()
        trainer.train()
        ended = time.perf_counter()
        seconds = ended - started
    saved = sorted(int(p.name.split("-")[1]) for p in Path(out_dir).glob("checkpoint-*"))
    return {
        "size": size_name,
        "mode": mode,
        "seconds": seconds,
        "steps": max_steps,
        "saves": SAVES if mode != "baseline" else 0,
        "kept": saved,
        "peak_rss": rss.peak,
        "rss_before": rss.baseline,
        "state_bytes": state_bytes(model, trainer.optimizer),
        "params": sum(p.numel() for p in model.parameters()),
        "commits": commits,
        "read_back_sec": read_backs,
        "step_begins": [t - started for t in step_begins],
        "end": ended - started,
        "save_steps": [every * (i + 1) for i in range(SAVES)] if mode != "baseline" else [],
    }


# ---- orchestration (parent) ------------------------------------------------------------------------------------
def run_child(size: str, mode: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="aegis-bench-", dir=os.environ.get("AEGIS_BENCH_DIR")) as tmp:
        env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
        proc = subprocess.run(
            [sys.executable, __file__, "--child", size, mode, tmp], capture_output=True, text=True, env=env
        )
        if proc.returncode != 0:
            raise RuntimeError(f"{size}/{mode} failed:\n{proc.stderr[-3000:]}")
        return json.loads(next(line[7:] for line in proc.stdout.splitlines() if line.startswith("RESULT ")))


def segment_seconds(run: dict, save_steps: list[int]) -> list[float]:
    """Wall time of the run cut at the saves: [start .. the step of save 1), [save 1 .. save 2), ...,
    [last save .. end of train()]. The step of save i includes its own step end, where the snapshot is taken."""
    begins = run["step_begins"]  # begins[s - 1] is when step s began
    cuts = [0.0] + [begins[s - 1] for s in save_steps] + [run["end"]]
    return [b - a for a, b in zip(cuts, cuts[1:], strict=False)]


def split_stall(run: dict, base: dict) -> dict:
    """The extra time of ``run`` over ``base`` per segment: first save (with the time before it), middle saves,
    last save (with the wait at the end). Sums to the total difference."""
    steps = run["save_steps"]
    ours, theirs = segment_seconds(run, steps), segment_seconds(base, steps)
    extra = [a - b for a, b in zip(ours, theirs, strict=True)]
    return {"first": extra[0] + extra[1], "middle": extra[2:-1], "last": extra[-1]}


def summarize(runs: list[dict]) -> dict:
    out: dict = {}
    for size in sorted({r["size"] for r in runs}, key=lambda s: list(SIZES).index(s)):
        by_mode = {m: [r for r in runs if r["size"] == size and r["mode"] == m] for m in MODES}
        base = by_mode["baseline"]
        repeats = min(len(v) for v in by_mode.values())
        entry = {
            "params_m": base[0]["params"] / 1e6,
            "state_gib": base[0]["state_bytes"] / 2**30,
            "modes": {},
        }
        for mode in MODES[1:]:
            # Pair each run with the baseline of the same repeat (interleaved in time), then take the median.
            stalls = [(by_mode[mode][i]["seconds"] - base[i]["seconds"]) / SAVES for i in range(repeats)]
            extra_rss = [by_mode[mode][i]["peak_rss"] - base[i]["peak_rss"] for i in range(repeats)]
            splits = [split_stall(by_mode[mode][i], base[i]) for i in range(repeats)]
            middle = [x for sp in splits for x in sp["middle"]]
            entry["modes"][mode] = {
                "first_save_sec": median([sp["first"] for sp in splits]),
                "middle_save_sec": median(middle) if middle else float("nan"),
                "middle_min": min(middle) if middle else float("nan"),
                "middle_max": max(middle) if middle else float("nan"),
                "last_save_sec": median([sp["last"] for sp in splits]),
                "stall_sec": median(stalls),
                "stall_min": min(stalls),
                "stall_max": max(stalls),
                "extra_peak_rss_gib": median(extra_rss) / 2**30,
            }
        for mode, key in (("ours_async", "async"), ("ours_async_sha256", "async_sha256")):
            commits = [c for r in by_mode[mode] for c in r["commits"]]
            if commits:
                entry[key] = {
                    "snapshot_sec": median([c["snapshot_sec"] for c in commits]),
                    "write_sec": median([c["write_sec"] for c in commits]),
                    "persist_mb_per_sec": median(
                        [c["mb"] / c["write_sec"] for c in commits if c["write_sec"] > 0]
                    ),
                    "read_back_sec": median(
                        [s for r in by_mode[mode] for s in r.get("read_back_sec", [])] or [0.0]
                    ),
                }
        entry["step_sec"] = median([r["seconds"] / r["steps"] for r in base])
        out[size] = entry
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--modes", nargs="+", default=list(MODES), choices=list(MODES), help="a subset, for a quick look"
    )
    p.add_argument("--json", help="write raw runs and the summary here")
    p.add_argument("--child", nargs=3, metavar=("SIZE", "MODE", "DIR"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        print("RESULT " + json.dumps(child(*a.child)))
        return 0

    from common import direct_write_fsync_bandwidth, write_fsync_bandwidth

    with tempfile.TemporaryDirectory(prefix="aegis-bw-", dir=os.environ.get("AEGIS_BENCH_DIR")) as tmp:
        buffered_bw = write_fsync_bandwidth(Path(tmp))
        direct_bw = direct_write_fsync_bandwidth(Path(tmp))
    # The reference for the persist throughput is the better of the two ways to write (the writer uses O_DIRECT).
    disk_bw = max(buffered_bw, direct_bw or 0.0)
    print(f"machine: {machine_description()}", flush=True)
    print(
        f"sequential write+fsync: {buffered_bw / 1e6:.0f} MB/s through the page cache, "
        + (f"{direct_bw / 1e6:.0f} MB/s with O_DIRECT" if direct_bw else "O_DIRECT not available"),
        flush=True,
    )
    runs = []
    for size in a.sizes:
        for repeat in range(a.repeats):
            for mode in [m for m in MODES if m in a.modes or m == "baseline"]:
                r = run_child(size, mode)
                runs.append(r)
                print(f"  {size:>4} {mode:<12} repeat {repeat + 1}: {r['seconds']:.2f} s", flush=True)
    if set(a.modes) | {"baseline"} != set(MODES):
        print("(a subset of the modes: no table)")
        for size in a.sizes:
            base = [r["seconds"] for r in runs if r["size"] == size and r["mode"] == "baseline"]
            for mode in a.modes:
                if mode == "baseline":
                    continue
                stalls = [
                    (r["seconds"] - b) / SAVES
                    for r, b in zip(
                        [r for r in runs if r["size"] == size and r["mode"] == mode], base, strict=True
                    )
                ]
                print(
                    f"  {size:>4} {mode:<20} stall per save: {median(stalls):.2f} s ({min(stalls):.2f}..{max(stalls):.2f})"
                )
                print_read_back(size, mode, [r for r in runs if r["size"] == size and r["mode"] == mode])
        return 0
    summary = summarize(runs)
    summary["_disk_write_fsync_mb_per_sec"] = disk_bw / 1e6
    summary["_disk_buffered_mb_per_sec"] = buffered_bw / 1e6
    summary["_disk_direct_mb_per_sec"] = (direct_bw or 0.0) / 1e6
    print(format_table(summary))
    if a.json:
        Path(a.json).write_text(json.dumps({"runs": runs, "summary": summary}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
