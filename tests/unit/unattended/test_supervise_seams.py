"""The supervisor's pure parts and its Windows seam (the Windows branch cannot run here: the process API calls
are recorded instead). Real processes and signals are in tests/integration/test_supervisor.py."""

from __future__ import annotations

import subprocess

import pytest

from aegis_ckpt import exitcodes
from aegis_ckpt.errors import ConfigError
from aegis_ckpt.exitcodes import STOP_EXIT_CODES
from aegis_ckpt.system.process import ProcessControl, WindowsProcessControl
from aegis_ckpt.unattended.supervise import SuperviseOptions


class RecordingProc:
    pid = 4242
    returncode = None

    def __init__(self):
        self.sent: list[int] = []
        self.killed = False

    def send_signal(self, sig):
        self.sent.append(sig)

    def kill(self):
        self.killed = True


def test_exit_codes():
    assert exitcodes.normalize_exit_code(-9) == 137 and exitcodes.normalize_exit_code(3) == 3
    assert exitcodes.describe_exit(137) == "exit code 137 (SIGKILL)"
    assert exitcodes.describe_exit(1) == "exit code 1"
    # stop requests on every platform: SIGHUP/SIGINT/SIGTERM, Windows Ctrl+Break (SIGBREAK 21), STATUS_CONTROL_C_EXIT
    assert {129, 130, 143, 149, 0xC000013A} == set(STOP_EXIT_CODES)
    assert 137 not in STOP_EXIT_CODES and 139 not in STOP_EXIT_CODES  # SIGKILL, SIGSEGV: crashes


def test_windows_child_gets_its_own_process_group(monkeypatch):
    seen = {}
    monkeypatch.setattr(subprocess, "Popen", lambda cmd, **kw: seen.update(cmd=cmd, **kw) or RecordingProc())
    WindowsProcessControl().spawn(["python", "-m", "aegis_ckpt", "train", "c.yaml"], {"A": "1"})
    assert seen["creationflags"] == 0x200  # CREATE_NEW_PROCESS_GROUP: Ctrl+C at the console skips the child
    assert seen["env"] == {"A": "1"} and "start_new_session" not in seen


def test_windows_stop_is_ctrl_break_to_the_group():
    proc = RecordingProc()
    control = WindowsProcessControl()
    control.forward(proc, 2)  # a Ctrl+C the supervisor received
    control.ask_to_stop(proc)  # a hung child
    assert proc.sent == [1, 1]  # CTRL_BREAK_EVENT, the only console event that can target one group
    assert control.stop_signals == (2, 21)


@pytest.mark.parametrize("taskkill_rc, falls_back", [(0, False), (128, True)])
def test_windows_kill_tree_uses_taskkill(monkeypatch, taskkill_rc, falls_back):
    calls = []

    def fake_run(cmd, **kw):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, taskkill_rc, "", "")

    monkeypatch.setattr(subprocess, "run", fake_run)
    proc = RecordingProc()
    WindowsProcessControl().kill_tree(proc)
    assert calls == [["taskkill", "/T", "/F", "/PID", "4242"]]
    assert proc.killed is falls_back


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"max_restarts": -1}, "max_restarts must be an integer >= 0"),
        ({"backoff_sec": -1}, "backoff_sec must be a number >= 0"),
        ({"hang_timeout_sec": 0}, "hang_timeout_sec must be a number > 0"),
        ({"inject_checkpoint": {"max_keep": 0}}, "max_keep must be an integer >= 1"),
        ({"inject_checkpoint": {"every": 3}}, "unknown key(s) in injected checkpoint options: every"),
    ],
)
def test_options_validation(kwargs, message):
    with pytest.raises(ConfigError) as e:
        SuperviseOptions(**kwargs)
    assert message in str(e.value)


def test_inject_options_need_inject(capsys):
    from aegis_ckpt.cli import main

    assert main(["run", "--save-interval", "5", "--", "true"]) == 2
    assert "add --inject" in capsys.readouterr().err


def test_posix_kill_tree_reaches_descendants_in_their_own_session(tmp_path):
    """torchrun starts each worker in a session of its own; killing the launcher's group alone leaves them."""
    import sys
    import time

    import psutil

    pid_file = tmp_path / "grandchild.pid"
    launcher = (
        "import subprocess, sys, time\n"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'], start_new_session=True)\n"
        f"open({str(pid_file)!r}, 'w').write(str(p.pid))\n"
        "time.sleep(120)\n"
    )
    proc = ProcessControl().spawn([sys.executable, "-c", launcher], env=None)
    deadline = time.monotonic() + 30
    while not (pid_file.exists() and pid_file.read_text()):
        assert time.monotonic() < deadline, "the launcher did not start its worker"
        time.sleep(0.05)
    worker = psutil.Process(int(pid_file.read_text()))
    assert worker.is_running()
    ProcessControl().kill_tree(proc)
    proc.wait(10)
    worker.wait(10)  # raises psutil.TimeoutExpired if the worker survived
    assert not psutil.pid_exists(worker.pid) or worker.status() == psutil.STATUS_ZOMBIE
