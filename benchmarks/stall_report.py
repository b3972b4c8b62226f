"""The tables ``bench_stall`` prints and ``run_all`` writes into docs/benchmarks.md (kept apart from the runs)."""

from __future__ import annotations

from common import median

MODES = (
    "baseline",
    "native",
    "native_fsync",
    "ours_sync",
    "ours_async",
    "ours_async_sha256",
    "ours_async_process",
)
SAVES = 4


def print_read_back(size: str, mode: str, runs: list[dict]) -> None:
    """The read-back of each async save (files from disk against the manifest, before it is published): its
    median time, and its share of the background write it is part of."""
    seconds = [s for r in runs for s in r.get("read_back_sec", [])]
    writes = [c["write_sec"] for r in runs for c in r["commits"]]
    mb = [c["mb"] for r in runs for c in r["commits"]]
    if seconds and writes:
        print(
            f"  {size:>4} {mode:<20} read-back after commit: {median(seconds):.3f} s per save of {median(mb):.0f} MB "
            f"({median(seconds) / median(writes):.0%} of the background write+commit of {median(writes):.2f} s)"
        )


def format_table(summary: dict) -> str:
    """Long because: three markdown tables, every column spelled out."""
    lines = [
        "| model | state | step | native | native+fsync | ours sync | ours async | ours async, audit sha256 "
        "| ours async, process writer | async/native | async/(native+fsync) | async sha256/native "
        "| sync/(native+fsync) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for size, e in summary.items():
        if size.startswith("_"):
            continue
        m = e["modes"]

        def cell(mode, m=m):
            s = m[mode]
            return f"{s['stall_sec']:.2f} s ({s['stall_min']:.2f}..{s['stall_max']:.2f})"

        def ratio(a, b, m=m):
            return f"{m[a]['stall_sec'] / m[b]['stall_sec']:.2f}" if m[b]["stall_sec"] > 0 else "n/a"

        lines.append(
            f"| {size} ({e['params_m']:.0f}M) | {e['state_gib']:.2f} GiB | {e['step_sec'] * 1000:.0f} ms "
            f"| {cell('native')} | {cell('native_fsync')} | {cell('ours_sync')} | {cell('ours_async')} "
            f"| {cell('ours_async_sha256')} | {cell('ours_async_process')} "
            f"| {ratio('ours_async', 'native')} | {ratio('ours_async', 'native_fsync')} "
            f"| {ratio('ours_async_sha256', 'native')} | {ratio('ours_sync', 'native_fsync')} |"
        )
    lines.append("")
    lines.append(
        "Split by save (median over repeats; the middle saves are the steady state of a long run; the first one "
        "also allocates the snapshot buffers; the last one includes the wait for its background write at the end):"
    )
    lines.append("")
    lines.append(
        "| model | mode | first save | each middle save | last save (with the end wait) | middle: async/native |"
    )
    lines.append("| --- | --- | --- | --- | --- | --- |")
    for size, e in summary.items():
        if size.startswith("_"):
            continue
        m = e["modes"]
        for mode in MODES[1:]:
            s = m[mode]
            ratio = ""
            if mode.startswith("ours_async") and m["native"]["middle_save_sec"] > 0:
                ratio = f"{s['middle_save_sec'] / m['native']['middle_save_sec']:.2f}"
            lines.append(
                f"| {size} | {mode} | {s['first_save_sec']:.2f} s | {s['middle_save_sec']:.2f} s "
                f"({s['middle_min']:.2f}..{s['middle_max']:.2f}) | {s['last_save_sec']:.2f} s | {ratio} |"
            )
    lines.append("")
    lines.append(
        "| model | async snapshot (blocking) | background write+commit | persist throughput "
        "| the same with the audit sha256 | read-back (part of the write) | disk write+fsync (best of page cache, O_DIRECT) "
        "| extra peak RSS (async) / state |"
    )
    lines.append("| --- | --- | --- | --- | --- | --- | --- | --- |")
    disk = summary.get("_disk_write_fsync_mb_per_sec", float("nan"))
    for size, e in summary.items():
        if size.startswith("_") or "async" not in e:
            continue
        a = e["async"]
        b = e.get("async_sha256")
        with_sha = (
            f"{b['write_sec']:.2f} s, {b['persist_mb_per_sec']:.0f} MB/s ({b['persist_mb_per_sec'] / disk:.0%})"
            if b
            else "n/a"
        )
        rss = e["modes"]["ours_async"]["extra_peak_rss_gib"] / e["state_gib"]
        lines.append(
            f"| {size} | {a['snapshot_sec']:.3f} s | {a['write_sec']:.2f} s | {a['persist_mb_per_sec']:.0f} MB/s "
            f"({a['persist_mb_per_sec'] / disk:.0%} of disk) | {with_sha} | {a.get('read_back_sec', float('nan')):.2f} s "
            f"| {disk:.0f} MB/s | {rss:.2f} |"
        )
    return "\n".join(lines)
