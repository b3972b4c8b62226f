"""``AegisCheckpointCallback``: the TrainerCallback glue.

It decides at each optimizer step end whether a save is due (``policy``), lets the Trainer write the standard
``checkpoint-<step>`` folder (``control.should_save = True``), commits that folder in ``on_save``
(``commit``) and applies retention afterwards (``store``). It commits every save the Trainer makes, whatever
``save_strategy`` the user chose, and takes over ``save_total_limit`` because the Trainer's own rotation deletes
by mtime before anything could be committed.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from transformers import TrainerCallback

from . import distributed
from .commit import commit_checkpoint, is_committed
from .errors import CommitError, RunLockedError
from .options import CheckpointOptions
from .policy import SavePolicy, make_policy
from .recorder import RunRecorder
from .runstate import heartbeat_path_from_env, mark_completed, write_heartbeat
from .store import CheckpointStore

logger = logging.getLogger(__name__)

_PACKAGE_LOGGER = "aegis_ckpt"
HEARTBEAT_EVERY_SEC = 5.0


class AegisCheckpointCallback(TrainerCallback):
    """Time-based rolling checkpoints with a crash-safe commit, for ``transformers.Trainer``.

    Args:
        save_interval_sec (`float`, *optional*, defaults to 180.0):
            Wall-clock seconds between rolling saves, checked at every optimizer step end.
        max_keep (`int`, *optional*):
            Committed checkpoints to keep. Defaults to the Trainer's ``save_total_limit`` when that is set,
            else 5. Older checkpoints are deleted only after a newer one is committed.
        save_on_train_end (`bool`, *optional*, defaults to `True`):
            Save and commit the final step, so a finished run always ends on a committed checkpoint.
        keep_milestone_every_sec (`float`, *optional*):
            Also keep the first checkpoint of every window of this many seconds (e.g. 3600: one per hour).
        keep_best (`bool`, *optional*, defaults to `True`):
            Never prune the Trainer's ``best_model_checkpoint``.
        options (`CheckpointOptions`, *optional*):
            All of the above as one object; when given, the keyword arguments above must be left unset.
        write_completion_marker (`bool`, *optional*, defaults to `True`):
            Record ``.aegis/completed.json`` when training reaches its last step with a committed checkpoint.
            ``aegis-ckpt train`` turns this off and records completion itself after exporting the final model.
        clock (`Callable[[], float]`, *optional*, defaults to `time.monotonic`):
            Time source of the save policy; tests inject a fake one.

    Example:

    ```python
    trainer = Trainer(model=model, args=args, train_dataset=ds,
                      callbacks=[AegisCheckpointCallback(save_interval_sec=180, max_keep=5)])
    trainer.train(resume_from_checkpoint=find_resume_checkpoint(args.output_dir))
    ```
    """

    def __init__(
        self,
        save_interval_sec: float | None = None,
        max_keep: int | None = None,
        *,
        save_on_train_end: bool | None = None,
        keep_milestone_every_sec: float | None = None,
        keep_best: bool | None = None,
        options: CheckpointOptions | None = None,
        policy: SavePolicy | None = None,
        write_completion_marker: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ):
        flat = {
            "save_interval_sec": save_interval_sec,
            "max_keep": max_keep,
            "save_on_train_end": save_on_train_end,
            "keep_milestone_every_sec": keep_milestone_every_sec,
            "keep_best": keep_best,
        }
        given = {k: v for k, v in flat.items() if v is not None}
        if options is not None and given:
            raise TypeError(f"pass either options= or keyword options, not both (got {sorted(given)})")
        self._max_keep_explicit = options is not None or max_keep is not None
        self.options = options if options is not None else CheckpointOptions(**given)
        self.policy: SavePolicy = policy if policy is not None else make_policy(self.options)
        self.clock = clock
        self.write_completion_marker = write_completion_marker
        self.store: CheckpointStore | None = None
        self.last_saved_step: int | None = None
        self.last_commit_path: Path | None = None
        self._save_requested_at: float | None = None
        self._save_reason = ""
        self._rotation_checked = False
        self._heartbeat_file = heartbeat_path_from_env()
        self._last_heartbeat: float | None = None
        self._recorder: RunRecorder | None = (
            None  # run lease, audit log, save statistics (runstate/audit/stats)
        )

    def _beat(self, step: int, phase: str, *, force: bool = False) -> None:
        """Tell a supervising ``aegis-ckpt run`` that training makes progress (no-op without one)."""
        if self._heartbeat_file is None:
            return
        now = self.clock()
        if (
            not force
            and self._last_heartbeat is not None
            and now - self._last_heartbeat < HEARTBEAT_EVERY_SEC
        ):
            return
        self._last_heartbeat = now
        try:
            write_heartbeat(self._heartbeat_file, step=step, phase=phase)
        except OSError as e:
            logger.debug("heartbeat not written: %s", e)

    # ---- setup ---------------------------------------------------------------------------------------------
    def _take_over_rotation(self, args) -> None:
        """Switch off the Trainer's mtime rotation; our retention runs after each commit instead."""
        if self._rotation_checked:
            return
        self._rotation_checked = True
        limit = getattr(args, "save_total_limit", None)
        if not limit:
            return
        if not self._max_keep_explicit:
            self.options = CheckpointOptions(**{**self.options.__dict__, "max_keep": int(limit)})
        logger.warning(
            "save_total_limit=%s is handled by aegis-ckpt retention (max_keep=%d): the Trainer's own rotation "
            "deletes checkpoints before a newer one is committed, so it is switched off for this run.",
            limit,
            self.options.max_keep,
        )
        args.save_total_limit = None

    def on_init_end(self, args, state, control, **kwargs):
        self._take_over_rotation(args)

    def on_train_begin(self, args, state, control, **kwargs):
        self._take_over_rotation(args)
        # Like the Trainer: replicas get log_level_replica; the main process changes only if log_level was set,
        # so an application that configured the aegis_ckpt logger keeps its level ("passive" default).
        if not args.should_log or getattr(args, "log_level", "passive") != "passive":
            logging.getLogger(_PACKAGE_LOGGER).setLevel(args.get_process_log_level())
        if getattr(args, "save_only_model", False):
            logger.warning(
                "save_only_model=True: checkpoints hold no optimizer, scheduler or RNG state, so a resumed run "
                "will not continue exactly where it stopped."
            )
        self.store = CheckpointStore(args.output_dir)
        self._begin_run_record(args, state)  # before anything on disk changes: may refuse a second process
        if args.should_save:
            self.store.mark_managed()
            self._set_aside_future_checkpoints(state.global_step)
            self.store.empty_trash()
        distributed.barrier()
        self.last_saved_step = None
        self.policy.start(self.clock())
        self._beat(state.global_step, "train_begin", force=True)
        logger.info(
            "Saving every %.0f s, keeping %d committed checkpoints in %s",
            self.policy.interval_sec,
            self.options.max_keep,
            args.output_dir,
        )

    # ---- run record (lease, audit, statistics) ----------------------------------------------------------------
    def _begin_run_record(self, args, state) -> None:
        """Take the run lease on the main process and log how the previous run ended. If another live process
        holds the directory, every rank raises ``RunLockedError`` (agreed, so no rank waits at a barrier)."""
        if self._recorder is not None:  # a previous train() with this callback never reached on_train_end
            self._recorder.end("trainer_end", step=state.global_step, detail="train() started again")
        self._recorder = RunRecorder(
            args.output_dir,
            self.options,
            policy=self.policy,
            enabled=bool(args.should_save),
            clock=self.clock,
        )
        refused: RunLockedError | None = None
        try:
            self._recorder.begin(
                step=state.global_step, has_checkpoints=bool(self._require_store().checkpoints())
            )
        except RunLockedError as e:
            refused = e
        if distributed.agree_flags(1 if refused is not None else 0):
            self._recorder = None
            raise refused or RunLockedError(
                f"{args.output_dir} is in use by another training run (see rank 0)"
            )
        if state.global_step > 0:
            checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            self._recorder.resumed(step=state.global_step, checkpoint=checkpoint)

    def _set_aside_future_checkpoints(self, start_step: int) -> None:
        """Folders with a step beyond where training starts belong to an abandoned timeline (e.g. a newer
        checkpoint was damaged and training resumed from an older one). The Trainer would overwrite them in
        place, and retention would count them as newest; move them aside instead."""
        for entry in self._require_store().checkpoints():
            if entry.step > start_step:
                self._require_store().quarantine(
                    entry.path,
                    f"superseded: training (re)started at step {start_step}, before this checkpoint",
                )

    # ---- decide --------------------------------------------------------------------------------------------
    def on_step_end(self, args, state, control, **kwargs):
        reasons = 0
        if self.policy.is_due(self.clock()):
            reasons |= 1
        if self.options.save_on_train_end and state.global_step >= state.max_steps:
            reasons |= 2
        reasons = distributed.agree_flags(reasons)
        if reasons & 1:
            control.should_save = True
            self._save_reason = "interval"
        elif reasons & 2:
            control.should_save = True
            self._save_reason = "final"
        elif control.should_save:
            self._save_reason = "trainer"
        if control.should_save:
            self._save_requested_at = self.clock()
            self._beat(state.global_step, "saving", force=True)
        else:
            self._beat(state.global_step, "train")
        if self._recorder is not None:
            self._recorder.heartbeat(state.global_step)  # throttled inside (heartbeat_every_sec)
        return control

    def on_epoch_end(self, args, state, control, **kwargs):
        if control.should_save and self.last_saved_step == state.global_step:
            # The step-end save of this very step is already committed: a second save would rewrite the same
            # state in place and open a window where the folder no longer matches its manifest.
            logger.debug("step %d already committed; skipping the epoch-end save", state.global_step)
            control.should_save = False
        elif control.should_save:
            self._save_reason = "trainer"
            self._save_requested_at = self.clock()
        return control

    # ---- commit --------------------------------------------------------------------------------------------
    def on_save(self, args, state, control, **kwargs):
        # Every rank writes its own files (rng_state_<rank>.pth); commit only once all of them are done.
        distributed.barrier()
        started = self._save_requested_at if self._save_requested_at is not None else self.clock()
        commit_started = self.clock()
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        size_bytes = 0
        if args.should_save:
            size_bytes = self._commit_and_retain(args, state, folder, commit_started - started)
        distributed.barrier()
        finished = self.clock()
        self.policy.record_save(started=started, finished=finished, size_bytes=size_bytes)
        self.last_saved_step = state.global_step
        self.last_commit_path = folder
        self._save_requested_at = None
        self._beat(state.global_step, "train", force=True)
        return control

    def _require_store(self) -> CheckpointStore:
        if self.store is None:
            raise RuntimeError(
                "AegisCheckpointCallback used before on_train_begin: is it registered with the Trainer?"
            )
        return self.store

    def _commit_and_retain(self, args, state, folder: Path, write_sec: float) -> int:
        t0 = time.perf_counter()
        try:
            manifest = commit_checkpoint(
                folder,
                step=state.global_step,
                reason=self._save_reason or "trainer",
                meta={
                    "epoch": state.epoch,
                    "max_steps": state.max_steps,
                    "world_size": args.world_size,
                    "save_only_model": bool(getattr(args, "save_only_model", False)),
                },
                sha256=self._recorder.sha256 if self._recorder is not None else False,
            )
        except CommitError as e:
            if self._recorder is not None:
                self._recorder.save_failed(
                    step=state.global_step, reason=self._save_reason or "trainer", error=e
                )
            logger.error(
                "Checkpoint at step %d was NOT committed (%s). Training goes on; the previous committed "
                "checkpoint stays the resume point, and the next save is tried one interval from now.",
                state.global_step,
                e,
            )
            return 0
        commit_sec = time.perf_counter() - t0
        logger.info(
            "Committed %s (step %d, %.1f MB, %s, write %.2f s + commit %.2f s)",
            folder,
            state.global_step,
            manifest.total_bytes / 1e6,
            self._save_reason or "trainer",
            write_sec,
            commit_sec,
        )
        if self._recorder is not None:
            self._recorder.committed(
                folder,
                manifest,
                reason=self._save_reason or "trainer",
                write_sec=write_sec,
                commit_sec=commit_sec,
            )
        protect = {folder}
        if self.options.keep_best and state.best_model_checkpoint:
            protect.add(Path(state.best_model_checkpoint))
        self._require_store().prune(
            self.options.max_keep, protect=protect, milestone_every_sec=self.options.keep_milestone_every_sec
        )
        return manifest.total_bytes

    # ---- end -----------------------------------------------------------------------------------------------
    def on_train_end(self, args, state, control, **kwargs):
        self._beat(state.global_step, "train_end", force=True)
        finished = state.max_steps > 0 and state.global_step >= state.max_steps
        final_saved = self.last_saved_step == state.global_step and self.last_commit_path is not None
        if self._recorder is not None:  # clean-exit record; "finish" in the audit log when training completed
            if finished and final_saved:
                self._recorder.finished(step=state.global_step, checkpoint=self.last_commit_path)
            self._recorder.end("trainer_end", step=state.global_step)
            self._recorder = None
        if not (self.write_completion_marker and finished and final_saved and args.should_save):
            return control
        if is_committed(self.last_commit_path):
            mark_completed(
                args.output_dir, step=state.global_step, checkpoint=os.fspath(self.last_commit_path)
            )
        return control
