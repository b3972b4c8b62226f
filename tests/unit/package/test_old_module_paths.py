"""Old module paths of the flat layout keep working for one release: each import warns and gives the module (or,
for a module whose code was split, the very objects) that now owns the code."""

from __future__ import annotations

import importlib
import sys
import warnings

import pytest

from aegis_ckpt import _moved

SAME_MODULE = sorted(set(_moved.MOVED_MODULES) - set(_moved.MOVED_NAMES))

OLD_PUBLIC_NAMES = {
    "aegis_ckpt.asyncsave": "AsyncCheckpointWriter AsyncSaver ProcessCheckpointWriter RAM_CHECK_PERIOD_SEC SaveJob estimate_snapshot_bytes",
    "aegis_ckpt.audit": "AUDIT_NAME AuditLog AuditReadResult EVENTS MAX_STRING_CHARS read_audit",
    "aegis_ckpt.autostart": "AutostartOptions CRON_MARKER_PREFIX CommandResult DryRunOps FileSpec Host METHODS Plan RECORD_DIR SystemOps TASK_FOLDER apply_install apply_uninstall check_name cron_line default_method default_name detect_host find_project_dir launcher_path plan_install plan_uninstall read_record record_path startup_cmd startup_folder systemd_unit task_name task_xml unit_path",
    "aegis_ckpt.builders": "TOKENIZER_CACHE_DIR build_dataset build_model build_tokenizer count_parameters read_texts train_bpe_tokenizer",
    "aegis_ckpt.callback": "AegisCheckpointCallback HEARTBEAT_EVERY_SEC",
    "aegis_ckpt.cli": "build_parser cmd_install_autostart cmd_notify cmd_preflight cmd_resume_path cmd_run cmd_status cmd_train cmd_uninstall_autostart cmd_verify main",
    "aegis_ckpt.commit": "FileDigest HASH_NAME MANIFEST_FORMAT MANIFEST_NAME MANIFEST_VERSION Manifest READ_AHEAD_MIN_BYTES VerifyResult atomic_write_bytes atomic_write_json commit_checkpoint fsync_dir fsync_file hash_file hash_file_read_ahead is_committed list_checkpoint_files read_manifest verify_checkpoint",
    "aegis_ckpt.compat": "check_training_setup started_alone_by_accelerate_cpu_launcher",
    "aegis_ckpt.config": "DataConfig LoraConfig ModelConfig NotifyConfig PreflightConfig ResumeConfig SECTIONS TokenizerConfig TrainConfig apply_overrides load_config parse_config",
    "aegis_ckpt.directwrite": "ALIGNMENT AlignedBuffer CHUNK_BYTES DirectFile IN_PLACE_MIN_BYTES IN_PLACE_WRITE_BYTES can_stream_safetensors safetensors_header write_large_files write_safetensors write_torch",
    "aegis_ckpt.distributed": "AGREE_EVERY_SEC MAX_STRIDE PeerLostError StepAgreement StepFlags agree_any barrier is_distributed rank world_size",
    "aegis_ckpt.emergency": "EmergencyStops ExceptionSaver StepPhase TrainGuard find_trainer jit_sigterm_handler_installed",
    "aegis_ckpt.errors": "AegisError CommitError ConfigError PreflightError RunLockedError",
    "aegis_ckpt.exitcodes": "EXIT_ALREADY_FINISHED EXIT_BAD_INPUT EXIT_FAILURE EXIT_OK EXIT_SIGNAL_BASE exit_code_for_signal",
    "aegis_ckpt.hfsnapshot": "LargeFile OPTIMIZER_NAME PAGE_ALIGNED_MIN_BYTES PageArena SCALER_NAME SCHEDULER_NAME ShmRef SnapshotBuffers TRAINER_STATE_NAME TRAINING_ARGS_NAME TrainerSnapshot overridden_save_method rng_file_name take_snapshot unsupported_reason write_rng_file write_snapshot write_snapshot_files",
    "aegis_ckpt.inject": "HOOK_DIR INJECT_ENV INJECT_OPTIONS_ENV choose_resume injection_env install_import_hook patch_trainer",
    "aegis_ckpt.loop": "LoopCheckpointer",
    "aegis_ckpt.loopstate": "ADAPTER_WEIGHTS EXTRA_STATE_NAME LOOP_STATE_FORMAT LOOP_STATE_NAME MODEL_INDEX MODEL_WEIGHTS OPTIMIZER_NAME RNG_NAME RestoreError SCHEDULER_NAME capture_rng_state load_training_state read_loop_state restore_rng_state save_training_state",
    "aegis_ckpt.manager": "DEFAULT_SIGNALS EmergencyCheckpointManager EnhancedAutoCheckpointManager RollingCheckpointManager",
    "aegis_ckpt.notify": "BELLS DESKTOP_SOUNDS EVENTS NotifyResult SOUND_WAIT_SEC WINDOWS_SOUNDS build_payload mask_url notify open_tty play_sound post_webhook spawn_detached winsound_play",
    "aegis_ckpt.options": "AsyncOptions CheckpointOptions EmergencyOptions VERIFY_MODES WHEN_BUSY_MODES WRITER_KINDS options_from_mapping",
    "aegis_ckpt.plaincheck": "JIT_INCOMPLETE_MARKER TRAINER_STATE_NAME check_plain_checkpoint check_safetensors check_torch_zip",
    "aegis_ckpt.policy": "AdaptivePolicy IntervalChange IntervalPolicy SavePolicy make_policy",
    "aegis_ckpt.preflight": "ADAM_STATE_BYTES_PER_PARAM CheckResult GIB GpuInfo PreflightReport SMALL_FILES_BYTES SizeEstimate check_disk check_gpu check_output_dir disk_usage estimate_sizes format_bytes probe_gpus run_preflight",
    "aegis_ckpt.recorder": "RunRecorder",
    "aegis_ckpt.resume": "CandidateReport SCAN_LOCK_NAME ScanReport check_resume_world_size find_resume_checkpoint scan_checkpoints",
    "aegis_ckpt.rngstate": "capture_rng_state restore_rng_state",
    "aegis_ckpt.runstate": "CLEAN_EXIT_KINDS COMPLETED_NAME FINISHED FRESH HEARTBEAT_ENV LOCK_WAIT_SEC MAX_FAILURES_KEPT RESUME_CLEAN RESUME_CRASH RESUME_POWER_LOSS RESUME_UNRECORDED RUN_LOCK_NAME RUN_RECORD_FORMAT RUN_RECORD_NAME RunLease RunStart START_KINDS SupervisorHeartbeat classify_start completion_path current_boot_id ensure_not_locked heartbeat_path_from_env mark_completed read_completion read_run_record run_record_path same_boot session_is_alive write_heartbeat",
    "aegis_ckpt.signals": "CONSOLE_EVENT_NAMES CTRL_BREAK_EVENT CTRL_CLOSE_EVENT CTRL_C_EVENT CTRL_LOGOFF_EVENT CTRL_SHUTDOWN_EVENT DEFAULT_SIGNALS SignalWatcher signal_name",
    "aegis_ckpt.stats": "RECENT_KEPT STATS_NAME SaveRecord SaveStats",
    "aegis_ckpt.status": "check_checkpoints collect_status format_status resume_path",
    "aegis_ckpt.store": "AEGIS_DIR CHECKPOINT_PREFIX CheckpointEntry CheckpointStore PIN_META_KEY QUARANTINE_DIR QUARANTINE_RECORD STAGING_DIR STAGING_PREFIX STORE_MARKER TRASH_DIR checkpoint_dir_name parse_checkpoint_step",
    "aegis_ckpt.supervise": "Attempt DUPLICATE_SIGNAL_WINDOW_SEC ProcessControl STOP_EXIT_CODES SuperviseOptions Supervisor WindowsProcessControl default_process_control describe_exit normalize_exit_code run_supervised",
    "aegis_ckpt.train": "FINAL_MODEL_DIR TrainResult run_training",
    "aegis_ckpt.writerproc": "SHM_PREFIX WriteJob WriterProcess WriterProcessError child_main decode_job encode_job new_shared_memory_dir remove_stale_shared_memory run_job shared_memory_free_bytes shared_memory_root",
}
"""Every public top-level name of each module of the flat layout (0.1), as it was."""

