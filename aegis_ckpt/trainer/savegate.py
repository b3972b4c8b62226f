"""The space check before a save starts, for the Trainer callback: a save that cannot fit is never started.

Every rank asks ``SaveSpace`` whether the checkpoint this step is about to write fits, and all ranks agree (one
full rank is enough to refuse). What a refusal means depends on the save: a periodic one is skipped with one log
line and tried again one interval later, a stop signal exits without it, a final one raises ``DiskFullError``; in
every case the previous committed checkpoint stays the resume point.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from .. import distributed
from ..errors import DiskFullError
from ..policy import SavePolicy
from ..storage.layout import checkpoint_dir_name
from ..storage.store import CheckpointStore
from .emergency import EmergencyStop
from .runrecord import TrainerRunRecord
from .savefaults import SaveSpace, skipped_line

logger = logging.getLogger(__name__)


class SaveGate:
    """Decides, agreed across ranks, whether the save decided at a step may start (see the module docstring)."""

    def __init__(
        self,
        *,
        run: TrainerRunRecord,
        stops: EmergencyStop,
        policy: Callable[[], SavePolicy],
        clock: Callable[[], float],
    ) -> None:
        self._space = SaveSpace()
        self._run = run
        self._stops = stops
        self._policy = policy
        self._clock = clock

    def fits(self, args, state, reason: str, *, store: CheckpointStore | None, trainer) -> bool:
        """Whether the save of ``reason`` at this step fits on disk on every rank; if not, handle the refusal
        (skip, exit after a signal, or raise for the final save)."""
        problem = self._space.refusal(store, trainer) if args.should_save and store else None
        if not distributed.agree_any(problem is not None):
            return True
        problem = problem or "the output dir is full on another rank"
        step = state.global_step
        if self._run.recorder is not None:
            error = DiskFullError(f"the {reason} checkpoint of step {step} does not fit: {problem}")
            self._run.recorder.save_failed(step=step, reason=reason, error=error)
        if reason.startswith("signal:"):
            logger.error("Not saving the emergency checkpoint of step %d: %s", step, problem)
            folder = Path(args.output_dir) / checkpoint_dir_name(step)
            self._stops.exit_after_save(state, folder, committed=False)
        if reason == "final":
            raise DiskFullError(
                f"The final checkpoint of step {step} does not fit: {problem}. The previous committed checkpoint "
                "stays the resume point; free space and start the run again to finish it."
            )
        nbytes = self._space.checkpoint_bytes(store, trainer) if store else 0
        logger.error("%s", skipped_line(step, reason, problem, checkpoint_bytes=nbytes))
        now = self._clock()
        self._policy().record_save(
            started=now, finished=now, size_bytes=0
        )  # tried again one interval from now
        return False
