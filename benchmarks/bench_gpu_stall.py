"""What an asynchronous save blocks training for with the model on a GPU, beside the Trainer's own save.

GPT-2-style models (``--sizes``, GPT-2 small and medium layouts by default) are trained one step on the GPU, so
the AdamW state lives there too. Then, side by side in one process, interleaved and repeated after one warm-up
round, each way to save the same state:

  snapshot      ``take_snapshot`` with reused ``SnapshotBuffers``, the real asynchronous path: copies on a side
                CUDA stream into pinned host buffers, one wait on an event after the last copy. This is all that
                blocks training; the background write (write, commit, read-back) runs after it and is timed
                separately, with the training thread idle.
  native        ``Trainer._save_checkpoint``: blocks training for all of it (page cache, not durable)
  native_fsync  the same, then fsync of every file and folder (the cheapest durable Trainer save)

Before each timed save, ``torch.cuda.synchronize()`` lets the step's queued kernels finish, so the time is the
save's own. Reported: the median blocking time per save, the same per GB of state, and the Trainer's save times;
also how many snapshot buffers are pinned and the pinned host memory in use (torch's caching host allocator
rounds each pinned block up to a power of two, so it can exceed the state); and whether a snapshot taken while
kernels that change every parameter are still queued equals the live state afterwards.

Usage: python benchmarks/bench_gpu_stall.py [--sizes 125M 350M] [--repeats 5] [--json out.json]
Without a CUDA device it prints one line ("no CUDA device: ...") and exits 0. ``--device cpu`` runs the same
measurement with the model on the CPU: a check of the script itself, not a figure of the GPU path.
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

from bench_save_cost import ALL_SIZES  # noqa: E402
from common import REPO, ModelSize, fsync_tree, median  # noqa: E402

SIZES = {
    **ALL_SIZES,
    "774M": ModelSize("774M", 36, 1280, 50257),  # GPT-2 large layout
    "1.5B": ModelSize("1.5B", 48, 1600, 50257),  # GPT-2 XL layout
}
MODES = ("snapshot", "native", "native_fsync")

# The section of docs/benchmarks.md about this script (run_all.py writes it); it changes when a GPU run is taken.
DOCS_SECTION = """## Blocking time with the model on a GPU

