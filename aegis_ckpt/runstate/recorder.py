"""``RunRecorder``: one object that the Trainer callback and the custom-loop managers call at each event of a run.

It writes what the next process and ``aegis-ckpt status`` need, each into the file that owns it: the run lease
(``runstate.RunLease``, ``.aegis/run.json``), the audit log (``audit.AuditLog``, ``.aegis/audit.jsonl``) and the
save statistics (``stats.SaveStats``, ``.aegis/stats.json``), and it feeds the failure history and the measured
save cost to an ``AdaptivePolicy``. Under several processes only the main one records (``enabled=False``
elsewhere turns every method into a no-op).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from ..options import CheckpointOptions
from ..policy import AdaptivePolicy, SavePolicy
from ..storage.audit import AuditLog, audit_digests
from ..storage.commit import Manifest
from ..storage.layout import AEGIS_DIR
from ..system.platform import signal_name
from .lease import RunLease
from .start import FRESH, RESUME_CRASH, RESUME_POWER_LOSS, RunStart
from .stats import SaveRecord, SaveStats

logger = logging.getLogger(__name__)


class RunRecorder:
    """Records one process's session on an output directory (see module docstring)."""

    def __init__(
        self,
        output_dir: str | os.PathLike,
        options: CheckpointOptions,
        *,
        policy: SavePolicy | None = None,
        enabled: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.output_dir = Path(output_dir)
        self.enabled = enabled
        self.policy = policy
        self.sha256 = options.audit_uses_sha256
        aegis_dir = self.output_dir / AEGIS_DIR
        self.lease = RunLease(self.output_dir, heartbeat_every_sec=options.heartbeat_every_sec, clock=clock)
        self.audit = AuditLog.in_dir(aegis_dir)
        self.stats = SaveStats.load(aegis_dir) if enabled else SaveStats(aegis_dir / "unused")
        self.start: RunStart | None = None

    # ---- session -------------------------------------------------------------------------------------------
    def begin(self, *, step: int, has_checkpoints: bool) -> RunStart | None:
        """Take the run lease (``RunLockedError`` if another live process holds it), say how the previous
        session ended, and prime the adaptive policy."""
        if not self.enabled:
            return None
        start = self.lease.acquire(step=step, has_checkpoints=has_checkpoints)
        self.start = start
        level = logging.WARNING if start.is_failure else logging.INFO
        logger.log(level, "Run state: %s", start.message)
        fields = {
            k: v for k, v in start.to_json_dict().items() if k not in ("kind", "message") and v is not None
        }
        self.audit.append("start", step=step, reason=start.kind, **fields)
        if start.kind == RESUME_POWER_LOSS:
            self.audit.append("power_loss", step=step, reason=start.message, **fields)
        elif start.kind == RESUME_CRASH:
            self.audit.append("crash_detected", step=step, reason=start.message, **fields)
        self._prime_policy()
        return start

    def _prime_policy(self) -> None:
        policy = self.policy
        if not isinstance(policy, AdaptivePolicy):
            return
        user_hook = policy.on_change

        def on_change(old: float, new: float, reason: str) -> None:
            self.audit.append("interval", reason=reason, old_interval_sec=old, new_interval_sec=new)
            if user_hook is not None:
                user_hook(old, new, reason)

        policy.on_change = on_change
        cost = self.stats.typical_cost_sec()
        if cost is not None:
            policy.seed_cost(cost)
        policy.set_failure_history(failures=self.lease.failures, running_sec=self.lease.running_sec)

    @property
    def is_fresh(self) -> bool:
        return self.start is not None and self.start.kind == FRESH

    def heartbeat(self, step: int) -> None:
        if self.enabled:
            self.lease.heartbeat(step)

    def end(self, kind: str, *, step: int | None, detail: str = "") -> None:
        """Write the exit record and release the lease (``kind`` as in ``RunLease.release``)."""
        if not self.enabled or not self.lease.held:
            return
        self.audit.append("exit", step=step, reason=kind, **({"detail": detail} if detail else {}))
        self.lease.release(kind, step=step, detail=detail)

    # ---- events --------------------------------------------------------------------------------------------
    def resumed(self, *, step: int, checkpoint: str | os.PathLike, verify_sec: float | None = None) -> None:
        if not self.enabled:
            return
        self.audit.append(
            "resume",
            step=step,
            reason="restored from the newest intact checkpoint",
            path=Path(checkpoint).name,
            **({"verify_sec": round(verify_sec, 3)} if verify_sec is not None else {}),
        )
        self.lease.heartbeat(step, force=True)

    def committed(
        self,
        folder: str | os.PathLike,
        manifest: Manifest,
        *,
        reason: str,
        write_sec: float,
        commit_sec: float,
        duration_sec: float | None = None,
        tag: str | None = None,
    ) -> None:
        """A checkpoint committed: audit it (with the digests of its files), update statistics and the lease."""
        if not self.enabled:
            return
        name = Path(folder).name
        duration = duration_sec if duration_sec is not None else write_sec + commit_sec
        extra = {"tag": tag} if tag else {}
        self.audit.append(
            "save",
            step=manifest.step,
            reason=reason,
            path=name,
            write_sec=round(write_sec, 4),
            files=len(manifest.files),
            bytes=manifest.total_bytes,
            **extra,
        )
        digests = audit_digests(manifest)
        self.audit.append(
            "commit",
            step=manifest.step,
            reason=reason,
            path=name,
            commit_sec=round(commit_sec, 4),
            duration_sec=round(duration, 4),
            bytes=manifest.total_bytes,
            **digests,
            **extra,
        )
        record = SaveRecord(
            step=manifest.step,
            finished_unix=time.time(),
            duration_sec=duration,
            write_sec=write_sec,
            commit_sec=commit_sec,
            size_bytes=manifest.total_bytes,
            reason=reason,
        )
        self.stats.record(record, interval_sec=self.policy.interval_sec if self.policy is not None else None)
        self.lease.record_commit(manifest.step)

    def save_failed(self, *, step: int, reason: str, error: BaseException) -> None:
        if self.enabled:
            self.audit.append("save_failed", step=step, reason=reason, error=type(error).__name__)

    def signal(self, signum: int, *, step: int) -> None:
        if self.enabled:
            self.audit.append("signal", step=step, reason=signal_name(signum), signum=int(signum))

    def exception(self, error: BaseException, *, step: int, saved: bool) -> None:
        # The type only: an exception message can quote data.
        if self.enabled:
            self.audit.append("exception", step=step, reason=type(error).__name__, checkpoint_saved=saved)

    def finished(self, *, step: int, checkpoint: str | os.PathLike | None) -> None:
        if self.enabled:
            self.audit.append(
                "finish",
                step=step,
                reason="training complete",
                path=Path(checkpoint).name if checkpoint else None,
            )
