"""``AegisCheckpointCallback``: the TrainerCallback glue.

At each optimizer step end it decides whether a save is due (``policy``; a stop signal from ``signals``;
agreed across ranks by ``distributed``), lets the Trainer write the standard ``checkpoint-<step>`` folder
(``control.should_save = True``), commits that folder in ``on_save`` (``commit``) and applies retention
afterwards (``store``). It commits every save the Trainer makes, whatever ``save_strategy`` the user chose, and
takes over ``save_total_limit`` because the Trainer's own rotation deletes by mtime before anything could be
committed. After a stop signal the save is the emergency checkpoint, and the process then exits with
``128 + signum``; after an exception (``emergency``) a best-effort checkpoint is saved before it propagates.
The class routes events to its parts: save cycle (``stepsaves``), uploads (``remoteranks``), emergency stop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from transformers import TrainerCallback

from .. import distributed
from ..arguments import AegisArguments
from ..cluster.nodes import CommonCheckpointGuard
from ..exitcodes import exit_code_for_signal
from ..options import AsyncOptions, CheckpointOptions, EmergencyOptions, RemoteOptions
from ..policy import SavePolicy, make_policy
from ..remote.mirror import RemoteMirror
from ..resume import check_resume_world_size
from ..runstate.completion import mark_completed
from ..runstate.heartbeat import SupervisorHeartbeat
from ..runstate.saves import SaveTail
from ..storage.commit import is_committed
from ..storage.store import CheckpointStore
from ..system.platform import signal_name
from ..system.signals import SignalWatcher
from .asyncsave.saver import AsyncSaver
from .compat import check_training_setup
from .emergency import EmergencyStop, find_trainer
from .metric import EvaluationTracker
from .remoteranks import RankUploads
from .runrecord import TrainerRunRecord
from .settings import build_options, follow_trainer_logging, resolve_options, take_over_rotation
from .stepsaves import StepSaves
from .syncsave import SyncSaves, final_save_failed
from .trainbegin import open_output_dir, tidy_output_dir
from .trainentry import TrainEntry

logger = logging.getLogger(__name__)

HEARTBEAT_EVERY_SEC = 5.0


class AegisCheckpointCallback(TrainerCallback):
    """Time-based rolling checkpoints with a crash-safe commit, emergency saves on signals and exceptions, for
    ``transformers.Trainer`` (single process, torchrun, accelerate).

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
        keep_best_k (`int`, *optional*, defaults to 0):
            Also keep the best k checkpoints by ``metric_for_best_model`` (Lightning's ``save_top_k``); only
            checkpoints saved at an evaluated step carry the metric.
        handle_signals (`bool`, *optional*, defaults to `True`):
            On SIGTERM, SIGINT, SIGHUP, SIGUSR1 (Windows: Ctrl+C, Ctrl+Break, console close, logoff, shutdown)
            finish the step, commit a checkpoint, and exit with ``128 + signum``. A second signal exits at once.
        grace_period_sec (`float`, *optional*, defaults to 20.0):
            Exit anyway if the emergency checkpoint is not committed this long after the signal.
        save_on_exception (`bool`, *optional*, defaults to `True`):
            Save the last completed step when an exception escapes training (single process), then re-raise.
        preempt_signals (`list[str]`, *optional*):
            Preemption notices: under Slurm, after their checkpoint the job is requeued (``scontrol requeue``) and
            the process exits with 0. Defaults to SIGUSR1 and SIGTERM under Slurm, none elsewhere.
        async_save (`bool`, *optional*, defaults to `True`):
            Two-phase saves: training stalls only while the state is copied to CPU memory; the files are written,
            flushed and committed by a background thread. Setups it cannot express (DeepSpeed, FSDP, adapters,
            quantized or offloaded models, a Trainer subclass that overrides a save method) keep the Trainer's
            synchronous save, as logged once.
        args (`AegisArguments`, *optional*):
            All of the above as one dataclass (e.g. parsed by ``HfArgumentParser`` next to ``TrainingArguments``);
            when given, the other option arguments must be left unset.
        remote_url (`str`, *optional*):
            Mirror every committed checkpoint to this fsspec URL (``s3://bucket/prefix``, ``gs://...``,
            ``file:///mnt/nas/run``) in the background; credentials come from the backend's environment variables
            or profiles. ``find_resume_checkpoint(..., remote_url=...)`` resumes from it on a fresh machine.
        remote_max_keep (`int`, *optional*):
            Remote copies to keep (the newest verified one always); defaults to ``max_keep``.
        remote_options (`dict`, *optional*):
            Extra keyword arguments of the fsspec file system (never credentials).
        options (`CheckpointOptions`, *optional*), emergency (`EmergencyOptions`, *optional*),
        async_options (`AsyncOptions`, *optional*), remote (`RemoteOptions`, *optional*):
            The same settings as objects; when given, the matching keyword arguments must be left unset.
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
        keep_best_k: int | None = None,
        handle_signals: bool | None = None,
        grace_period_sec: float | None = None,
        save_on_exception: bool | None = None,
        preempt_signals: list[str] | tuple[str, ...] | None = None,
        async_save: bool | None = None,
        options: CheckpointOptions | None = None,
        emergency: EmergencyOptions | None = None,
        async_options: AsyncOptions | None = None,
        args: AegisArguments | None = None,
        remote_url: str | None = None,
        remote_max_keep: int | None = None,
        remote_options: dict | None = None,
        remote: RemoteOptions | None = None,
        policy: SavePolicy | None = None,
        write_completion_marker: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ):
        """Resolve the options (see the class docstring) and build the callback's parts.

        Long because: the public contract's flat keyword arguments take 40 lines, once in the signature and once
        handed on to ``resolve_options``; the rest builds the parts, one assignment each, without branches.
        """
        self.options, self.emergency, self.async_options, self._max_keep_explicit = resolve_options(
            args,
            options=options,
            emergency=emergency,
            async_options=async_options,
            preempt_signals=preempt_signals,
            save_interval_sec=save_interval_sec,
            max_keep=max_keep,
            save_on_train_end=save_on_train_end,
            keep_milestone_every_sec=keep_milestone_every_sec,
            keep_best=keep_best,
            keep_best_k=keep_best_k,
            handle_signals=handle_signals,
            grace_period_sec=grace_period_sec,
            save_on_exception=save_on_exception,
            async_save=async_save,
        )
        self.remote = build_options(
            RemoteOptions, remote, url=remote_url, max_keep=remote_max_keep, options=remote_options
        )
        self._uploads = RankUploads(self.remote, lambda: self.options.max_keep)  # who uploads what
        self.policy: SavePolicy = policy if policy is not None else make_policy(self.options)
        self.clock = clock
        self.write_completion_marker = write_completion_marker
        self.store: CheckpointStore | None = None
        self.stops = EmergencyStop(self.emergency, self)
        self._tail: SaveTail | None = None
        self._common = CommonCheckpointGuard(".", active=False)
        self._trainer = None
        self._rotation_checked = False
        self._setup_checked = False
        self._heartbeat = SupervisorHeartbeat(clock, every_sec=HEARTBEAT_EVERY_SEC)
        self._run = TrainerRunRecord(self.policy, clock)  # run lease, audit log, save statistics
        self._evaluations = EvaluationTracker()  # the metric of a checkpoint (keep_best_k)
        direct = self.async_options.direct_sync_saves  # Trainer's own saves written by the direct writer
        self._sync = SyncSaves(tail=self._require_tail, run=self._run, metric=self._metric, direct=direct)
        # The save cycle: decide at each step end, start the save, commit or publish it.
        self._steps = StepSaves(
            policy=lambda: self.policy,
            options=lambda: self.options,
            async_options=self.async_options,
            clock=clock,
            stops=self.stops,
            run=self._run,
            store=lambda: self.store,
            require_store=self._require_store,
            tail=self._require_tail,
            trainer=lambda: self._trainer,
            metric=self._metric,
            sync=self._sync,
            uploads=self._uploads,
        )
        self._entry = TrainEntry(self._already_finished)  # what train() resumes from; no step past the end

    @property
    def watcher(self) -> SignalWatcher | None:
        """The signal watcher while training runs (None before, after, or with ``handle_signals=False``)."""
        return self.stops.watcher

    @property
    def stop_signal(self) -> int | None:
        """The signal all ranks agreed to stop for, once one came."""
        return self.stops.stop_signal

    @property
    def last_saved_step(self) -> int | None:
        """The step of the latest save started (two-phase) or committed (synchronous) in this process."""
        return self._steps.last_saved_step

    @property
    def last_commit_path(self) -> Path | None:
        """The folder of the latest committed save."""
        return self._steps.last_commit_path

    @property
    def mirror(self) -> RemoteMirror | None:
        """This process's remote mirror while training runs (None where it uploads nothing: ``remoteranks``)."""
        return self._uploads.mirror

    @property
    def _async(self) -> AsyncSaver:
        """The two-phase saver (its writer is the seam tests replace)."""
        return self._steps.saver

    # ---- setup ---------------------------------------------------------------------------------------------
    def _adopt_trainer_args(self, args) -> None:
        """Once, at Trainer construction or at train begin when the callback was added later: refuse setups that
        cannot work (``compat``), then switch off the Trainer's mtime rotation (retention runs after each commit
        instead)."""
        if not self._setup_checked:
            self._setup_checked = True
            check_training_setup(args, self.options)
        if not self._rotation_checked:
            self._rotation_checked = True
            self.options = take_over_rotation(args, self.options, max_keep_explicit=self._max_keep_explicit)

    def on_init_end(self, args, state, control, **kwargs):
        self._adopt_trainer_args(args)
        self._trainer = find_trainer()
        self.stops.attach(self._trainer)
        self._sync.install(self._trainer)
        self._entry.install(self._trainer)

    def on_train_begin(self, args, state, control, **kwargs):
        self._adopt_trainer_args(args)
        follow_trainer_logging(args)
        check_resume_world_size(
            args.output_dir, state.global_step, args.world_size, allow=self.emergency.allow_world_size_change
        )
        self._uploads.open(args, collective=True)
        self.store, self._common, self._tail = open_output_dir(
            args, state, self.options, self._run, best=self._best_checkpoint, mirror=self.mirror
        )
        # Before anything on disk changes: may refuse a second process.
        self._run.begin(args, state, self.options, has_checkpoints=bool(self.store.checkpoints()))
        if args.should_save:
            tidy_output_dir(self.store, self._tail, state.global_step, self.options)
            if self.mirror is not None:
                self.mirror.catch_up()  # an upload the previous process could not finish
        self._steps.agreement.setup()
        distributed.barrier()
        self._steps.last_saved_step = None
        self.stops.arm(args, step=state.global_step, needs_trainer=self.async_options.enabled)
        self._async.choose_mode(self._trainer)
        self.policy.start(self.clock())
        self._heartbeat.beat(state.global_step, "train_begin", force=True)
        logger.info(
            "Saving every %g s, keeping %d committed checkpoints in %s",
            self.policy.interval_sec,
            self.options.max_keep,
            args.output_dir,
        )

    # ---- decide --------------------------------------------------------------------------------------------
    def on_step_begin(self, args, state, control, **kwargs):
        self.stops.step_begin()
        return control

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.stops.optimizer_step()
        return control

    def on_step_end(self, args, state, control, **kwargs):
        self.stops.step_end()
        if self._steps.decide(args, state, control):
            self._heartbeat.beat(state.global_step, "saving", force=True)
        else:
            self._heartbeat.beat(state.global_step, "train")
        self._run.heartbeat(state.global_step)
        return control

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self._evaluations.record(state.global_step, metrics)  # the metric of a checkpoint saved at this step
        return control

    def _metric(self, state) -> dict | None:
        return self._evaluations.metric(self._trainer, state.global_step)

    def on_epoch_end(self, args, state, control, **kwargs):
        if control.should_save and self.last_saved_step == state.global_step:
            # The step-end save of this very step is already committed: a second save would rewrite the same
            # state in place and open a window where the folder no longer matches its manifest.
            logger.debug("step %d already committed; skipping the epoch-end save", state.global_step)
            control.should_save = False
        elif control.should_save:
            self._steps.reason = "trainer"
            self._steps.requested_at = self.clock()
        return control

    # ---- commit --------------------------------------------------------------------------------------------
    def on_save(self, args, state, control, **kwargs):
        folder, committed, failure = self._steps.commit(
            args, state, model=kwargs.get("model"), common=self._common
        )
        self._heartbeat.beat(state.global_step, "train", force=True)
        if self.stops.stop_signal is not None:
            self.stops.exit_after_save(state, folder, committed=committed)
        if failure is not None and self._steps.reason == "final":
            raise final_save_failed(state.global_step, failure) from failure
        return control

    def _best_checkpoint(self) -> list[Path]:
        return self._evaluations.best_checkpoint(self._trainer, keep_best=self.options.keep_best)

    # ---- end -----------------------------------------------------------------------------------------------
    def on_train_end(self, args, state, control, **kwargs):
        self._steps.collect(wait=True)
        self._async.close()
        self._uploads.finish(self.remote.flush_timeout_sec, collective=True)
        self._heartbeat.beat(state.global_step, "train_end", force=True)
        late_signal = self._steps.end()
        watcher_signal = self.stops.disarm()
        final_saved = self.last_saved_step == state.global_step and self.last_commit_path is not None
        self._run.finish(args, state, write_completion_marker=self.write_completion_marker)
        signum = late_signal or watcher_signal
        if signum and final_saved:
            # A stop request that arrived after the last step end: the final checkpoint is committed; honour the
            # request instead of returning to code that would go on after training.
            logger.warning(
                "%s arrived as training ended; checkpoint-%d is committed; exiting with code %d",
                signal_name(signum),
                state.global_step,
                exit_code_for_signal(signum),
            )
            raise SystemExit(exit_code_for_signal(signum))
        return control

    # ---- what the emergency stop asks of the save flow (EmergencyHost) ----------------------------------------
    @property
    def multi_process(self) -> bool:
        return self._steps.agreement.active

    def finish_background_save(self) -> None:
        self._steps.collect(wait=True)

    def save_now(self, trainer, folder: Path, reason: str) -> bool:
        return self._steps.save_now(trainer, folder, reason)

    def _already_finished(self, trainer, checkpoint: str, step: int) -> None:
        """``train()`` found the run finished at ``checkpoint``: record completion if a stop came before it."""
        args = trainer.args
        if self.write_completion_marker and args.should_save and is_committed(checkpoint):
            mark_completed(args.output_dir, step=step, checkpoint=checkpoint)
        # No step runs, so no train begin either: an upload (or a node-local run's remote commit) the previous
        # process could not finish is completed here, within the same bound as at the end of training. Every
        # rank's train() comes here (they resume from the same checkpoint), so it may be collective.
        self._uploads.catch_up_finished(args, self.remote.flush_timeout_sec)

    def record(self, event: str, *, step: int, signum: int = 0, error=None, saved: bool = False) -> None:
        self._run.record(event, step=step, signum=signum, error=error, saved=saved)

    def end_run(self, kind: str, step: int, detail: str = "") -> None:
        self._run.end(kind, step, detail)

    def shut_down(self, *, agreement: bool) -> None:
        if agreement:
            self._steps.agreement.close()
        self._async.close()
        # The process is about to exit (a signal, a lost peer): give the last upload the grace period at most.
        self._uploads.finish(self.emergency.grace_period_sec, collective=agreement)

    # ---- helpers -------------------------------------------------------------------------------------------
    def _require_tail(self) -> SaveTail:
        self._require_store()
        return self._tail

    def _require_store(self) -> CheckpointStore:
        if self.store is None:
            raise RuntimeError(
                "AegisCheckpointCallback used before on_train_begin: is it registered with the Trainer?"
            )
        return self.store