REMOVED = {("aegis_ckpt.emergency", "EmergencyStops")}
"""Names that could not stay: the emergency mixin became a composed object (``trainer.emergency.EmergencyStop``)."""

LAZY_PACKAGE_NAMES = [
    ("aegis_ckpt.runstate", "RunLease", "aegis_ckpt.runstate.lease"),
    ("aegis_ckpt.runstate", "classify_start", "aegis_ckpt.runstate.start"),
    ("aegis_ckpt.runstate", "current_boot_id", "aegis_ckpt.system.boot"),
    ("aegis_ckpt.train", "run_training", "aegis_ckpt.train.runner"),
    ("aegis_ckpt.train", "FINAL_MODEL_DIR", "aegis_ckpt.storage.layout"),
    ("aegis_ckpt.loop", "LoopCheckpointer", "aegis_ckpt.loop.engine"),
    ("aegis_ckpt.cli", "cmd_train", "aegis_ckpt.cli.app"),
]


def fresh_import(name: str, monkeypatch):
    """Import ``name`` as a script would the first time (an earlier test may have imported it already)."""
    monkeypatch.delitem(sys.modules, name, raising=False)
    return importlib.import_module(name)


@pytest.mark.parametrize("old", SAME_MODULE)
def test_old_path_is_the_new_module_with_a_warning(old, monkeypatch):
    new = _moved.MOVED_MODULES[old]
    with pytest.warns(DeprecationWarning, match=f"{old} moved to {new}"):
        module = fresh_import(old, monkeypatch)
    assert module is importlib.import_module(new)


@pytest.mark.parametrize("old", sorted(_moved.MOVED_NAMES))
def test_split_module_hands_out_each_name_from_its_new_home(old, monkeypatch):
    with pytest.warns(DeprecationWarning, match=f"{old} moved to"):
        module = fresh_import(old, monkeypatch)
    for name, where in _moved.MOVED_NAMES[old].items():
        home, _, new_name = where.partition(":")
        assert getattr(module, name) is getattr(importlib.import_module(home), new_name or name), name
    primary = importlib.import_module(_moved.MOVED_MODULES[old])
    stays = sorted(set(OLD_PUBLIC_NAMES.get(old, "").split()) - set(_moved.MOVED_NAMES[old]))
    for name in stays:
        assert getattr(module, name) is getattr(primary, name), name


@pytest.mark.parametrize(("package", "name", "home"), LAZY_PACKAGE_NAMES)
def test_old_package_level_names_warn_and_are_the_same_objects(package, name, home):
    module = importlib.import_module(package)
    with pytest.warns(DeprecationWarning, match=f"{package}.{name} moved to {home}.{name}"):
        value = getattr(module, name)
    assert value is getattr(importlib.import_module(home), name)


def test_every_public_name_of_the_flat_layout_is_still_there():
    missing = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        for old, names in OLD_PUBLIC_NAMES.items():
            module = importlib.import_module(old)
            missing += [
                f"{old}.{n}" for n in names.split() if (old, n) not in REMOVED and not hasattr(module, n)
            ]
    assert missing == []
