"""What a run leaves behind besides checkpoints: the run lease and its record, the completion marker, the
supervisor heartbeat, the recorder of saves and failures, and save statistics.

``aegis_ckpt.runstate`` was one module before 0.2; its names stay importable from here for one release.
"""

from .._moved import lazy_exports

__getattr__ = lazy_exports(
    __name__,
    {
        name: "lease"
        for name in (
            "COMPLETED_NAME CLEAN_EXIT_KINDS FINISHED FRESH HEARTBEAT_ENV LOCK_WAIT_SEC MAX_FAILURES_KEPT "
            "RESUME_CLEAN RESUME_CRASH RESUME_POWER_LOSS RESUME_UNRECORDED RUN_LOCK_NAME RUN_RECORD_FORMAT "
            "RUN_RECORD_NAME START_KINDS RunLease RunStart SupervisorHeartbeat classify_start completion_path "
            "current_boot_id ensure_not_locked heartbeat_path_from_env mark_completed read_completion "
            "read_run_record run_record_path same_boot session_is_alive write_heartbeat"
        ).split()
    },
)
