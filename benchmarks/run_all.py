"""Run every benchmark, print the tables, and (with --write-docs) write docs/benchmarks.md from this run.

    .venv/bin/python benchmarks/run_all.py                 # about 40 minutes on 2 vCPUs
    .venv/bin/python benchmarks/run_all.py --write-docs    # the same, then docs/benchmarks.md from the numbers
    .venv/bin/python benchmarks/run_all.py --quick         # 10M model only, fewer repeats (a smoke run)
    .venv/bin/python benchmarks/run_all.py --reuse ...     # keep benchmarks/results/*.json that exist

Run it on an otherwise idle machine: every figure is a difference or ratio of runs taken side by side, but two
busy cores make any other process part of the measurement.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_gpu_stall  # noqa: E402
import bench_lost_work  # noqa: E402
import bench_overhead  # noqa: E402
import bench_remote  # noqa: E402
import bench_resume  # noqa: E402
import bench_save_cost  # noqa: E402
import bench_stall  # noqa: E402
from common import REPO, machine_description  # noqa: E402

REUSE = False


def _sh(args: list[str], script: Path) -> dict:
    import os
    import subprocess

    out = HERE / "results" / f"{script.stem}.json"
    out.parent.mkdir(exist_ok=True)
    if REUSE and out.exists():
        print(f"reusing {out}", flush=True)
        return json.loads(out.read_text())
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    started = time.time()
    subprocess.run([sys.executable, str(script), *args, "--json", str(out)], check=True, env=env)
    # When and how long, next to the result: a page built with --reuse says which table comes from which run.
    _meta_path(out).write_text(json.dumps({"minutes": (time.time() - started) / 60}))
    return json.loads(out.read_text())


def _meta_path(result: Path) -> Path:
    return result.with_suffix(".meta.json")


def provenance() -> str:
    """One line per benchmark: the date its result file was written and how long the script ran."""
    parts = []
    for stem in (
        "bench_save_cost",
        "bench_stall",
        "bench_overhead",
        "bench_resume",
        "bench_lost_work",
        "bench_remote",
    ):
        out = HERE / "results" / f"{stem}.json"
        if not out.exists():
            continue
        date = datetime.date.fromtimestamp(out.stat().st_mtime).isoformat()
        meta = _meta_path(out)
        minutes = json.loads(meta.read_text())["minutes"] if meta.exists() else None
        parts.append(f"`{stem}` {date}" + (f" ({minutes:.0f} min)" if minutes is not None else ""))
    return "; ".join(parts)


def targets(
    stall: dict, overhead: list, resume: dict, lost: list, remote: dict
) -> list[tuple[str, str, bool | None]]:
    """(target, measured, met) rows, computed from this run's numbers.

    Long because: one block per target of the page, in the page's order; splitting them would scatter the list."""
    rows: list[tuple[str, str, bool | None]] = []
    disk = stall["summary"].get("_disk_write_fsync_mb_per_sec")
    for size, e in stall["summary"].items():
        if size.startswith("_"):
            continue
        m = e["modes"]
        native, durable = m["native"]["stall_sec"], m["native_fsync"]["stall_sec"]
        a, s = m["ours_async"]["stall_sec"], m["ours_sync"]["stall_sec"]
        rows.append(
            (f"{size}: async stall <= 0.2 x native", f"{a:.2f} s vs {native:.2f} s", a <= 0.2 * native)
        )
        mid_a, mid_n = m["ours_async"].get("middle_save_sec"), m["native"].get("middle_save_sec")
        if mid_a is not None and mid_n:
            rows.append(
                (
                    f"{size}: the same for the middle saves only (steady state; not the issue's definition)",
                    f"{mid_a:.2f} s vs {mid_n:.2f} s ({mid_a / mid_n:.2f} x)",
                    mid_a <= 0.2 * mid_n,
                )
            )
        if "ours_async_sha256" in m:
            b = m["ours_async_sha256"]["stall_sec"]
            rows.append(
                (
                    f"{size}: the same with the audit sha256 (audit_digest=sha256; not the default)",
                    f"{b:.2f} s vs {native:.2f} s ({b / native:.2f} x)",
                    b <= 0.2 * native,
                )
            )
        rows.append(
            (
                f"{size}: async stall <= 0.1 x native+fsync",
                f"{a:.2f} s vs {durable:.2f} s",
                a <= 0.1 * durable,
            )
        )
        rows.append(
            (
                f"{size}: sync durable <= 1.1 x native+fsync",
                f"{s:.2f} s vs {durable:.2f} s",
                s <= 1.1 * durable,
            )
        )
        for key, name in (
            ("async", "background persist >= 80% of disk write+fsync"),
            ("async_sha256", "the same with the audit sha256 (not the default)"),
        ):
            if key in e and disk:
                t = e[key]["persist_mb_per_sec"]
                rows.append((f"{size}: {name}", f"{t:.0f} vs {disk:.0f} MB/s", t >= 0.8 * disk))
        rss = m["ours_async"]["extra_peak_rss_gib"] / e["state_gib"]
        rows.append((f"{size}: async peak extra RSS <= 1.1 x state", f"{rss:.2f} x", rss <= 1.1))
    for r in overhead:
        if "inside_share" in r:
            rows.append(
                (
                    f"per-step overhead, {r['processes']} process(es) <= 0.5% (time inside the callback)",
                    f"{r['inside_share']:.2%} ({r['inside_us']:.0f} us of {r['step_ms_with']:.1f} ms)",
                    r["inside_share"] <= 0.005,
                )
            )
        one = r.get("in_one_process")
        if one:
            rows.append(
                (
                    f"per-step overhead, {r['processes']} process(es) <= 0.5% (alternating runs in one process)",
                    f"median {one['median']:+.2%}, mean {one['mean']:+.2%} +- {one['stderr']:.2%} ({one['pairs']} pairs)",
                    None,
                )
            )
        rows.append(
            (
                f"per-step overhead, {r['processes']} process(es) <= 0.5% (wall-clock difference)",
                f"{r['overhead']:+.2%} (spread {r['overhead_min']:+.1%} .. {r['overhead_max']:+.1%})",
                r["overhead"] <= 0.005,
            )
        )
    v = resume["verify"]
    rows.append(
        (
            "full verify >= 70% of cold read",
            f"{v['verify_vs_cold_read']:.0%}",
            v["verify_vs_cold_read"] >= 0.7,
        )
    )
    rows.append(
        (
            "quick resume scan of 20 checkpoints <= 5 ms",
            f"{resume['scan']['scan_ms']:.2f} ms",
            resume["scan"]["scan_ms"] <= 5,
        )
    )
    for cache in ("warm", "cold"):
        c = resume["resume"][cache]
        rows.append(
            (
                f"find_resume_checkpoint (full) + resume <= 1.5 x Trainer resume, {cache} cache",
                f"{c['full_ratio']:.2f} x",
                c["full_ratio"] <= 1.5,
            )
        )
    for r in lost:
        rows.append(
            (
                f"lost work after SIGKILL ({r['mode']}): worst <= interval + one save",
                f"mean {r['mean_lost_sec']:.2f} s, worst {r['max_lost_sec']:.2f} s, interval {r['interval_sec']:g} s",
                None,
            )
        )
    t, s = remote["throughput"], remote["step_cost"]
    rows.append(
        (
            "remote mirror upload >= 90% of a plain s3fs put of the same folder (local moto server)",
            f"median {t['ratio_median']:.0%} of {len(t['ratios'])} A-B-B-A rounds",
            t["ratio_median"] >= 0.9,
        )
    )
    rows.append(
        (
            "step time while an upload runs in the background (S3 server on the same 2 cores)",
            f"{s['step_cost_pct']:+.0f} % ({s['step_ms_idle']:.1f} -> {s['step_ms_during_upload']:.1f} ms)",
            None,
        )
    )
    return rows  # fmt: skip


