"""How the supervisor starts a child, tells it to stop, and kills it with everything it started.

POSIX: the child gets a session of its own, so terminal signals reach it only through the supervisor, once.
Windows: a process group of its own, and Ctrl+Break (the only console event that can target one group) to stop
it; ``taskkill /T`` for the tree. The Windows class is tested on Linux with ``subprocess`` behind a seam.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Sequence

from .platform import IS_WINDOWS, SIGBREAK


# ---- the platform seam -----------------------------------------------------------------------------------------
class ProcessControl:
    """How a child is started, told to stop, and killed. POSIX here; Windows below."""

    stop_signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", 1))

    def spawn(self, cmd: Sequence[str], env: dict[str, str]) -> subprocess.Popen:
        # Own session: terminal signals reach the child only through the supervisor, once.
        return subprocess.Popen(list(cmd), env=env, start_new_session=True)

    def forward(self, proc: subprocess.Popen, signum: int) -> None:
        # To the child only, not its group: a launcher like torchrun forwards to its workers itself, and a
        # second copy of the signal would mean "exit now" to them.
        proc.send_signal(signum)

    def ask_to_stop(self, proc: subprocess.Popen) -> None:
        proc.send_signal(signal.SIGTERM)

    def kill_tree(self, proc: subprocess.Popen) -> None:
        # Its process group, and every descendant found before the kill: torchrun starts each worker in a
        # session of its own, out of reach of the group, and a surviving worker would hold the run lease.
        import psutil

        try:
            descendants = psutil.Process(proc.pid).children(recursive=True)
        except psutil.Error:
            descendants = []
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            proc.kill()
        for child in descendants:
            try:
                child.kill()
            except psutil.Error:
                pass


class WindowsProcessControl(ProcessControl):
    """The child gets its own process group: Ctrl+C at the console then reaches only the supervisor, which
    sends Ctrl+Break to the child's group (the only console event that can target one group)."""

    stop_signals = (signal.SIGINT, SIGBREAK)

    def spawn(self, cmd: Sequence[str], env: dict[str, str]) -> subprocess.Popen:
        flags = getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0x200)
        return subprocess.Popen(list(cmd), env=env, creationflags=flags)

    def forward(self, proc: subprocess.Popen, signum: int) -> None:
        proc.send_signal(getattr(signal, "CTRL_BREAK_EVENT", 1))

    def ask_to_stop(self, proc: subprocess.Popen) -> None:
        self.forward(proc, SIGBREAK)

    def kill_tree(self, proc: subprocess.Popen) -> None:
        result = subprocess.run(
            ["taskkill", "/T", "/F", "/PID", str(proc.pid)], capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            proc.kill()


def default_process_control() -> ProcessControl:
    return WindowsProcessControl() if IS_WINDOWS else ProcessControl()
