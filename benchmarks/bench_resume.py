"""The read side: full verification against cold-read bandwidth, the quick scan of 20 checkpoints, and
``find_resume_checkpoint`` + resume against the Trainer's own resume.

Usage: python benchmarks/bench_resume.py [--size 125M] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import SIZES, RandomTokens, cold_read_bandwidth, evict_tree, median, quiet, training_args  # noqa: E402

RESUME_STEP = 2  # the checkpoint that every resume run starts from


def make_checkpoint(out: Path, size_name: str) -> Path:
    """Two real training steps of the model, saved and committed by our callback (the final save)."""
    from transformers import Trainer

    from aegis_ckpt import AegisCheckpointCallback

    size = SIZES[size_name]
    cb = AegisCheckpointCallback(save_interval_sec=1e9, handle_signals=False)
    trainer = Trainer(
        model=size.build(),
        args=training_args(out, max_steps=RESUME_STEP),
        train_dataset=RandomTokens(size.vocab),
        callbacks=[cb],
    )
    trainer.train()
    _keep_only(out, f"checkpoint-{RESUME_STEP}")  # resume benchmarks start from the checkpoint alone
    return out / f"checkpoint-{RESUME_STEP}"


def bench_verify(folder: Path, repeats: int) -> dict:
    from aegis_ckpt.storage.commit import read_manifest, verify_checkpoint

    total = read_manifest(folder).total_bytes
    cold_read, cold_verify, warm_verify = [], [], []
    for _ in range(repeats):
        cold_read.append(cold_read_bandwidth(folder))
        evict_tree(folder)
        t = time.perf_counter()
        assert verify_checkpoint(folder, full=True).ok
        cold_verify.append(total / (time.perf_counter() - t))
        t = time.perf_counter()
        assert verify_checkpoint(folder, full=True).ok
        warm_verify.append(total / (time.perf_counter() - t))
    return {
        "bytes": total,
        "cold_read_mb_s": median(cold_read) / 1e6,
        "cold_verify_mb_s": median(cold_verify) / 1e6,
        "warm_verify_mb_s": median(warm_verify) / 1e6,
        "verify_vs_cold_read": median(cold_verify) / median(cold_read),
    }


def bench_quick_scan(tmp: Path, repeats: int = 50) -> dict:
    """20 committed checkpoints of a tiny model: how long the resume decision takes with quick verification."""
    from aegis_ckpt import find_resume_checkpoint
    from aegis_ckpt.resume import scan_checkpoints
    from aegis_ckpt.storage.commit import commit_checkpoint
    from aegis_ckpt.storage.store import CheckpointStore

    out = tmp / "scan"
    src = make_checkpoint(tmp / "scan-src", "10M")
    for step in range(1, 21):
        folder = out / f"checkpoint-{step * 10}"
        shutil.copytree(src, folder)
        (folder / "aegis_manifest.json").unlink()
        commit_checkpoint(folder, step=step * 10, reason="bench")
    CheckpointStore(out).mark_managed()
    scan, find = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        report = scan_checkpoints(out, verify="quick", quarantine=False)
        scan.append(time.perf_counter() - t)
        assert report.chosen and report.chosen.endswith("checkpoint-200")
        t = time.perf_counter()
        assert find_resume_checkpoint(out, verify="quick").endswith("checkpoint-200")
        find.append(time.perf_counter() - t)
    return {"scan_ms": median(scan) * 1000, "find_quick_ms": median(find) * 1000}


class _ReadyClock:
    """Records when the Trainer is about to run its first step after resuming: the model, optimizer,
    scheduler, trainer state and RNG states are all restored by then (the RNG states are loaded at the start of
    the epoch loop, before ``on_step_begin``)."""

    def __init__(self):
        from transformers import TrainerCallback

        clock = self

        class _Callback(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                if clock.ready_at is None:
                    clock.ready_at = time.perf_counter()

        self.ready_at: float | None = None
        self.callback = _Callback()


def _keep_only(out: Path, name: str) -> None:
    """Put the folder back as it was before a resume run: the run goes on for one step and saves it, and our
    callback leaves its run state; the next repeat must resume from the same checkpoint."""
    for entry in out.iterdir():
        if entry.name != name:
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


def _resume_seconds(out: Path, size_name: str, ours: bool, verify: str) -> float:
    """Time from "decide where to resume" to a Trainer that restored everything and is about to run the next
    step. The run is one step longer than the checkpoint so that this moment exists."""
    from transformers import Trainer
    from transformers.trainer_utils import get_last_checkpoint

    from aegis_ckpt import AegisCheckpointCallback, find_resume_checkpoint

    size = SIZES[size_name]
    clock = _ReadyClock()
    callbacks = [clock.callback]
    if ours:
        callbacks.append(AegisCheckpointCallback(save_interval_sec=1e9, handle_signals=False))
    trainer = Trainer(
        model=size.build(),
        args=training_args(out, max_steps=RESUME_STEP + 1),
        train_dataset=RandomTokens(size.vocab),
        callbacks=callbacks,
    )
    t = time.perf_counter()
    resume = find_resume_checkpoint(out, verify=verify) if ours else get_last_checkpoint(str(out))
    assert resume is not None and resume.endswith(f"checkpoint-{RESUME_STEP}"), resume
    trainer.train(resume_from_checkpoint=resume)
    assert clock.ready_at is not None, "the resumed run never reached a step"
    seconds = clock.ready_at - t
    _keep_only(out, f"checkpoint-{RESUME_STEP}")
    return seconds


def bench_resume(out: Path, size_name: str, repeats: int) -> dict:
    results: dict = {}
    for cache in ("warm", "cold"):
        native, full, quick = [], [], []
        for _ in range(repeats):
            for bucket, ours, verify in (
                (native, False, "full"),
                (full, True, "full"),
                (quick, True, "quick"),
            ):
                if cache == "cold":
                    evict_tree(out)
                bucket.append(_resume_seconds(out, size_name, ours, verify))
        results[cache] = {
            "trainer_resume_sec": median(native),
            "ours_full_sec": median(full),
            "ours_quick_sec": median(quick),
            "full_ratio": median(full) / median(native),
            "quick_ratio": median(quick) / median(native),
        }
    return results


def format_table(r: dict) -> str:
    v, s = r["verify"], r["scan"]
    lines = [
        f"Checkpoint of the {r['size']} model with AdamW: {v['bytes'] / 2**30:.2f} GiB.",
        "",
        "| measure | value |",
        "| --- | --- |",
        f"| cold read of the checkpoint | {v['cold_read_mb_s']:.0f} MB/s |",
        f"| full verify, cold cache | {v['cold_verify_mb_s']:.0f} MB/s ({v['verify_vs_cold_read']:.0%} of cold read) |",
        f"| full verify, warm cache | {v['warm_verify_mb_s']:.0f} MB/s |",
        f"| resume decision over 20 committed checkpoints, quick (scan only) | {s['scan_ms']:.2f} ms |",
        f"| `find_resume_checkpoint(verify='quick')` over 20 (with its lock) | {s['find_quick_ms']:.2f} ms |",
    ]
    for cache in ("warm", "cold"):
        c = r["resume"][cache]
        lines.append(
            f"| resume, {cache} cache: Trainer alone (`get_last_checkpoint` + load) | {c['trainer_resume_sec']:.2f} s |"
        )
        lines.append(
            f"| resume, {cache} cache: `find_resume_checkpoint` full + callback + load | {c['ours_full_sec']:.2f} s "
            f"({c['full_ratio']:.2f}x) |"
        )
        lines.append(
            f"| resume, {cache} cache: `find_resume_checkpoint` quick + callback + load | {c['ours_quick_sec']:.2f} s "
            f"({c['quick_ratio']:.2f}x) |"
        )
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="125M", choices=list(SIZES))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json")
    a = p.parse_args()
    import torch

    torch.set_num_threads(2)
    quiet()
    with tempfile.TemporaryDirectory(prefix="aegis-resume-") as tmp:
        tmp = Path(tmp)
        folder = make_checkpoint(tmp / "big", a.size)
        result = {
            "size": a.size,
            "verify": bench_verify(folder, a.repeats),
            "scan": bench_quick_scan(tmp),
            "resume": bench_resume(tmp / "big", a.size, a.repeats),
        }
    print(format_table(result))
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