def cost_section(cost: dict) -> str:
    """The "cost of one save" section from ``bench_save_cost``'s result file."""
    return f"""## Cost of one save

Each way to save the same Trainer state (AdamW after one step), without training around it, side by side in one
process: wall time, and in brackets the CPU time of the whole process (every thread). Median of interleaved
repeats after one warm-up round. "ours sync" is the durable synchronous save (final, signal and emergency saves,
`async_save=False`); "async" is the snapshot (what training waits for) and then the background writer at its
default priority (write, commit, read-back from disk), with the training thread idle meanwhile.

{bench_save_cost.format_table(cost["results"], cost["disk_mb_per_sec"])}
"""


def render(
    machine: str,
    command: str,
    stall: dict,
    overhead: list,
    resume: dict,
    lost: list,
    remote: dict,
    cost: dict,
) -> str:
    """The page docs/benchmarks.md from this run's numbers.

    Long because: it is the page's template, one f-string."""
    rows = targets(stall, overhead, resume, lost, remote)
    target_lines = ["| target | measured | met |", "| --- | --- | --- |"]
    for name, measured, met in rows:
        target_lines.append(
            f"| {name} | {measured} | {'yes' if met else ('no' if met is False else 'see text')} |"
        )
    today = datetime.date.today().isoformat()
    return f"""# Benchmarks

Generated by `{command}` on {today}. Machine: {machine}.
Measured by: {provenance()}. Every ratio compares runs taken side by side in one script run; the tables are
rewritten by the next `--write-docs` run. What the
numbers mean, and what limits them, is explained after the tables.

{cost_section(cost)}
## Stall per checkpoint

Stall = (wall time of a run with {bench_stall.SAVES} saves - the same run without saves) / {bench_stall.SAVES}: the blocking part of a save plus every
step slowed down while a background writer runs. Median of interleaved repeats, (min..max) in brackets.

{bench_stall.format_table(stall["summary"])}

## Per-step overhead when no save is due

{bench_overhead.format_table(overhead)}

## Verification and resume

{bench_resume.format_table(resume)}

## Work lost to a SIGKILL

{bench_lost_work.format_table(lost)}

## Remote copies (S3 upload)

The background mirror against a plain `s3fs` `fs.put` of the same committed folder, A-B-B-A rounds, to moto's
S3 server on 127.0.0.1; then the step time of a CPU training loop with and without an upload running in the
background (see docs/remote.md).

{bench_remote.format_table(remote)}

{bench_gpu_stall.DOCS_SECTION}
## Targets, checked against this run

{chr(10).join(target_lines)}

## Reading these numbers

- The machine has 2 cores and training keeps both busy. A background writer competes with training for them:
  the "ours async" stall is the snapshot (a copy into CPU buffers that are reused from one save to the next)
  plus that competition. The writer's own CPU work is small (the large optimizer tensors go to the disk with
  `O_DIRECT` straight from the snapshot, the rest through one copy into an aligned buffer, xxh3 from memory:
  about 0.09 s of CPU per 0.6 GB, see docs/async-saves.md), except the SHA-256 that the audit log records with
  `audit_digest: sha256` (not the default), about 0.35 s per 0.6 GB. A CPU-second the writer takes costs
  training about a second of wall time here (measured: SHA-256 of 0.6 GB on a second thread, 0.35 s of CPU, made
  the training steps 0.29 s slower). The "audit sha256" column is the same save with `audit_digest: sha256`. On a GPU machine training runs on the GPU, the CPU mostly waits
  and the hash is close to free; no GPU machine was lent to this task, so that case is not measured.
- The first save of a run also allocates and first touches the snapshot buffers (one copy of the state), so it
  can cost more than the saves after it; the split table shows the first, middle (steady state) and last saves
  separately.
- "native" writes through the page cache. On this VM getting page-cache pages can be the expensive part of a
  write (measured once: 1.45 s of system time for 600 MB written to a new file, 0.12 s for the next 600 MB; the
  page-cache write+fsync bandwidth above is a fraction of the `O_DIRECT` one). The async writer avoids it with
  `O_DIRECT`, which is why it can cost the loop less than the Trainer's own save although it also hashes and
  flushes.
- "ours async, process writer" is `AsyncOptions(writer="process")`: a child process at `nice` 19 writes from
  shared memory, so it shares no GIL with training. Its figure includes the child's start (importing torch) and
  the first touch of the shared-memory buffers, which a run pays once (see the first-save column); and saves
  that came due while the low-priority writer was still busy waited for it. Where it is not below the thread's
  figure, the thread stays the better default on this machine (docs/async-saves.md).
- The disk reference for the background write's throughput is the better of sequential write+fsync through the
  page cache and with `O_DIRECT`. The writer gets below it when it competes with training for the CPU: its
  SHA-256 alone runs at about 1.7 GB/s on one idle core, and it gets only what training leaves of two. The
  persist time also includes the commit (fsync of every file, the manifest, the directory flushes).
- "native" is the Trainer's own save without `fsync`: the data is only in the page cache when it returns, and a
  power cut loses it. "native+fsync" is the cheapest durable save the Trainer could make; "ours sync" writes
  the same files through the direct writer, hashed in the same pass (xxh3 for the manifest, SHA-256 as well with
  `audit_digest: sha256`), then flushes them and writes the manifest; "ours async" moves all of it off the training loop.
- Negative or widely spread stalls mean the difference is within the noise of this shared machine for that size.
- Per-step overhead: run-to-run differences of a few percent are the noise of this VM, so the wall-clock
  difference of paired runs in separate processes cannot resolve 0.5 %. Alternating runs inside one process
  remove part of that noise; their mean +- standard error says how large an overhead outside the measured
  callback time could hide in it. The time spent inside the callback's event methods is
  measured directly in the same runs; it is the callback's whole cost when no save is due (it starts no thread
  and no process then; under torchrun the agreement's all-reduce runs in gloo's threads while training goes on).
- Full verification reads every byte once and hashes it with xxh3 (tens of GB/s); it is bound by the disk.
- Remote copies: the S3 server is moto (pure Python) on the same two cores; it takes about three times the
  client's CPU per GB received, so it, the upload client, the training loop and every other job compete for the
  cores. Single rounds of the upload comparison scatter widely on a shared machine (docs/remote.md shows six runs
  and what limits them). About three quarters of the CPU an upload takes here is the server's, which a remote
  S3 endpoint does not take from the training machine.
"""


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--write-docs", action="store_true")
    p.add_argument("--quick", action="store_true")
    p.add_argument(
        "--reuse", action="store_true", help="use benchmarks/results/*.json of an earlier run where present"
    )
    a = p.parse_args()
    global REUSE
    REUSE = a.reuse
    machine = machine_description()
    print(f"machine: {machine}", flush=True)
    if a.quick:
        cost = _sh(["--sizes", "10M", "--repeats", "1"], HERE / "bench_save_cost.py")
        stall = _sh(["--sizes", "10M", "--repeats", "1"], HERE / "bench_stall.py")
        overhead = _sh(["--steps", "150", "--repeats", "2"], HERE / "bench_overhead.py")
        resume = _sh(["--size", "10M", "--repeats", "1"], HERE / "bench_resume.py")
        lost = _sh(["--kills", "3"], HERE / "bench_lost_work.py")
        remote = _sh(["--mb", "64", "--rounds", "3", "--repeats", "1"], HERE / "bench_remote.py")
    else:
        cost = _sh([], HERE / "bench_save_cost.py")
        stall = _sh([], HERE / "bench_stall.py")
        overhead = _sh([], HERE / "bench_overhead.py")
        resume = _sh([], HERE / "bench_resume.py")
        lost = _sh([], HERE / "bench_lost_work.py")
        remote = _sh([], HERE / "bench_remote.py")
    # The tables come from the raw runs, summarized by this code (a reused result file may predate a new column).
    stall["summary"].update(bench_stall.summarize(stall["runs"]))
    command = (
        "python benchmarks/run_all.py"
        + (" --quick" if a.quick else "")
        + (" --reuse" if a.reuse else "")
        + (" --write-docs" if a.write_docs else "")
    )
    text = render(machine, command, stall, overhead, resume, lost, remote, cost)
    print(text)
    if a.write_docs:
        (REPO / "docs" / "benchmarks.md").write_text(text, encoding="utf-8")
        print(f"wrote {REPO / 'docs' / 'benchmarks.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
