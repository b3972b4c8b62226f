"""`aegis-ckpt run` as a real process supervising real children, with real signals.

The child is ``tests/scripts/supervised_child.py`` (a stand-in that starts in milliseconds); the HF end-to-end
case with a real Trainer is in test_inject.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[2]
CHILD = REPO / "tests" / "scripts" / "supervised_child.py"


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    return e


class Sup:
    """A running ``aegis-ckpt run`` with its combined output in a file."""

    def __init__(self, tmp_path: Path, mode: str, *options: str, new_session: bool = False):
        self.state = tmp_path / "state"
        self.log = tmp_path / "supervisor.log"
        self._out = open(self.log, "w")
        cmd = [sys.executable, "-m", "aegis_ckpt", "run", *options, "--", sys.executable, str(CHILD), mode]
        self.proc = subprocess.Popen(
            [*cmd, str(self.state)],
            stdout=self._out,
            stderr=subprocess.STDOUT,
            env=env(),
            start_new_session=new_session,
        )

    def text(self) -> str:
        return self.log.read_text()

    def wait_for(self, predicate, what: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            if self.proc.poll() is not None and not predicate():
                pytest.fail(f"supervisor exited ({self.proc.returncode}) before {what}:\n{self.text()}")
            time.sleep(0.05)
        pytest.fail(f"timed out waiting for {what}:\n{self.text()}")

    def finish(self, timeout: float = 60) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self._out.close()

    def attempts(self) -> list[int]:
        path = self.state / "attempts"
        return [int(x) for x in path.read_text().split()] if path.exists() else []

    def signals(self) -> list[str]:
        path = self.state / "signals"
        return path.read_text().split() if path.exists() else []


def test_crashes_twice_then_succeeds(tmp_path):
    sup = Sup(tmp_path, "crash-twice", "--backoff", "0.2", "--max-restarts", "3")
    assert sup.finish() == 0, sup.text()
    log = sup.text()
    assert len(sup.attempts()) == 3
    assert log.count("exit code 1 after") == 2
    assert "restarting in 0.2 s (restart 1 of 3" in log and "restarting in 0.4 s (restart 2 of 3" in log
    assert "attempt 3: exit code 0" in log and "finished" in log
    # every decision line carries a timestamp
    decision_lines = [line for line in log.splitlines() if "[aegis-ckpt]" in line]
    assert decision_lines and all(line[:4].isdigit() and line[4] == "-" for line in decision_lines)


def test_restart_budget_is_respected(tmp_path):
    sup = Sup(tmp_path, "fail-always", "--backoff", "0.05", "--max-restarts", "2")
    assert sup.finish() == 1
    assert len(sup.attempts()) == 3, sup.text()
    assert "giving up after 3 attempt(s)" in sup.text()


def test_progress_resets_the_budget(tmp_path):
    """Each attempt trains further than any before it and then fails: not a crash loop, so with a budget of
    one restart in a row it still reaches attempt 5, which finishes."""
    sup = Sup(tmp_path, "progress-fail", "--backoff", "0.05", "--max-restarts", "1")
    assert sup.finish() == 0, sup.text()
    assert len(sup.attempts()) == 5
    assert "made progress (step 10 -> 20): restart budget reset" in sup.text()


def test_bad_input_is_not_restarted(tmp_path):
    sup = Sup(tmp_path, "bad-input", "--backoff", "0.05")
    assert sup.finish() == 2
    assert len(sup.attempts()) == 1
    assert "a restart cannot help" in sup.text()


def test_missing_command_is_bad_input(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "aegis_ckpt", "run", "--", str(tmp_path / "no-such-program")],
        capture_output=True,
        text=True,
        env=env(),
        timeout=60,
    )
    assert proc.returncode == 2
    assert "cannot start" in proc.stderr and "not restarting" in proc.stderr


def test_hung_child_is_killed_and_restarted(tmp_path):
    """Attempt 1 writes one heartbeat, then hangs and ignores SIGTERM: the supervisor must escalate to SIGKILL
    and restart; attempt 2 finishes."""
    sup = Sup(tmp_path, "hang-once", "--hang-timeout", "1", "--kill-grace", "1", "--backoff", "0.1")
    assert sup.finish() == 0, sup.text()
    log = sup.text()
    assert len(sup.attempts()) == 2
    assert "attempt 1: first heartbeat" in log
    assert "no heartbeat for" in log and "the run is hung" in log
    assert "killing its process group" in log
    assert "attempt 1: exit code 137 (SIGKILL)" in log and "killed as hung" in log
    assert not psutil.pid_exists(sup.attempts()[0])


def test_startup_grace_kills_a_child_that_never_beats(tmp_path):
    sup = Sup(tmp_path, "silent-once", "--startup-grace", "1", "--kill-grace", "1", "--backoff", "0.1")
    assert sup.finish() == 0, sup.text()
    assert "no first heartbeat after" in sup.text()
    assert len(sup.attempts()) == 2


def test_without_startup_grace_a_silent_child_is_left_alone(tmp_path):
    sup = Sup(tmp_path, "silent-once", "--hang-timeout", "0.5")
    try:
        sup.wait_for(lambda: len(sup.attempts()) == 1, "the first attempt")
        time.sleep(2)  # four hang timeouts without any heartbeat: not armed, so nothing may happen
        assert sup.proc.poll() is None and "hung" not in sup.text()
    finally:
        sup.proc.send_signal(signal.SIGTERM)
        sup.finish()


def test_sigkill_it_did_not_send_is_restarted(tmp_path):
    sup = Sup(tmp_path, "wait", "--backoff", "0.1")
    sup.wait_for(lambda: "first heartbeat" in sup.text(), "the first heartbeat")
    os.kill(sup.attempts()[0], signal.SIGKILL)
    assert sup.finish() == 0, sup.text()
    assert "attempt 1: exit code 137 (SIGKILL)" in sup.text() and "failed" in sup.text()
    assert len(sup.attempts()) == 2


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_stop_signal_is_forwarded_once_and_not_restarted(tmp_path, signum):
    sup = Sup(tmp_path, "trap", "--backoff", "0.1")
    sup.wait_for(lambda: (sup.state / "ready").exists(), "the child to be ready")
    sup.proc.send_signal(signum)
    code = sup.finish()
    assert code == 128 + signum, sup.text()
    assert sup.signals() == [signal.Signals(signum).name]
    assert len(sup.attempts()) == 1
    assert f"received {signal.Signals(signum).name}: forwarding it" in sup.text()
    assert "stopped on request" in sup.text()


def test_terminal_ctrl_c_reaches_the_child_once(tmp_path):
    """A Ctrl+C at a terminal goes to the whole foreground process group. The child runs in its own session,
    so it gets the signal once, from the supervisor, instead of twice (which means "stop now")."""
    sup = Sup(tmp_path, "trap", new_session=True)
    sup.wait_for(lambda: (sup.state / "ready").exists(), "the child to be ready")
    os.killpg(sup.proc.pid, signal.SIGINT)
    assert sup.finish() == 130, sup.text()
    assert sup.signals() == ["SIGINT"]


def test_duplicate_delivery_is_forwarded_once(tmp_path):
    """A terminal hangup reaches the supervisor twice (kernel and shell); the child must see one SIGHUP. The
    second copy is sent once the first was handled (two pending copies would merge in the kernel anyway)."""
    sup = Sup(tmp_path, "trap")
    sup.wait_for(lambda: (sup.state / "ready").exists(), "the child to be ready")
    sup.proc.send_signal(signal.SIGHUP)
    sup.wait_for(lambda: sup.signals() == ["SIGHUP"], "the child to get the first SIGHUP")
    sup.proc.send_signal(signal.SIGHUP)  # within the child's 0.5 s "emergency checkpoint"
    assert sup.finish() == 129, sup.text()
    assert sup.signals() == ["SIGHUP"]


def test_child_stopped_by_a_signal_sent_to_it_is_not_restarted(tmp_path):
    """systemd or the user may signal the training process itself: its 128+N exit is a requested stop."""
    sup = Sup(tmp_path, "trap", "--backoff", "0.1")
    sup.wait_for(lambda: (sup.state / "ready").exists(), "the child to be ready")
    os.kill(sup.attempts()[0], signal.SIGTERM)
    assert sup.finish() == 143, sup.text()
    assert len(sup.attempts()) == 1
    assert "stopped by a signal sent to it; not restarting" in sup.text()


def test_stop_during_backoff_means_no_restart(tmp_path):
    sup = Sup(tmp_path, "fail-always", "--backoff", "60")
    sup.wait_for(lambda: "restarting in 60 s" in sup.text(), "the backoff wait")
    sup.proc.send_signal(signal.SIGTERM)
    assert sup.finish(timeout=30) == 143
    assert len(sup.attempts()) == 1
    assert "while waiting to restart: not restarting" in sup.text()


def test_options_are_validated():
    proc = subprocess.run(
        [sys.executable, "-m", "aegis_ckpt", "run", "--max-restarts", "-1", "--", "true"],
        capture_output=True,
        text=True,
        env=env(),
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == "aegis-ckpt: error: max_restarts must be an integer >= 0 (got -1)"
    proc = subprocess.run(
        [sys.executable, "-m", "aegis_ckpt", "run"], capture_output=True, text=True, env=env(), timeout=60
    )
    assert proc.returncode == 2 and "no command to run" in proc.stderr
