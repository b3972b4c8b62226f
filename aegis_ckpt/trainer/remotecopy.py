"""The run's remote mirror as the Trainer callback drives it: opened once, on the one process that mirrors, caught
up on an upload the previous process could not finish, and closed within a bound when training ends or the process
is about to exit.

The committing main process uploads, after every rank wrote its files (the commit follows a barrier). With
``save_on_each_node`` the other nodes' main processes commit their own copies too; there is one remote copy per
run, so only the global main process mirrors. Kept apart from the callback because a rerun of a finished run needs
the same steps without any train begin or train end.
"""

from __future__ import annotations

from ..options import RemoteOptions
from ..remote.mirror import RemoteMirror


class TrainerMirror:
    """The remote mirror of one run (``mirror`` is None until opened, on processes that do not mirror, and after
    it was closed)."""

    def __init__(self, options: RemoteOptions) -> None:
        self.options = options
        self.mirror: RemoteMirror | None = None

    def open(self, args, *, local_max_keep: int) -> RemoteMirror | None:
        """The mirror of this run, started once, on the process that mirrors (None elsewhere)."""
        if self.options.enabled and args.should_save and args.process_index == 0 and self.mirror is None:
            self.mirror = RemoteMirror(self.options, args.output_dir, local_max_keep=local_max_keep)
        return self.mirror

    def catch_up(self) -> None:
        """Upload what the previous process committed but could not upload."""
        if self.mirror is not None:
            self.mirror.catch_up()

    def close(self, timeout_sec: float) -> None:
        """Training is over: wait (bounded) for the last upload, then stop the mirror."""
        if self.mirror is not None:
            self.mirror.close(timeout_sec)
            self.mirror = None

    def finish_rerun(self, args, *, local_max_keep: int) -> None:
        """A rerun of a finished run: no step runs, so no train begin either; an upload the previous process could
        not finish is completed here, within the same bound as at the end of training."""
        if self.open(args, local_max_keep=local_max_keep) is not None:
            self.catch_up()
            self.close(self.options.flush_timeout_sec)
