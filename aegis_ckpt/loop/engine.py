"""``LoopCheckpointer``: the one implementation behind the three custom-loop managers (``manager``).

It holds the registered objects and the loop's counters, decides at safe points (``policy``, ``safepoints``),
saves through ``savepath`` (staging folder, commit, rename, the save tail shared with the Trainer path), resumes
through ``resumepath`` (the same scan as the Trainer path), and records everything through ``RunRecorder``
(lease, audit log, statistics).

Under torch.distributed (initialized by the program: torchrun, accelerate launch) every rank builds its own
manager at the same point; ``ranks`` makes every decision the same on all of them (a signal on one rank stops
all, the interval is due when it is due on any rank's clock) and lets rank 0 alone change shared files (the
lease, the manifest and commit, retention, quarantine). Saves, ``save_checkpoint()``, ``resume()`` and
``finish()`` are then collective: every rank calls them at the same point of the loop.

Safe points. Time-based saving must never capture weights in the middle of an update, so a save happens only
where the loop says the state is consistent: ``step()``, called after each optimizer step once the counters match
the weights (inside a ``with unsafe():`` block it takes effect at the block's end), ``save_checkpoint()`` (which
waits for a running ``unsafe()`` block of another thread) and ``finish()`` (see ``safepoints``).
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..distributed import PeerLostError, StepFlags
from ..errors import CommitError, ConfigError, RunLockedError
from ..exitcodes import exit_code_for_signal
from ..options import CheckpointOptions, RemoteOptions
from ..policy import SavePolicy, make_policy
from ..remote.mirror import RemoteMirror
from ..runstate.completion import mark_completed
from ..runstate.recorder import RunRecorder
from ..runstate.saves import SaveTail
from ..runstate.start import FINISHED, RunStart
from ..storage.layout import check_output_dir
from ..storage.store import CheckpointStore
from ..system.platform import signal_name
from . import resumepath, savepath
from .ranks import LoopRanks
from .safepoints import StallWatch, UnsafeRegions

logger = logging.getLogger(__name__)


class LoopCheckpointer:
    """Checkpointing for a hand-written training loop (see module docstring; public API in ``manager.py``)."""

    def __init__(
        self,
        base_dir: str | os.PathLike,
        options: CheckpointOptions,
        *,
        keep_tagged: bool = True,
        policy: SavePolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
        remote: RemoteOptions | None = None,
    ):
        self.output_dir = check_output_dir(base_dir)
        self.options = options
        self.remote = remote if remote is not None else RemoteOptions()
        self.keep_tagged = keep_tagged
        self.policy = policy if policy is not None else make_policy(options)
        self.clock = clock
        self.ranks = LoopRanks(clock)
        self.store = CheckpointStore(self.output_dir)
        self.recorder = RunRecorder(
            self.output_dir, options, policy=self.policy, clock=clock, enabled=self.ranks.is_main
        )
        self.tail = SaveTail(self.store, options, recorder=lambda: self.recorder)
        self.model = self.tokenizer = self.optimizer = self.scheduler = None
        self.extra: dict[str, Any] = {}
        self.global_step = 0
        self.user_state: dict[str, Any] = {}
        self.auto_tag: str | None = None
        self.watcher = None
        self.resumed_from: Path | None = None
        self.resumed_step: int | None = None
        self.last_checkpoint: Path | None = None
        self.superseded_checked = False
        self.closed = False
        self.regions = UnsafeRegions()
        self.stall_watch = StallWatch(
            clock,
            interval_sec=lambda: self.policy.interval_sec,
            armed=lambda: self.auto_tag is not None and not self.closed,
        )
        self.mirror: RemoteMirror | None = None
        self.run_start: RunStart | None = self._open_output_dir()
        self._atexit_hook = self._close_at_exit
        atexit.register(self._atexit_hook)

    def _open_output_dir(self) -> RunStart | None:
        """Refuse a second live process before anything on disk changes (``RunLockedError``, on every rank),
        clean up after a crash of the previous one (rank 0), and share how that one ended with every rank."""
        refused: RunLockedError | None = None
        start = None
        try:
            start = self.recorder.begin(step=0, has_checkpoints=bool(self.store.checkpoints()))
        except RunLockedError as e:
            refused = e
        if self.ranks.any(refused is not None):
            raise refused or RunLockedError(
                f"{self.output_dir} is in use by another training run (see rank 0)"
            )
        if self.ranks.is_main:
            self.store.mark_managed()
            self.store.recover_staging()
            self.store.empty_trash()
            if self.remote.enabled:
                self.mirror = RemoteMirror(self.remote, self.output_dir, local_max_keep=self.options.max_keep)
                self.tail.mirror = self.mirror  # every commit is handed to it by the save tail
                self.mirror.catch_up()  # an upload the previous process could not finish
        start = self.ranks.share(start)
        self.ranks.setup()
        return start

    # ---- registration ----------------------------------------------------------------------------------------
    def register(self, model, tokenizer=None, optimizer=None, scheduler=None, **extra) -> None:
        self.model, self.tokenizer, self.optimizer, self.scheduler = model, tokenizer, optimizer, scheduler
        for name, obj in extra.items():
            self.register_state(name, obj)

    def register_state(self, name: str, obj) -> None:
        if not (
            callable(getattr(obj, "state_dict", None)) and callable(getattr(obj, "load_state_dict", None))
        ):
            raise TypeError(
                f"register_state({name!r}, ...) needs an object with state_dict()/load_state_dict() (got "
                f"{type(obj).__name__}); pass plain JSON values to step()/update() instead"
            )
        self.extra[name] = obj

    def _require_model(self) -> None:
        if self.model is None:
            raise ConfigError("no model registered: call register_model(model, tokenizer, ...) first")

    # ---- the loop's state --------------------------------------------------------------------------------------
    def update(self, **values: Any) -> None:
        """Set loop values saved with every checkpoint (epoch, data position, ...); they must be JSON values."""
        if "step" in values:
            raise TypeError("the step is set by step(global_step), not as a loop value")
        try:
            json.dumps(values)
        except (TypeError, ValueError) as e:
            raise TypeError(
                f"checkpoint values must be JSON (numbers, strings, lists, dicts): {e}. Register objects with "
                "state_dict() through register_state() instead."
            ) from None
        self.user_state.update(values)

    def loop_state(self) -> dict[str, Any]:
        return {"step": self.global_step, **self.user_state}

    def step(self, global_step: int | None = None, **values: Any) -> bool:
        """A safe point after an optimizer step: count it, then save if one is due (or a stop signal came).
        Returns True when a checkpoint was committed here."""
        if values:
            self.update(**values)
        self.global_step = int(global_step) if global_step is not None else self.global_step + 1
        if self.regions.inside():
            self.regions.defer()  # inside unsafe(): the block's end is the safe point
            return False
        return self.safe_point()

    def unsafe(self):
        """Mark code that changes the state (optimizer step, counters): no save sees it half done, and an
        exception inside it is known to have torn the state. A ``step()`` called inside takes effect at the end of
        the block; the end of a block without one is not a safe point (the counters may not match the weights)."""
        return self.regions.block(at_end=self.safe_point)

    def state_is_consistent(self) -> tuple[bool, str]:
        """Whether an emergency save now would capture a consistent state, and if not, why."""
        return self.regions.state_is_consistent()

    # ---- safe points -------------------------------------------------------------------------------------------
    def safe_point(self) -> bool:
        """Agree with the other ranks (if any) on a stop signal and on a due save, then act on it."""
        now = self.clock()
        self.stall_watch.safe_point(now)
        self.recorder.heartbeat(self.global_step)
        local = StepFlags(
            save_due=int(self.auto_tag is not None and self.policy.is_due(now)),
            signal=(self.watcher.triggered or 0) if self.watcher is not None else 0,
        )
        try:
            agreed = self.ranks.agree(local, step=self.global_step)
        except PeerLostError as e:
            self.exit_after_peer_loss(e, local.signal)
        if agreed.signal:
            self.stop_on_signal(agreed.signal)
        if agreed.save_due and self.auto_tag is not None:
            return (
                self.save(tag=self.auto_tag, reason="interval", pinned=False, raise_errors=False) is not None
            )
        return False

    def stop_on_signal(self, signum: int) -> None:
        """Commit a checkpoint of the current (consistent) state, release the lease, exit with 128 + signum
        (on every rank: a signal on one rank stops all of them at the same step)."""
        code = exit_code_for_signal(signum)
        if self.watcher is not None and self.watcher.triggered is None:
            # Another rank got the signal: this rank saves with it and exits the same way.
            self.watcher.notify(signum, f"{signal_name(signum)} (on another rank)", quiet=True)
        logger.warning(
            "%s received: saving step %d, then exiting with code %d",
            signal_name(signum),
            self.global_step,
            code,
        )
        self.recorder.signal(signum, step=self.global_step)
        if self.model is not None:
            self.save(tag=None, reason=f"signal:{signal_name(signum)}", pinned=False, raise_errors=False)
        self.close("signal", detail=signal_name(signum))
        if self.ranks.active:
            # No rank exits before rank 0 released the lease: a launcher stops the others once one exits.
            self.ranks.barrier()
        raise SystemExit(code)

    def exit_after_peer_loss(self, error: Exception, local_signal: int) -> None:
        """A peer rank is gone (killed, crashed): no collective save is possible, so exit; the last committed
        checkpoint stays the resume point."""
        code = exit_code_for_signal(local_signal) if local_signal else 1
        logger.error("%s. No collective save is possible; exiting with code %d.", error, code)
        self.close("exception", detail="a peer rank is gone")
        raise SystemExit(code) from error

    def arm(self, model=None, tokenizer=None, tag: str = "auto") -> None:
        """Start time-based saving (``start_auto_save``); see ``RollingCheckpointManager.start_auto_save``."""
        if model is not None:
            if self.model is None:
                self.register(model, tokenizer)
            elif model is not self.model:
                raise ConfigError(
                    "start_auto_save() got a different model than register_model(): a checkpoint must capture one "
                    "consistent set of objects. Call register_model(new_model, ...) first."
                )
        if tokenizer is not None:
            if self.tokenizer is None:
                self.tokenizer = tokenizer
            elif tokenizer is not self.tokenizer:
                raise ConfigError("start_auto_save() got a different tokenizer than register_model()")
        self._require_model()
        self.auto_tag = str(tag)
        now = self.clock()
        self.policy.start(now)
        logger.info(
            "Auto-save every %.3g s at safe points (step() / end of unsafe()), keeping %d in %s",
            self.policy.interval_sec,
            self.options.max_keep,
            self.output_dir,
        )
        self.stall_watch.start(now)

    def disarm(self) -> None:
        self.auto_tag = None

    def check_stalled(self, now: float) -> bool:
        """Warn (once until the next safe point) when auto-save is armed but no safe point came for two
        intervals (``StallWatch``)."""
        return self.stall_watch.check(now)

    # ---- save --------------------------------------------------------------------------------------------------
    def save_now(self, tag: str | None, *, keep: bool | None = None, reason: str = "manual") -> Path:
        """A save requested by the program (``save_checkpoint``); waits for another thread's unsafe() block."""
        if self.regions.inside():
            raise RuntimeError(
                "save_checkpoint() inside `with unsafe():`: the state is being changed; call it after the block"
            )
        pinned = bool(tag) and (self.keep_tagged if keep is None else keep)
        return self.save_or_raise(tag=tag, reason=reason, pinned=pinned)

    def save_or_raise(self, *, tag: str | None, reason: str, pinned: bool) -> Path:
        path = self.save(tag=tag, reason=reason, pinned=pinned, raise_errors=True)
        if path is None:  # save() raises CommitError instead; this only guards a future change
            raise CommitError(f"checkpoint of step {self.global_step} was not committed")
        return path

    def save(self, *, tag: str | None, reason: str, pinned: bool, raise_errors: bool) -> Path | None:
        """Save and commit the current state (under the manager's lock: never during an unsafe() block)."""
        self._require_model()
        if self.closed:
            raise RuntimeError(
                "this checkpoint manager is closed (it released the directory); create a new one to save again"
            )
        if self.regions.inside():
            raise RuntimeError("cannot save inside this thread's own `with unsafe():` block")
        with self.regions.lock:
            return savepath.save_locked(self, tag, reason, pinned, raise_errors)

    # ---- resume ------------------------------------------------------------------------------------------------
    def resume(self, *, restore_rng: bool = True) -> dict[str, Any] | None:
        """Restore the newest intact checkpoint into the registered objects; returns the loop state or None."""
        self._require_model()
        return resumepath.resume(self, restore_rng=restore_rng)

    # ---- end ---------------------------------------------------------------------------------------------------
    @property
    def is_finished(self) -> bool:
        return self.run_start is not None and self.run_start.kind == FINISHED

    def finish(self) -> Path:
        """Commit the final state, write the completion marker, release the lease."""
        if self.is_finished and self.resumed_from is not None and self.global_step == self.resumed_step:
            # Started again after it had finished, and nothing was trained since: nothing to record either.
            logger.info("Nothing to do: the run had already finished at step %d", self.global_step)
            self.close("finished")
            return self.resumed_from
        path = self.save_or_raise(tag="final", reason="final", pinned=False)
        if self.ranks.is_main:
            mark_completed(self.output_dir, step=self.global_step, checkpoint=os.fspath(path))
        self.recorder.finished(step=self.global_step, checkpoint=path)
        logger.info("Training complete at step %d: %s", self.global_step, path)
        self.close("finished")
        return path

    def close(self, kind: str = "closed", *, detail: str = "") -> None:
        if self.closed:
            return
        self.closed = True
        self.auto_tag = None
        self.stall_watch.stop()
        if self.watcher is not None:
            try:
                self.watcher.mark_done()  # releases a Windows close/logoff/shutdown handler waiting for the save
                self.watcher.uninstall()
            except Exception as e:  # restoring handlers is best effort; the lease must still be released
                logger.warning("Could not restore the previous signal handlers: %s", e)
            self.watcher = None
        if self.mirror is not None:
            self.mirror.close(self.remote.flush_timeout_sec)  # bounded wait for the last upload
        self.recorder.end(kind, step=self.global_step, detail=detail)
        self.ranks.close()
        atexit.unregister(self._atexit_hook)

    def _close_at_exit(self) -> None:
        # The program ended without close(): after an unhandled exception the interpreter has set sys.last_value
        # by now (it prints the traceback before running atexit hooks); otherwise it simply returned.
        error = getattr(sys, "last_value", None)
        if error is not None:
            self.close("exception", detail=type(error).__name__)
        else:
            self.close("exited_without_close")
