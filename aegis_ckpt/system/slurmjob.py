"""What the Slurm environment says about this process: the job id and how often Slurm has requeued it.

Only environment variables are read here (``SLURM_JOB_ID``, ``SLURM_ARRAY_JOB_ID``/``SLURM_ARRAY_TASK_ID``,
``SLURM_RESTART_COUNT``), so the run record can note them without asking the scheduler anything. Asking Slurm
(``scontrol``) is the job of ``aegis_ckpt.cluster.slurm``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class SlurmJob:
    """The Slurm job this process runs in."""

    job_id: str
    """The id ``scontrol`` accepts: ``<array job>_<task>`` for an array task, else ``SLURM_JOB_ID``."""
    restart_count: int
    """``SLURM_RESTART_COUNT``: 0 on the first run, 1 after the first requeue, and so on."""

    def to_json_dict(self) -> dict:
        return {"job_id": self.job_id, "restart_count": self.restart_count}


def current_slurm_job(environ: Mapping[str, str] | None = None) -> SlurmJob | None:
    """The Slurm job of this process, or None outside Slurm."""
    env = os.environ if environ is None else environ
    job_id = env.get("SLURM_JOB_ID", "").strip()
    if not job_id:
        return None
    array_job, array_task = env.get("SLURM_ARRAY_JOB_ID", ""), env.get("SLURM_ARRAY_TASK_ID", "")
    if array_job and array_task:
        job_id = f"{array_job}_{array_task}"
    try:
        restarts = int(env.get("SLURM_RESTART_COUNT", "0") or 0)
    except ValueError:
        restarts = 0
    return SlurmJob(job_id=job_id, restart_count=restarts)
