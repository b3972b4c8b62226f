"""The ranks of a custom loop under torch.distributed (torchrun, accelerate launch): who writes what, and how
every rank takes the same decision at the same step.

A save of a custom loop is collective: rank 0 writes the shared state (model, optimizer, loop state) and every
rank writes its own files (``rng_state_<rank>.pth``) into one staging folder, so a save started on one rank
alone would hang or commit a folder without the other ranks' files. Everything that starts a save is therefore
agreed through ``aegis_ckpt.distributed``, the same agreement the Trainer callback uses:

* at each safe point the ranks exchange ``StepFlags`` (the interval is due on some rank's clock, some rank got a
  stop signal) through ``StepAgreement``; the result, the MAX over all ranks, is read by every rank at the same
  step, so all of them save (or stop) at that step;
* what depends on the output directory (is this step already committed, did the commit succeed, which
  checkpoint to resume from) is decided by rank 0, which alone changes shared files, and shared with the others
  (``from_main``, ``share``);
* every write phase ends with an agreement on its failure (``any``), which doubles as the barrier: rank 0
  commits only after every rank confirmed its files are written.

Without a process group (or with one process) every call here is local and immediate: the single-process path
takes exactly the decisions it took before.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from .. import distributed
from ..distributed import PeerLostError, StepAgreement, StepFlags

logger = logging.getLogger(__name__)


class LoopRanks:
    """This process's place among the ranks, and the agreement calls of one ``LoopCheckpointer``."""

    def __init__(self, clock: Callable[[], float]):
        self.rank = distributed.rank()
        self.world_size = distributed.world_size()
        self.agreement = StepAgreement(clock=clock)
        self.last_saved_step: int | None = None
        self._closed = False

    @property
    def is_main(self) -> bool:
        """Whether this process writes the shared files (manifest, commit, retention, quarantine, run record)."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        """Whether several processes take part (every save and resume is then collective)."""
        return self.world_size > 1

    def setup(self) -> None:
        """Collective: every rank builds its manager at the same point of the program."""
        self.agreement.setup()

    def agree(self, local: StepFlags, *, step: int) -> StepFlags:
        """The flags every rank acts on at this safe point (see the module docstring).

        A "due" contributed at or before the step of the last save was already served by it (the agreement is
        pipelined and may report a step late): it is dropped, on every rank alike."""
        agreed = self.agreement.exchange(local, step=step)
        contributed_at = self.agreement.result_step
        if (
            agreed.save_due
            and contributed_at is not None
            and self.last_saved_step is not None
            and contributed_at <= self.last_saved_step
        ):
            agreed = StepFlags(signal=agreed.signal)
        return agreed

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on any rank; a collective, so also a barrier."""
        return distributed.agree_any(flag)

    def from_main(self, flag: bool) -> bool:
        """Rank 0's ``flag``, on every rank (a barrier too)."""
        return distributed.agree_any(bool(flag) and self.is_main)

    def share(self, value):
        """Rank 0's ``value`` (picklable), on every rank."""
        return distributed.share_from_main(value)

    def barrier(self) -> None:
        distributed.barrier()

    def close(self) -> None:
        """Drain and close the agreement (local; a lost peer is only logged)."""
        if self._closed:
            return
        self._closed = True
        try:
            self.agreement.close()
        except PeerLostError as e:  # close() already catches its own; a failing destroy must not mask an exit
            logger.debug("closing the rank agreement: %s", e)
