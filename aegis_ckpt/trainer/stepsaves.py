"""The callback's save cycle: at each optimizer step end, whether this step saves (agreed by every rank) and how.

Each rank states its flags (the interval is due, a stop signal came, its background writer is busy, the state
would not fit in RAM, how far its node's remote uploads got), the ranks agree on them (``distributed.StepAgreement``) and ``stepdecision`` turns the
agreed flags into one action: the emergency save, the final save, a due rolling save, or the Trainer's own save.
A synchronous save is asked of the Trainer (``control.should_save``) and committed in the callback's ``on_save``;
a due save that can be two-phase starts here on the background writer and is published at a later step end, once
written. Kept apart from the callback so that the state of the cycle (the reason and start of the pending save,
the latest saved step and committed folder) has one owner, and the callback only routes Trainer events.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from .. import distributed
from ..cluster.nodes import CommonCheckpointGuard
from ..distributed import PeerLostError, StepAgreement, StepFlags
from ..options import AsyncOptions, CheckpointOptions
from ..policy import SavePolicy
from ..runstate.saves import SaveTail
from ..storage.layout import checkpoint_dir_name
from ..storage.store import CheckpointStore
from .asyncsave.saver import AsyncSaver
from .commits import manifest_meta, publish_background_save
from .emergency import EmergencyStop
from .remoteranks import RankUploads
from .runrecord import TrainerRunRecord
from .savegate import SaveGate
from .stepdecision import DUE, FINAL, SIGNAL, TRAINER, decide_step
from .syncsave import SyncSaves

logger = logging.getLogger(__name__)


class StepSaves:
    """Decides and starts the save of each step end, and remembers the latest save (see the module docstring).

    The callback's parts that only exist once training begins (the store, the save tail, the Trainer) and the
    options it may still change (``save_total_limit`` taken over) are passed as callables, read when used.
    """

    def __init__(
        self,
        *,
        policy: Callable[[], SavePolicy],
        options: Callable[[], CheckpointOptions],
        async_options: AsyncOptions,
        clock: Callable[[], float],
        stops: EmergencyStop,
        run: TrainerRunRecord,
        store: Callable[[], CheckpointStore | None],
        require_store: Callable[[], CheckpointStore],
        tail: Callable[[], SaveTail],
        trainer: Callable[[], object],
        metric: Callable[[object], dict | None],
        sync: SyncSaves,
        uploads: RankUploads,
    ) -> None:
        self._policy = policy
        self._options = options
        self._clock = clock
        self._stops = stops
        self._run = run
        self._store = store
        self._require_store = require_store
        self._tail = tail
        self._trainer = trainer
        self._metric = metric
        self._sync = sync
        # Direct synchronous saves split the weights into shards like asynchronous ones.
        sync.max_shard_bytes = lambda: options().max_shard_bytes
        self._uploads = uploads
        self.agreement = StepAgreement(
            clock=clock
        )  # one clock for the save interval and the agreement stride
        self.saver = AsyncSaver(async_options)
        self._gate = SaveGate(
            run=run, stops=stops, policy=policy, clock=clock
        )  # a save that cannot fit never starts
        self.reason = ""
        """Why the pending or latest save was made (``interval``, ``final``, ``trainer``, ``signal:<NAME>``)."""
        self.requested_at: float | None = None
        """When the Trainer was asked for the pending synchronous save (its write time starts there)."""
        self.last_saved_step: int | None = None
        self.last_commit_path: Path | None = None

    def decide(self, args, state, control) -> bool:
        """Set ``control.should_save`` for this step end, or start a due two-phase save; whether the Trainer is
        to save now."""
        self.collect(wait=False)
        now = self._clock()
        save_due = int(self._policy().is_due(now))
        signal = self._stops.pending_signal
        final = state.global_step >= state.max_steps
        fits = self.saver.fits_in_ram(
            self._trainer(), args, now=now, urgent=bool(save_due or signal or final)
        )
        local = StepFlags(
            save_due=save_due,
            signal=signal,
            writer_busy=int(self.saver.busy),
            sync_only=int(not fits),
            uploads_from=self._uploads.contribution(),
        )
        try:
            agreed = self.agreement.exchange(local, step=state.global_step, sync=final)
        except PeerLostError as e:
            self._stops.exit_after_peer_loss(e, local.signal)
        self._uploads.agreed(agreed, contributed_at=self.agreement.result_step)
        decision = decide_step(
            agreed,
            final=final,
            save_on_train_end=self._options().save_on_train_end,
            trainer_saves=control.should_save,
            contributed_at=self.agreement.result_step,
            last_saved_step=self.last_saved_step,
        )
        if decision.action == SIGNAL:
            self.reason = self._stops.take_signal(agreed.signal)
            self.collect(wait=True)  # the grace watchdog bounds this wait
            control.should_save = True
        elif decision.action == FINAL:
            self.collect(wait=True)
            control.should_save = True
            self.reason = decision.reason
        elif decision.action == DUE:
            self._save_when_due(args, state, control, agreed)
        elif decision.action == TRAINER:
            self.reason = decision.reason
        if control.should_save and not self._fits(args, state, self.reason):
            control.should_save = False
        if control.should_save:
            self.requested_at = self._clock()
        return bool(control.should_save)

    def _save_when_due(self, args, state, control, agreed: StepFlags) -> None:
        """The interval is due and the Trainer does not save this step on its own: save, async if possible."""
        if not self.saver.enabled or agreed.sync_only:
            control.should_save = True
            self.reason = "interval"
            return
        if self.saver.defer(
            state.global_step,
            busy_on_some_rank=bool(agreed.writer_busy),
            wait_for_writer=lambda: self.collect(wait=True),
        ):
            return
        if not self._fits(args, state, "interval"):
            return
        store = self._require_store()
        started = self._clock()
        staging = (
            store.fresh_staging(state.global_step)
            if args.should_save
            else store.staging_path(state.global_step)
        )
        self.saver.max_shard_bytes = self._options().max_shard_bytes
        nbytes = self.saver.start(
            self._trainer(),
            staging,
            step=state.global_step,
            reason="interval",
            meta=manifest_meta(state, args.world_size, asynchronous=True, metric=self._metric(state)),
            sha256=self._run.sha256,
        )
        self.last_saved_step = state.global_step
        self._policy().record_save(started=started, finished=self._clock(), size_bytes=nbytes)

    def _fits(self, args, state, reason: str) -> bool:
        """Whether the save decided at this step fits on disk on every rank (``savegate``)."""
        return self._gate.fits(args, state, reason, store=self._store(), trainer=self._trainer())

    def end(self) -> int:
        """Training ended: the stop signal a rank reported after the last agreed step end (0 if none); closes the
        agreement. A lost peer at this point is only logged, training is over anyway."""
        try:
            late = self.agreement.drain()
        except PeerLostError as e:
            late = StepFlags()
            logger.warning("%s (at train end)", e)
        self.agreement.close()
        return late.signal

    def commit(
        self, args, state, *, model, common: CommonCheckpointGuard
    ) -> tuple[Path, bool, Exception | None]:
        """The Trainer wrote ``checkpoint-<step>`` (``on_save``): commit it once every rank is done. Returns the
        folder, whether it is committed (by this process or, off the saving rank, by another one) and the failure
        that kept it from being committed, if any."""
        # A background save still in flight is published first (or dropped if it is of this very step).
        self.collect(wait=True)
        # Every rank writes its own files (rng_state_<rank>.pth); commit only once all of them are done.
        distributed.barrier()
        started = self.requested_at if self.requested_at is not None else self._clock()
        write_sec = self._clock() - started
        folder = Path(args.output_dir) / checkpoint_dir_name(state.global_step)
        common.complete_node_copy(model, folder, writes_files=args.should_save)
        size_bytes, failure = self._sync.commit_written(
            state,
            folder,
            reason=self.reason or "trainer",
            write_sec=write_sec,
            world_size=args.world_size,
            writes_files=args.should_save,
        )
        distributed.barrier()
        committed = size_bytes > 0 or not args.should_save
        common.confirm(state.global_step, committed_here=committed)
        self._policy().record_save(started=started, finished=self._clock(), size_bytes=size_bytes)
        self.last_saved_step = state.global_step
        self.last_commit_path = folder
        self.requested_at = None
        return folder, committed, failure

    def save_now(self, trainer, folder: Path, reason: str) -> bool:
        """The emergency save of an exception: the Trainer's save of ``folder`` run and committed here."""
        self.reason = reason
        if self._sync.save_now(trainer, folder, reason):
            self.last_saved_step = trainer.state.global_step
            return True
        return False

    def collect(self, *, wait: bool) -> None:
        """Publish a background save that finished (optionally waiting for it). Runs on the training thread."""
        job = self.saver.writer.collect(wait=wait)
        if job is not None:
            folder = publish_background_save(self._tail(), job)
            self.last_commit_path = folder or self.last_commit_path
