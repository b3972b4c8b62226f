"""Read-only reports for ``aegis-ckpt status``, ``verify`` and ``resume-path``.

Nothing here moves, deletes or locks anything: a report may run beside a live training process. Folders that
change while they are read (a prune, a publish) show up as problems of that report, not as errors.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..remote.mirror import read_remote_status
from ..runstate.completion import read_completion
from ..runstate.lease import read_run_record, session_is_alive
from ..runstate.stats import SaveStats
from ..storage.audit import AUDIT_NAME, read_audit
from ..storage.commit import verify_checkpoint
from ..storage.layout import AEGIS_DIR
from ..storage.scan import scan_checkpoints
from ..storage.space import format_bytes
from ..storage.store import PIN_META_KEY, CheckpointStore


def _require_dir(output_dir: str | os.PathLike) -> Path:
    path = Path(output_dir)
    if not path.is_dir():
        raise ConfigError(f"{path} is not a directory (pass the output_dir of a run)")
    return path


def _checkpoint_row(store: CheckpointStore, entry, *, full: bool, now: float) -> dict[str, Any]:
    row: dict[str, Any] = {"name": entry.path.name, "step": entry.step, "committed": entry.is_committed}
    if not row["committed"]:
        row.update(
            verified=False, problems=["uncommitted: no manifest"], size_bytes=store.size_bytes(entry.path)
        )
        try:
            row["age_sec"] = now - entry.path.stat().st_mtime
        except OSError:
            row["age_sec"] = None
        return row
    result = verify_checkpoint(entry.path, full=full)
    problems = list(result.problems)
    manifest = result.manifest
    if manifest is not None and manifest.step != entry.step:
        problems.append(f"manifest is for step {manifest.step}, folder name says {entry.step}")
    row.update(verified=not problems, verify_mode=result.mode, problems=problems)
    if manifest is not None:
        row.update(
            size_bytes=manifest.total_bytes,
            age_sec=now - manifest.committed_unix,
            committed_unix=manifest.committed_unix,
            reason=manifest.reason,
            tag=manifest.meta.get("tag"),
            pinned=bool(manifest.meta.get(PIN_META_KEY)),
        )
    return row


def check_checkpoints(output_dir: str | os.PathLike, *, full: bool = False) -> list[dict[str, Any]]:
    """Every ``checkpoint-<step>`` folder, newest first, checked against its manifest (sizes, or hashes with
    ``full``)."""
    store = CheckpointStore(_require_dir(output_dir))
    now = time.time()
    return [_checkpoint_row(store, e, full=full, now=now) for e in reversed(store.checkpoints())]


def _run_summary(out: Path, now: float) -> dict[str, Any]:
    record = read_run_record(out) or {}
    session = record.get("session") or {}
    history = record.get("history") or {}
    completion = read_completion(out)
    alive = bool(session) and session_is_alive(session)
    if completion is not None and not alive:
        state = "finished"
    elif alive:
        state = "running"
    elif not session:
        state = "unknown (no run record)"
    elif session.get("state") == "exited":
        kind = (session.get("exit") or {}).get("kind")
        state = "stopped on an exception" if kind == "exception" else f"stopped cleanly ({kind})"
    else:
        state = "not running, no clean exit (crashed or lost power; the next start will say which)"
    running_sec = float(history.get("running_sec") or 0.0)
    if session.get("started_unix"):
        end = now if alive else float(session.get("heartbeat_unix") or session["started_unix"])
        running_sec += max(0.0, end - float(session["started_unix"]))
    failures = list(history.get("failures") or [])
    power_losses = [f for f in failures if f.get("kind") == "power_loss"]
    return {
        "state": state,
        "completion": completion,
        "session": session or None,
        "last_start": history.get("last_start"),
        "sessions": history.get("sessions"),
        "running_sec": running_sec,
        "failures": len(failures),
        "crashes": len(failures) - len(power_losses),
        "power_losses": len(power_losses),
        "last_power_loss": power_losses[-1] if power_losses else None,
        "slurm_sessions": list(history.get("slurm_sessions") or []),
    }


def collect_status(output_dir: str | os.PathLike, *, full: bool = False) -> dict[str, Any]:
    """Everything ``aegis-ckpt status`` shows, as one JSON-ready dict."""
    out = _require_dir(output_dir)
    now = time.time()
    checkpoints = check_checkpoints(out, full=full)
    resume = next((c["name"] for c in checkpoints if c["committed"] and c["verified"]), None)
    stats = SaveStats.load(out / AEGIS_DIR).summary()
    run = _run_summary(out, now)
    if stats.get("total_save_sec") and run["running_sec"]:
        stats["share_of_wall_time"] = round(stats["total_save_sec"] / run["running_sec"], 4)
    audit = read_audit(out / AEGIS_DIR / AUDIT_NAME)
    return {
        "output_dir": str(out),
        "now_unix": now,
        "run": run,
        "checkpoints": checkpoints,
        "resume_from": resume,
        "quarantined": len(CheckpointStore(out).quarantined()),
        "save_stats": stats,
        "audit": {"events": len(audit.events), "problems": audit.problems},
        "verify_mode": "full" if full else "quick",
        "remote": read_remote_status(out),
    }


# ---- human-readable ------------------------------------------------------------------------------------------
def _age(sec: float | None) -> str:
    if sec is None:
        return "?"
    sec = max(0.0, sec)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if sec >= 2 * size:
            return f"{sec / size:.1f} {unit}"
    return f"{sec:.0f} s"


def _size(n: int | None) -> str:
    return "?" if n is None else format_bytes(n)


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "?"


def _slurm_sessions(sessions: list[dict[str, Any]]) -> str:
    """``job 41 (restarts 0, 1), job 57 (restart 0)``: the Slurm job of each session and its restart count."""
    restarts: dict[str, list[str]] = {}
    for s in sessions:
        restarts.setdefault(str(s.get("job_id")), []).append(str(s.get("restart_count")))
    return ", ".join(
        f"job {job} (restart{'s' if len(counts) > 1 else ''} {', '.join(counts)})"
        for job, counts in restarts.items()
    )


def format_status(report: dict[str, Any]) -> str:
    """The report of ``collect_status`` as the text ``aegis-ckpt status`` prints: the run, the checkpoint table,
    saves and the audit log."""
    lines = [f"aegis-ckpt status: {report['output_dir']}"]
    lines += _run_lines(report["run"], report["now_unix"])
    lines.append(f"Resume from:  {report['resume_from'] or '(nothing: a fresh start)'}")
    lines.append("")
    lines += _checkpoint_table(report["checkpoints"], report["verify_mode"])
    lines.append("")
    if report["quarantined"]:
        lines.append(f"Quarantined:  {report['quarantined']} folder(s) in .aegis/quarantine/")
    lines += _save_lines(report["save_stats"])
    lines += _remote_lines(report.get("remote"), report["now_unix"])
    audit = report["audit"]
    lines.append(
        f"Audit log:    {audit['events']} events in .aegis/{AUDIT_NAME}"
        + (f" ({len(audit['problems'])} unreadable line(s))" if audit["problems"] else "")
    )
    return "\n".join(lines)


def _run_lines(run: dict[str, Any], now: float) -> list[str]:
    session = run.get("session") or {}
    state = run["state"]
    if state == "running":
        state += (
            f": pid {session.get('pid')} on {session.get('host')}, step {session.get('step')}, "
            f"heartbeat {_age(now - float(session.get('heartbeat_unix') or now))} ago"
        )
    elif state == "finished" and run.get("completion"):
        state += f" at step {run['completion'].get('step')} ({run['completion'].get('finished_at', '?')})"
    lines = [f"Run:          {state}"]
    last = run.get("last_start")
    if last:
        lines.append(f"Last start:   {_when(last.get('unix'))}: {last.get('message')}")
    lines.append(
        f"History:      {run.get('sessions') or 0} session(s), {_age(run['running_sec'])} of training, "
        f"{run['crashes']} crash(es), {run['power_losses']} power loss(es)"
    )
    loss = run.get("last_power_loss")
    if loss:
        lines.append(
            f"Power loss:   detected {_when(loss.get('detected_unix'))}; about {_age(loss.get('lost_sec'))} "
            f"({loss.get('lost_steps')} steps) lost, down {_age(loss.get('downtime_sec'))}"
        )
    if run.get("slurm_sessions"):
        lines.append(f"Slurm:        {_slurm_sessions(run['slurm_sessions'])}")
    return lines


def _checkpoint_table(checkpoints: list[dict[str, Any]], verify_mode: str) -> list[str]:
    header = ("STEP", "CHECKPOINT", "AGE", "SIZE", "COMMITTED", f"VERIFIED ({verify_mode})", "REASON", "TAG")
    rows = [header]
    for c in checkpoints:
        verified = "ok" if c["verified"] else ("; ".join(c.get("problems") or []) or "no")
        tag = (c.get("tag") or "") + (" (kept)" if c.get("pinned") else "")
        rows.append(
            (
                str(c["step"]),
                c["name"],
                _age(c.get("age_sec")),
                _size(c.get("size_bytes")),
                "yes" if c["committed"] else "NO",
                verified,
                c.get("reason") or "",
                tag,
            )
        )
    if len(rows) == 1:
        return ["(no checkpoint folders)"]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header) - 1)]
    return [
        ("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=False)) + "  " + r[-1]).rstrip() for r in rows
    ]


def _save_lines(s: dict[str, Any]) -> list[str]:
    if not s.get("saves"):
        return ["Saves:        none recorded"]
    rate = s.get("median_throughput_bytes_per_sec")
    share = s.get("share_of_wall_time")
    lines = [
        f"Saves:        {s['saves']}, median {s['median_save_sec']:.2f} s (max {s['max_save_sec']:.2f} s), "
        f"{_size(s.get('last_size_bytes'))} each, {_size(rate) + '/s' if rate else '?'}"
        + (f", {100 * share:.1f} % of training time" if share is not None else "")
    ]
    if s.get("interval_sec"):
        lines.append(f"Interval:     {s['interval_sec']:.3g} s")
    return lines


def _remote_lines(remote: dict[str, Any] | None, now: float) -> list[str]:
    """The mirror's last recorded state: newest remote step, uploads pending, last error."""
    if not remote:
        return []
    newest = remote.get("newest_remote_step")
    pending = remote.get("pending_steps") or []
    lines = [
        f"Remote:       {remote.get('url')}: newest remote step "
        f"{newest if newest is not None else '(none yet)'}, {len(pending)} upload(s) pending"
        + (f" (step {', '.join(map(str, pending))})" if pending else "")
        + f", recorded {_age(now - remote['updated_unix']) if remote.get('updated_unix') else '?'} ago"
    ]
    if remote.get("last_error"):
        lines.append(
            f"Remote error: {remote['last_error']} ({_age(now - (remote.get('last_error_unix') or now))} ago)"
        )
    return lines


def resume_path(output_dir: str | os.PathLike, *, verify: str = "full") -> str | None:
    """The folder a resume would use, without moving anything aside (read-only scan)."""
    return scan_checkpoints(_require_dir(output_dir), verify=verify, quarantine=False).chosen