`benchmarks/bench_gpu_stall.py` measures what an asynchronous save blocks training for when the model and its
AdamW state are on a CUDA GPU: GPT-2-style models (125M and 350M parameters by default, `--sizes`), trained one
step on the GPU, then the snapshot through the real asynchronous path (copies on a side CUDA stream into pinned
host buffers, one wait on an event after the last copy) beside the Trainer's own save of the same state, with and
without `fsync`, side by side in one process, interleaved; the median blocking time per save and per GB of state,
and the pinned host memory the buffers take. **No GPU figure has been measured yet**: the benchmarks above ran on
a machine without a GPU. Without a CUDA device the script prints one line (`no CUDA device: ...`) and exits 0.
"""


def no_cuda_reason() -> str | None:
    """Why this machine cannot run the measurement, or None."""
    import torch

    if not torch.backends.cuda.is_built():
        return f"torch {torch.__version__} is built without CUDA"
    if not torch.cuda.is_available():
        return f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU"
    return None


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _one_save(trainer, mode: str, out: Path, state: dict, device: str) -> dict:
    from transformers import Trainer

    from aegis_ckpt.trainer.asyncsave.saver import SaveJob
    from aegis_ckpt.trainer.asyncsave.snapshot import take_snapshot

    folder = out / f"checkpoint-{trainer.state.global_step}"
    staging = out / "staging"
    for f in (folder, staging):
        shutil.rmtree(f, ignore_errors=True)
    _sync(device)
    result: dict = {}
    t0 = time.perf_counter()
    if mode == "snapshot":
        snap = take_snapshot(trainer, state["buffers"])
        result["blocking"] = time.perf_counter() - t0
        result["bytes"] = snap.nbytes
        if device == "cuda":  # the buffers the copies landed in (outside the timed part)
            tensors = list(snap.model_state.values()) + [
                v for per in snap.optimizer_state["state"].values() for v in per.values()
            ]
            pinned = [t.is_pinned() for t in tensors if hasattr(t, "is_pinned")]
            result["pinned"] = f"{sum(pinned)}/{len(pinned)}"
        state["writer"].submit(SaveJob(1, "bench", staging, snap, {}, result["blocking"]))
        job = state["writer"].collect(wait=True)
        if job.error is not None:
            raise job.error
        result["persist"] = job.write_sec
    else:
        Trainer._save_checkpoint(trainer, trainer.model, None)
        if mode == "native_fsync":
            fsync_tree(folder)
        result["blocking"] = time.perf_counter() - t0
    return result


def snapshot_matches_live(trainer, buffers) -> str:
    """Change every parameter with kernels left queued on the compute stream, take a snapshot at once, and compare
    it with the live state: the side stream must wait for those kernels and its copies must have landed."""
    import torch

    from aegis_ckpt.trainer.asyncsave.snapshot import take_snapshot

    with torch.no_grad():
        for p in trainer.model.parameters():
            p.mul_(1.001).add_(1e-3)
    snap = take_snapshot(trainer, buffers)  # no synchronisation before it
    live = trainer.model.state_dict()
    differ = [k for k, v in live.items() if not torch.equal(snap.model_state[k], v.detach().cpu())]
    for pid, per_param in trainer.optimizer.state_dict()["state"].items():
        for key, v in per_param.items():
            if not torch.equal(snap.optimizer_state["state"][pid][key], v.cpu()):
                differ.append(f"optimizer {pid}/{key}")
    return "yes" if not differ else f"NO: {len(differ)} tensors differ, e.g. {differ[0]}"


def child(size_name: str, repeats: int, out_dir: str, device: str) -> dict:
    import torch
    from common import RandomTokens, quiet, state_bytes, training_args
    from transformers import Trainer

    from aegis_ckpt.options import AsyncOptions
    from aegis_ckpt.trainer.asyncsave.buffers import SnapshotBuffers
    from aegis_ckpt.trainer.asyncsave.saver import AsyncCheckpointWriter

    quiet()
    out = Path(out_dir)
    model = SIZES[size_name].build()
    args = training_args(out, max_steps=1, use_cpu=device == "cpu")
    trainer = Trainer(model=model, args=args, train_dataset=RandomTokens(SIZES[size_name].vocab))
    trainer.train()  # one step: the optimizer state exists, on the same device as the model
    params = list(trainer.model.parameters())
    if params[0].device.type != device:
        raise RuntimeError(f"the model is on {params[0].device}, not on {device}")
    state = {
        "buffers": SnapshotBuffers(),
        "writer": AsyncCheckpointWriter(niceness=AsyncOptions().thread_niceness),
    }
    runs: dict[str, list[dict]] = {m: [] for m in MODES}
    for m in MODES:  # warm-up: allocates the pinned buffers, first O_DIRECT open, imports
        _one_save(trainer, m, out, state, device)
    for _ in range(repeats):
        for m in MODES:
            runs[m].append(_one_save(trainer, m, out, state, device))
    matches = snapshot_matches_live(trainer, state["buffers"])
    # The caching host allocator rounds each pinned block up to a power of two (torch.cuda.host_memory_stats).
    host = torch.cuda.host_memory_stats() if device == "cuda" else {}
    return {
        "pinned_host_bytes": host.get("allocated_bytes.current", 0),
        "size": size_name,
        "params": sum(p.numel() for p in params),
        "state_bytes": state_bytes(trainer.model, trainer.optimizer),
        "pinned_buffers": runs["snapshot"][-1].get("pinned", "-"),
        "snapshot_matches_live": matches,
        "runs": runs,
        "gpu": torch.cuda.get_device_name(params[0].device) if device == "cuda" else "none",
    }


def run_child(size: str, repeats: int, device: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="aegis-gpu-", dir=os.environ.get("AEGIS_BENCH_DIR")) as tmp:
        env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
        cmd = [sys.executable, __file__, "--child", size, str(repeats), tmp, "--device", device]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"{size} failed:\n{proc.stderr[-3000:]}")
        return json.loads(next(line[7:] for line in proc.stdout.splitlines() if line.startswith("RESULT ")))


def format_table(results: list[dict]) -> str:
    lines = [
        "| model | state | snapshot: blocking per save | per GB of state | copy rate | background write+commit "
        "| Trainer save | Trainer save + fsync | Trainer save / snapshot | pinned buffers | pinned host memory "
        "| snapshot = live state |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        runs = r["runs"]

        def med(mode: str, key: str = "blocking", runs=runs) -> float:
            return median([x[key] for x in runs[mode]])

        snap, gb = med("snapshot"), med("snapshot", "bytes") / 1e9
        lines.append(
            f"| {r['size']} ({r['params'] / 1e6:.0f}M) | {gb:.2f} GB | {snap * 1e3:.1f} ms "
            f"| {snap * 1e3 / gb:.1f} ms/GB | {gb / snap:.1f} GB/s | {med('snapshot', 'persist'):.2f} s "
            f"| {med('native'):.2f} s | {med('native_fsync'):.2f} s | {med('native') / snap:.0f} "
            f"| {r['pinned_buffers']} | {r['pinned_host_bytes'] / 1e9:.2f} GB | {r['snapshot_matches_live']} |"
        )
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", default=["125M", "350M"], choices=list(SIZES))
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cpu: check the script only")
    p.add_argument("--json", help="write raw runs here")
    p.add_argument("--child", nargs=3, metavar=("SIZE", "REPEATS", "DIR"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        print("RESULT " + json.dumps(child(a.child[0], int(a.child[1]), a.child[2], a.device)))
        return 0
    if a.device == "cuda" and (reason := no_cuda_reason()):
        print(f"no CUDA device: {reason}; nothing measured")
        return 0
    import torch

    print(
        f"torch {torch.__version__} (CUDA {torch.version.cuda}), {os.cpu_count()} vCPU, "
        f"load average {os.getloadavg()[0]:.1f}; device: {a.device}",
        flush=True,
    )
    results = []
    for size in a.sizes:
        results.append(run_child(size, a.repeats, a.device))
        print(f"  {size} done on {results[-1]['gpu']}", flush=True)
    print(format_table(results))
    if a.json:
        Path(a.json).write_text(json.dumps({"results": results, "device": a.device}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
