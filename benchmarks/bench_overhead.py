"""Per-step overhead of AegisCheckpointCallback when no save is due, single process and 2 ranks on gloo.

Two measures. Directly: the time the training thread spends inside the callback's event methods per step (they
are wrapped with a timer), against the step time. As a check that nothing outside those methods costs time: a
tiny GPT-2 (steps of a few tens of milliseconds, where a per-step cost shows most) trains the same number of
steps with and without the callback (its interval far away, so it only checks the clock, agrees across ranks and
snapshots the step-end RNG for exception saves). Runs alternate with/without and repeat; the overhead is the
median of the paired differences of the mean step time. Under torchrun the agreement is the pipelined
asynchronous all-reduce on a side gloo group (see aegis_ckpt/distributed.py).

A third measure repeats the with/without comparison as alternating runs inside one process (per rank), which
removes the noise that comes with separate processes (memory layout, placement on the cores).

Usage: python benchmarks/bench_overhead.py [--steps 300] [--repeats 5] [--pairs 6] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, median  # noqa: E402


def child(with_callback: bool, steps: int, out_dir: str) -> dict:
    import torch
    from common import ModelSize, RandomTokens, quiet, training_args
    from transformers import Trainer, TrainerCallback

    torch.set_num_threads(1)
    quiet()
    size = ModelSize("tiny", 2, 128, 4096)

    class StepTimes(TrainerCallback):
        def __init__(self):
            self.t: list[float] = []

        def on_step_end(self, args, state, control, **kwargs):
            self.t.append(time.perf_counter())

    times = StepTimes()
    callbacks: list = [times]
    if with_callback:
        from aegis_ckpt import AegisCheckpointCallback

        ours = AegisCheckpointCallback(save_interval_sec=1e9, save_on_train_end=False)
        hook_calls = _time_hooks(ours, TrainerCallback)
        callbacks.insert(0, ours)
    distributed = {"ddp_backend": "gloo"} if int(os.environ.get("WORLD_SIZE", "1")) > 1 else {}
    args = training_args(out_dir, max_steps=steps, per_device_train_batch_size=8, **distributed)
    trainer = Trainer(
        model=size.build(), args=args, train_dataset=RandomTokens(size.vocab, seq=64), callbacks=callbacks
    )
    trainer.train()
    warm = times.t[steps // 10 :]  # the first steps include warm-up
    result = {"step_sec": (warm[-1] - warm[0]) / (len(warm) - 1), "rank": args.process_index}
    if with_callback:
        inside = sum(d for at, d in hook_calls if warm[0] < at <= warm[-1])
        result["hook_sec_per_step"] = inside / (len(warm) - 1)
    return result


def child_alternating(pairs: int, steps: int, out_dir: str) -> dict:
    """Runs with and without the callback alternating in ONE process (every rank under torchrun does the same
    sequence): the process, its memory layout and its place on the cores are the same for both, which removes
    most of the run-to-run noise that separate processes carry."""
    with_runs, without_runs = [], []
    rank = 0
    for i in range(pairs):
        for flag in (False, True) if i % 2 == 0 else (True, False):
            run_dir = Path(out_dir) / f"run-{i}-{int(flag)}"
            r = child(flag, steps, str(run_dir))
            rank = r["rank"]
            (with_runs if flag else without_runs).append(r["step_sec"])
    return {"rank": rank, "with": with_runs, "without": without_runs}


def _time_hooks(callback, base) -> list[tuple[float, float]]:
    """Wrap every event method of ``callback`` (on this instance) to record (end time, seconds inside): the
    callback's own cost on the training thread, measured directly instead of as a small difference of two noisy
    runs."""
    calls: list[tuple[float, float]] = []
    for name in dir(base):
        if not name.startswith("on_"):
            continue
        method = getattr(callback, name)

        def timed(*a, _method=method, **k):
            t = time.perf_counter()
            try:
                return _method(*a, **k)
            finally:
                end = time.perf_counter()
                calls.append((end, end - t))

        setattr(callback, name, timed)
    return calls


def run(with_callback: bool, steps: int, nproc: int) -> tuple[float, float]:
    """One training run; a failed run is reported on stdout and retried once (seen: about one 2-process run
    in 30 aborts at exit with "terminate called without an active exception" on one rank, with and without the
    callback alike)."""
    try:
        return _run_once(with_callback, steps, nproc)
    except RuntimeError as e:
        print(f"  RUN FAILED (callback={with_callback}, {nproc} processes), retrying once:\n{e}", flush=True)
        return _run_once(with_callback, steps, nproc)


def _launch(script_args: list[str], nproc: int) -> None:
    """Run this script with ``script_args`` in one process, or under torchrun with ``nproc`` ranks; one intra-op
    thread per process, so that 2 ranks fill the 2 cores without oversubscribing them."""
    env = dict(
        os.environ,
        PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        OMP_NUM_THREADS="1",
    )
    script = [__file__, *script_args]
    if nproc > 1:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={nproc}",
            *script,
        ]
    else:
        cmd = [sys.executable, *script]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"exit {proc.returncode}: ...{proc.stderr[-1500:]}")


def _run_once(with_callback: bool, steps: int, nproc: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory(prefix="aegis-ovh-") as tmp:
        _launch(["--child", "1" if with_callback else "0", str(steps), tmp], nproc)
        results = [json.loads(p.read_text()) for p in Path(tmp).glob("result-rank*.json")]
        # The job goes at the pace of its slowest rank.
        return max(r["step_sec"] for r in results), max(r.get("hook_sec_per_step", 0.0) for r in results)


def measure(nproc: int, steps: int, repeats: int) -> dict:
    diffs, base, ours, inside = [], [], [], []
    for i in range(repeats):
        order = (False, True) if i % 2 == 0 else (True, False)
        got = {flag: run(flag, steps, nproc) for flag in order}
        base.append(got[False][0])
        ours.append(got[True][0])
        inside.append(got[True][1] / got[True][0])
        diffs.append((got[True][0] - got[False][0]) / got[False][0])
        print(f"  {nproc} process(es), repeat {i + 1}: without {got[False][0] * 1000:.2f} ms/step, "
              f"with {got[True][0] * 1000:.2f} ms/step, {got[True][1] * 1e6:.0f} us/step inside the callback",
              flush=True)  # fmt: skip
    return {
        "processes": nproc,
        "step_ms_without": median(base) * 1000,
        "step_ms_with": median(ours) * 1000,
        "overhead": median(diffs),
        "overhead_min": min(diffs),
        "overhead_max": max(diffs),
        "inside_share": median(inside),
        "inside_us": median(ours) * median(inside) * 1e6,
    }


def measure_in_one_process(nproc: int, steps: int, pairs: int) -> dict:
    """``pairs`` alternating with/without runs inside one process (per rank); the job's step time of a run is
    its slowest rank's."""
    with tempfile.TemporaryDirectory(prefix="aegis-ovh-") as tmp:
        _launch(["--alternate", str(pairs), str(steps), tmp], nproc)
        ranks = [json.loads(p.read_text()) for p in Path(tmp).glob("alternating-rank*.json")]
    with_ = [max(r["with"][i] for r in ranks) for i in range(pairs)]
    without = [max(r["without"][i] for r in ranks) for i in range(pairs)]
    diffs = [(a - b) / b for a, b in zip(with_, without, strict=True)]
    mean = sum(diffs) / len(diffs)
    stderr = statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else float("nan")
    print(f"  {nproc} process(es), {pairs} alternating pairs in one process: median {median(diffs):+.2%}, "
          f"mean {mean:+.2%} +- {stderr:.2%}", flush=True)  # fmt: skip
    return {"pairs": pairs, "median": median(diffs), "mean": mean, "stderr": stderr, "diffs": diffs}


