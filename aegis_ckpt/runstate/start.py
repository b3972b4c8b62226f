"""How the previous process on an output directory ended, as seen by the one starting now: a fresh start, a
resume after a clean stop, after a crash, after a power loss or reboot, or an already finished run.

``classify_start`` is pure (every input is passed in), so each case is tested without a real crash.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from ..system.boot import same_boot

FRESH = "fresh"
RESUME_CLEAN = "resume_after_clean_stop"
RESUME_CRASH = "resume_after_crash"
RESUME_POWER_LOSS = "resume_after_power_loss"
RESUME_UNRECORDED = "resume_without_run_record"
FINISHED = "already_finished"
START_KINDS = (FRESH, RESUME_CLEAN, RESUME_CRASH, RESUME_POWER_LOSS, RESUME_UNRECORDED, FINISHED)

CLEAN_EXIT_KINDS = ("closed", "finished", "signal", "trainer_end", "exited_without_close")
"""Exit kinds recorded by a process that ended on purpose. ``exception`` is recorded too, but counts as a crash."""


@dataclass
class RunStart:
    """How the previous process on this output directory ended, as seen by the one starting now."""

    kind: str
    message: str
    previous: dict[str, Any] | None = None
    lost_sec: float | None = None
    """Training time after the last committed checkpoint that the failure threw away (from the last heartbeat;
    the time between that heartbeat and the failure itself is unknown and comes on top)."""
    lost_steps: int | None = None
    downtime_sec: float | None = None
    """From the previous process's last sign of life until now."""

    @property
    def is_failure(self) -> bool:
        return self.kind in (RESUME_CRASH, RESUME_POWER_LOSS)

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "message": self.message,
            "lost_sec": self.lost_sec,
            "lost_steps": self.lost_steps,
            "downtime_sec": self.downtime_sec,
        }


def fmt_duration(sec: float | None) -> str:
    if sec is None:
        return "unknown"
    sec = max(0.0, sec)
    if sec < 120:
        return f"{sec:.0f} s"
    if sec < 7200:
        return f"{sec / 60:.1f} min"
    return f"{sec / 3600:.1f} h"


def fmt_local_time(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "?"


def classify_start(
    previous: dict[str, Any] | None,
    *,
    completion: dict[str, Any] | None,
    boot_id: str,
    has_checkpoints: bool,
    now_unix: float,
    pid: int | None = None,
) -> RunStart:
    """Decide how the previous session ended (pure: every input is passed in).

    Long because: it is one decision table whose order of precedence (finished, no record, clean exit, same
    process, other boot, crash) must read top to bottom; the arithmetic of what was lost is in ``_losses`` and
    ``_lost_text``, and each branch only builds its ``RunStart``.
    """
    if completion is not None:
        return RunStart(
            FINISHED,
            f"this run already finished at step {completion.get('step')} ({completion.get('finished_at', '?')}); "
            "nothing to do (delete .aegis/completed.json to train again)",
            previous,
        )
    if previous is None:
        if has_checkpoints:
            return RunStart(
                RESUME_UNRECORDED, "checkpoints found but no run record (written by an older version?)"
            )
        return RunStart(FRESH, "fresh start: no previous run in this directory")
    last_alive, downtime, lost_sec, lost_steps = _losses(previous, now_unix)
    exit_record = previous.get("exit")
    where = f"pid {previous.get('pid')} on {previous.get('host')}"
    if previous.get("state") == "exited" and exit_record:
        kind = exit_record.get("kind")
        if kind == "exception":
            return RunStart(
                RESUME_CRASH,
                f"the previous process ({where}) stopped on an unhandled exception "
                f"({exit_record.get('detail') or 'unknown'}) at step {exit_record.get('step')}",
                previous,
                lost_sec,
                lost_steps,
                downtime,
            )
        return RunStart(
            RESUME_CLEAN,
            f"resuming after a clean stop ({kind}) at step {exit_record.get('step')}, {fmt_local_time(exit_record.get('unix'))}",
            previous,
            0.0,
            0,
            downtime,
        )
    if pid is not None and previous.get("pid") == pid and same_boot(previous.get("boot_id"), boot_id):
        return RunStart(
            RESUME_CLEAN, "a previous session of this same process did not end; continuing", previous, 0.0, 0
        )
    lost = _lost_text(previous, lost_sec, lost_steps)
    if not same_boot(previous.get("boot_id"), boot_id):
        return RunStart(
            RESUME_POWER_LOSS,
            f"POWER LOSS OR REBOOT detected: the previous process ({where}) was still running when the machine went "
            f"down (last heartbeat {fmt_local_time(last_alive)}, step {previous.get('step')}); {lost}; down for "
            f"{fmt_duration(downtime)}",
            previous,
            lost_sec,
            lost_steps,
            downtime,
        )
    return RunStart(
        RESUME_CRASH,
        f"CRASH detected: the previous process ({where}) ended without a clean exit record (killed, out of memory "
        f"or a hard crash; last heartbeat {fmt_local_time(last_alive)}, step {previous.get('step')}); {lost}",
        previous,
        lost_sec,
        lost_steps,
        downtime,
    )


def _commit_step(previous: dict[str, Any]):
    """The step of the session's last commit; without one, the step it began from."""
    commit_step = previous.get("last_commit_step")
    return previous.get("start_step") if commit_step is None else commit_step


def _losses(
    previous: dict[str, Any], now_unix: float
) -> tuple[float, float | None, float | None, int | None]:
    """From a session's record: when it was last alive, how long ago, and the training time and steps done after
    its last commit (what a crash or power loss threw away)."""
    last_alive = max(
        float(previous.get("heartbeat_unix") or 0), float((previous.get("exit") or {}).get("unix") or 0)
    )
    downtime = now_unix - last_alive if last_alive else None
    safe_since = max(float(previous.get("last_commit_unix") or 0), float(previous.get("started_unix") or 0))
    lost_sec = max(0.0, last_alive - safe_since) if last_alive and safe_since else None
    commit_step = _commit_step(previous)
    lost_steps = (
        max(0, int(previous["step"]) - int(commit_step))
        if previous.get("step") is not None and commit_step is not None
        else None
    )
    return last_alive, downtime, lost_sec, lost_steps


def _lost_text(previous: dict[str, Any], lost_sec: float | None, lost_steps: int | None) -> str:
    """What was lost, as a range when the heartbeat period is known (the process may have run one more period)."""
    beat_every = float(previous.get("heartbeat_every_sec") or 0)
    span = (
        f"{fmt_duration(lost_sec)} to {fmt_duration(lost_sec + beat_every)}"
        if lost_sec is not None and beat_every
        else f"about {fmt_duration(lost_sec)}"
    )
    return (
        f"{span} of training (at least {lost_steps if lost_steps is not None else '?'} steps) after the last "
        f"committed checkpoint (step {_commit_step(previous)}) was lost"
    )
