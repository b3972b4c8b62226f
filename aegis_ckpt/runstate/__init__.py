"""What a run leaves behind besides checkpoints: the run lease and its record (``lease``), how the previous
process ended (``start``), the completion marker (``completion``), the supervisor heartbeat (``heartbeat``), the
recorder of saves and failures (``recorder``), save statistics (``stats``) and the bookkeeping every save ends
in (``saves``).

``aegis_ckpt.runstate`` was one module before 0.2; its names stay importable from here for one release.
"""

from .._moved import lazy_exports

_HOMES = {
    "lease": "LOCK_WAIT_SEC MAX_FAILURES_KEPT RUN_LOCK_NAME RUN_RECORD_FORMAT RUN_RECORD_NAME RunLease "
    "ensure_not_locked read_run_record run_record_path session_is_alive",
    "start": "CLEAN_EXIT_KINDS FINISHED FRESH RESUME_CLEAN RESUME_CRASH RESUME_POWER_LOSS RESUME_UNRECORDED "
    "START_KINDS RunStart classify_start",
    "completion": "COMPLETED_NAME completion_path mark_completed read_completion",
    "heartbeat": "HEARTBEAT_ENV SupervisorHeartbeat heartbeat_path_from_env write_heartbeat",
    "..system.boot": "current_boot_id same_boot",
}

__getattr__ = lazy_exports(__name__, {name: home for home, names in _HOMES.items() for name in names.split()})
