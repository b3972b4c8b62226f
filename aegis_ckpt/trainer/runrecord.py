"""The run's record for a Trainer run: the lease, the audit log and the save statistics, through one
``RunRecorder`` per ``train()`` call.

Rank 0 (the process that saves) takes the lease when training begins; every rank learns whether that was refused
(another live process owns the directory), so all of them raise instead of some waiting at a barrier. When
training reaches its last step with a committed checkpoint, the run is recorded as finished (and, unless the
caller records completion itself, ``.aegis/completed.json`` is written).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from .. import distributed
from ..errors import RunLockedError
from ..options import CheckpointOptions
from ..policy import SavePolicy
from ..runstate.completion import mark_completed
from ..runstate.recorder import RunRecorder
from ..storage.commit import is_committed
from ..storage.layout import checkpoint_dir_name


class TrainerRunRecord:
    """Begins, feeds and ends the ``RunRecorder`` of each ``train()`` call; ``recorder`` is None where nothing is
    recorded (before training, after it, or once ended)."""

    def __init__(self, policy: SavePolicy, clock: Callable[[], float]):
        self.policy = policy
        self.clock = clock
        self.recorder: RunRecorder | None = None

    @property
    def sha256(self) -> bool:
        """Whether commits hash their files with SHA-256 too (asked for by the audit options)."""
        return self.recorder.sha256 if self.recorder is not None else False

    def begin(self, args, state, options: CheckpointOptions, *, has_checkpoints: bool) -> None:
        """Take the run lease on the main process and log how the previous run ended. If another live process
        holds the directory, every rank raises ``RunLockedError`` (agreed, so no rank waits at a barrier)."""
        if self.recorder is not None:  # a previous train() with this callback never reached on_train_end
            self.recorder.end("trainer_end", step=state.global_step, detail="train() started again")
        self.recorder = RunRecorder(
            args.output_dir, options, policy=self.policy, enabled=bool(args.should_save), clock=self.clock
        )
        refused: RunLockedError | None = None
        try:
            self.recorder.begin(step=state.global_step, has_checkpoints=has_checkpoints)
        except RunLockedError as e:
            refused = e
        if distributed.agree_any(refused is not None):
            self.recorder = None
            raise refused or RunLockedError(
                f"{args.output_dir} is in use by another training run (see rank 0)"
            )
        if state.global_step > 0:
            checkpoint = Path(args.output_dir) / checkpoint_dir_name(state.global_step)
            self.recorder.resumed(step=state.global_step, checkpoint=checkpoint)

    def heartbeat(self, step: int) -> None:
        """Keep the lease alive (throttled inside, ``heartbeat_every_sec``)."""
        if self.recorder is not None:
            self.recorder.heartbeat(step)

    def record(self, event: str, *, step: int, signum: int = 0, error=None, saved: bool = False) -> None:
        """A stop signal (``event="signal"``) or an exception that ended training."""
        if self.recorder is None:
            return
        if event == "signal":
            self.recorder.signal(signum, step=step)
        else:
            self.recorder.exception(error, step=step, saved=saved)

    def finish(self, args, state, *, write_completion_marker: bool) -> None:
        """At train end: record a completed run (its final checkpoint committed, by this run or by an earlier one
        that was killed before it wrote the record: a restart then resumes with no step left to run)."""
        finished = state.max_steps > 0 and state.global_step >= state.max_steps
        final_path = Path(args.output_dir) / checkpoint_dir_name(state.global_step)
        if write_completion_marker and finished and args.should_save and is_committed(final_path):
            mark_completed(args.output_dir, step=state.global_step, checkpoint=os.fspath(final_path))
        if self.recorder is not None:  # clean-exit record; "finish" in the audit log when training completed
            if finished and is_committed(final_path):
                self.recorder.finished(step=state.global_step, checkpoint=final_path)
        self.end("trainer_end", state.global_step)

    def end(self, kind: str, step: int, detail: str = "") -> None:
        """Release the lease with the way the run ended."""
        if self.recorder is not None:
            self.recorder.end(kind, step=step, detail=detail)
            self.recorder = None