def format_table(results: list[dict]) -> str:
    lines = [
        "| processes | step without callback | step with callback | time inside the callback per step | "
        "wall-clock difference, separate processes (median of paired runs) | spread of the difference "
        "| wall-clock difference, alternating runs in one process (median; mean +- standard error) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        inside = (
            f"{r['inside_us']:.0f} us ({r['inside_share']:.2%} of a step)"
            if "inside_share" in r
            else "not measured"
        )
        one = r.get("in_one_process")
        alternating = (
            f"{one['median']:+.2%} ({one['mean']:+.2%} +- {one['stderr']:.2%}, {one['pairs']} pairs)"
            if one
            else "n/a"
        )
        lines.append(
            f"| {r['processes']} | {r['step_ms_without']:.2f} ms | {r['step_ms_with']:.2f} ms | {inside} | "
            f"{r['overhead']:+.2%} | {r['overhead_min']:+.2%} .. {r['overhead_max']:+.2%} | {alternating} |"
        )
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json")
    p.add_argument("--pairs", type=int, default=6, help="alternating pairs in one process")
    p.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    p.add_argument("--alternate", nargs=3, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.alternate:
        result = child_alternating(int(a.alternate[0]), int(a.alternate[1]), a.alternate[2])
        (Path(a.alternate[2]) / f"alternating-rank{result['rank']}.json").write_text(json.dumps(result))
        return 0
    if a.child:
        result = child(a.child[0] == "1", int(a.child[1]), a.child[2])
        # One file per rank: two ranks printing at once would interleave their lines.
        (Path(a.child[2]) / f"result-rank{result['rank']}.json").write_text(json.dumps(result))
        return 0
    results = []
    for n in (1, 2):
        r = measure(n, a.steps, a.repeats)
        r["in_one_process"] = measure_in_one_process(n, a.steps, a.pairs)
        results.append(r)
    print(format_table(results))
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
