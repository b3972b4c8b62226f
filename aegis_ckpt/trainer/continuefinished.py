"""A finished run started again with a higher last step: say so once, and withdraw its completion record.

``trainentry`` has already decided that the checkpoint ``train()`` resumes from does not reach the run's last
step, so training goes on. Whether that is an ordinary resume or the continuation of a run that had finished
is told by the completion record; for the latter this module writes the one log line ("Continuing finished run
from step N to M") and withdraws the record (``runstate.completion.withdraw_completion``): until the new end the
directory holds an unfinished run, so a stop, a crash or a reboot in between resumes instead of reporting
"already finished", and the new end writes a new record.
"""

from __future__ import annotations

import logging
import os

from ..runstate.completion import read_completion, withdraw_completion
from ..runstate.continuation import read_trainer_state

logger = logging.getLogger(__name__)


def continue_finished_run(trainer, checkpoint: str | os.PathLike, steps: tuple[int, int] | None) -> None:
    """``steps``: (the checkpoint's step, the run's last step) when known without the Trainer, else None."""
    args = trainer.args
    record = read_completion(args.output_dir)
    if record is None:
        return
    if steps is None:
        state = read_trainer_state(checkpoint) or {}
        target = trainer_last_step(trainer)
        if not isinstance(state.get("global_step"), int) or target is None:
            return
        steps = (state["global_step"], target)
    step, target = steps
    if target <= step:
        return
    logger.info(
        "Continuing finished run from step %d to %d: it had finished at step %s, and its last step is now %d "
        "(max_steps or num_train_epochs was raised)",
        step,
        target,
        record.get("step"),
        target,
    )
    if args.should_save:
        withdraw_completion(args.output_dir)


def trainer_last_step(trainer) -> int | None:
    """The last step the Trainer will train to with its arguments and data (an epoch-based run whose number of
    epochs changed); None when it cannot tell (a dataset without a length)."""
    try:
        return int(trainer.set_initial_training_values(trainer.args, trainer.get_train_dataloader())[-1])
    except Exception:  # noqa: BLE001 - only a log line and the record depend on it; train() reports real errors
        return None
