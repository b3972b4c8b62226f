"""Which processes of a run upload to the remote, and how rank 0 learns that a remote copy is complete.

* One shared output dir (or one process): the committing main process uploads each checkpoint whole after its
  commit (every rank's files are in that folder by then), manifest last. The other ranks never talk to the remote.
* Node-local output dirs (``save_on_each_node`` under torchrun/accelerate): the first process of every node runs a
  ``NodeMirror`` that uploads what its node holds (``remote.parts``). Global rank 0 uploads a step's manifest only
  once all ranks agree that every node has uploaded its share of that step. That agreement rides on the step-end
  agreement the callback runs anyway (``StepFlags.uploads_from``, a pipelined all-reduce), so training never waits
  for an upload or for the other nodes; at the end of training (and after the collective emergency save) one
  blocking all-reduce settles the last step.

The session number that tags this run's part records and the number of nodes that upload a share are agreed once
at train begin (two small blocking all-reduces, on every rank, only in node-local runs with a remote).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable

from .. import distributed
from ..cluster.nodes import is_node_leader, node_local_checkpoints
from ..distributed import NO_UPLOAD_LIMIT, StepFlags
from ..options import RemoteOptions
from ..remote.mirror import RemoteMirror
from ..remote.nodemirror import NodeMirror

logger = logging.getLogger(__name__)


class RankUploads:
    """The remote mirror of this process (if any) and its part in the upload agreement (module docstring).

    Args:
        remote: the remote options of the run.
        max_keep: the local ``max_keep`` when the mirror opens (the default of remote retention).
    """

    def __init__(self, remote: RemoteOptions, max_keep: Callable[[], int]):
        self.remote = remote
        self._max_keep = max_keep
        self.node_local = False
        """True in a node-local run with a remote: every rank takes part in the upload agreement."""
        self.mirror: RemoteMirror | None = None

    def open(self, args, *, collective: bool) -> RemoteMirror | None:
        """Start this process's mirror once (None where this process uploads nothing). ``collective``: every
        rank calls this at the same point (train begin), so a node-local run can agree on its session; without
        it a node-local run starts no mirror (its nodes could not agree on what is complete)."""
        if self.mirror is not None or not self.remote.enabled:
            return self.mirror
        if node_local_checkpoints(args):
            if not collective:
                return None
            self.node_local = True
            uploads_part = args.should_save and is_node_leader() and distributed.rank() != 0
            session = distributed.agree_min(random.randrange(1, NO_UPLOAD_LIMIT))
            parts = distributed.agree_sum(int(uploads_part))
            if args.should_save and is_node_leader():
                self.mirror = NodeMirror(
                    self.remote,
                    args.output_dir,
                    rank=distributed.rank(),
                    session=session,
                    parts_expected=parts,
                    local_max_keep=self._max_keep(),
                )
        elif args.should_save and args.process_index == 0:
            self.mirror = RemoteMirror(self.remote, args.output_dir, local_max_keep=self._max_keep())
        return self.mirror

    def contribution(self) -> int:
        """This rank's ``StepFlags.uploads_from``: minus the newest step whose share it has uploaded."""
        mirror = self.mirror
        if isinstance(mirror, NodeMirror) and not mirror.coordinator:
            return -mirror.uploaded_step
        return -NO_UPLOAD_LIMIT

    def agreed(self, flags: StepFlags, *, contributed_at: int | None) -> None:
        """The step-end agreement returned ``flags`` (``contributed_at`` None: no agreement at this step)."""
        if contributed_at is not None and isinstance(self.mirror, NodeMirror) and self.mirror.coordinator:
            self.mirror.peers_reached(flags.uploaded_by_all)

    def finish(self, timeout_sec: float, *, collective: bool) -> None:
        """Training is over: wait (bounded) for this process's uploads; in a node-local run with ``collective``
        (every rank is here, e.g. train end) agree on the last step every node uploaded, so rank 0 can upload
        its manifest; then stop the mirror."""
        deadline = time.monotonic() + timeout_sec
        mirror, self.mirror = self.mirror, None
        if mirror is not None:
            mirror.flush(timeout_sec)
        if self.node_local and collective:
            try:
                reached = distributed.agree_min(-self.contribution())
            except RuntimeError as e:  # a peer is gone: its share is unknown, so no manifest now
                logger.warning("Could not agree on the uploaded steps with the other ranks: %s", e)
                reached = 0
            if isinstance(mirror, NodeMirror) and mirror.coordinator:
                mirror.peers_reached(reached)
        if mirror is not None:
            mirror.close(max(0.0, deadline - time.monotonic()))

    def catch_up_finished(self, args, timeout_sec: float) -> None:
        """A rerun of a finished run (no step is trained): upload the newest committed checkpoint if the remote
        lacks it, e.g. because the last upload or the remote commit of the last step was cut short. A
        collective, like train begin: in a node-local run every node uploads its share of that step (its part
        record tagged with a session agreed now) and rank 0 commits the union once all ranks agree every share
        is there; elsewhere the main process uploads it whole. Bounded by ``timeout_sec``."""
        mirror = self.open(args, collective=True)
        if mirror is not None:
            mirror.catch_up()
        self.finish(timeout_sec, collective=True)
