"""Process exit codes, shared by the CLI, the emergency-save path, the supervisor and the launchers.

A supervisor decides from these whether to restart: bad input is permanent, a signal stop was asked for, and
anything else non-zero is a failure worth a restart.
"""

from __future__ import annotations

import signal

from .system.platform import SIGBREAK, signal_name

EXIT_OK = 0
"""Training finished, or it had already finished before."""

EXIT_FAILURE = 1
"""An error during training (after a best-effort emergency checkpoint); restarting may help."""

EXIT_BAD_INPUT = 2
"""Bad config or command line, unusable output dir, failed preflight: restarting will not help."""

EXIT_SIGNAL_BASE = 128
"""Stopped by a signal after the emergency checkpoint committed: 128 + signal number (SIGTERM -> 143,
SIGINT -> 130, SIGHUP -> 129), the shell convention."""


def exit_code_for_signal(signum: int) -> int:
    return EXIT_SIGNAL_BASE + int(signum)


EXIT_REQUEUED = 0
"""A preemption notice under Slurm: the checkpoint committed and the job was requeued (``scontrol requeue``); it
runs again and resumes there. Zero, because Slurm counts any other exit of the job as a failure."""


EXIT_ALREADY_FINISHED = 3
"""Only from ``aegis-ckpt preflight``: the run already finished (``.aegis/completed.json``), so there is nothing
to check or train. The launchers log "already finished" and exit 0 without starting anything (no sound on every
boot). Never returned by ``train`` or ``run``: ``train`` returns 0 for an already finished run."""

STATUS_CONTROL_C_EXIT = 0xC000013A  # a Windows console process ended by Ctrl+C/Ctrl+Break without a handler
STOP_EXIT_CODES = frozenset(
    {EXIT_SIGNAL_BASE + s for s in (signal.SIGINT, signal.SIGTERM, 1, SIGBREAK)} | {STATUS_CONTROL_C_EXIT}
)
"""Exit codes that mean "stopped on request after the emergency checkpoint" (1 is SIGHUP, absent on Windows)."""


def normalize_exit_code(returncode: int) -> int:
    """POSIX reports death by signal N as -N; the shell (and our contract) calls it 128 + N."""
    return EXIT_SIGNAL_BASE - returncode if returncode < 0 else returncode


def describe_exit(code: int) -> str:
    if code > EXIT_SIGNAL_BASE and code < EXIT_SIGNAL_BASE + 65:
        return f"exit code {code} ({signal_name(code - EXIT_SIGNAL_BASE)})"
    if code == STATUS_CONTROL_C_EXIT:
        return f"exit code {code:#x} (Ctrl+C/Ctrl+Break)"
    return f"exit code {code}"
