"""``aegis-ckpt run -- CMD ...``: keep a training command alive until it finishes, unattended.

What the supervisor decides from the child's exit (``exitcodes.py`` is the contract):

* ``0``: finished (or already finished): exit 0.
* ``2``: bad input: restarting cannot help: exit 2 at once.
* ``128 + SIGINT/SIGTERM/SIGHUP`` (and Windows' Ctrl+Break / Ctrl+C exits): somebody asked the run to stop and it
  committed its emergency checkpoint: no restart, exit with that code.
* anything else, including a SIGKILL or a segfault the supervisor did not send: a failure: restart after an
  exponential backoff, within a budget of ``max_restarts`` restarts *in a row without progress*. Progress is a
  heartbeat step beyond every step seen before; a run that crashes once a day after hours of training is not the
  crash loop the budget is for, while one that dies at the same step again and again is. Out of budget: exit 1.

A stop signal sent to the supervisor (Ctrl+C, ``kill``, ``systemctl stop``, the terminal closing) is forwarded to
the child once (``stoprequests``), and the supervisor then waits for the child's emergency checkpoint and does
not restart it, even during a backoff wait.

Hangs: the child's ``AegisCheckpointCallback`` rewrites the file named by ``AEGIS_HEARTBEAT_FILE`` (set here)
at least every 5 s of training and around saves. Once a first heartbeat arrived, no new one for
``hang_timeout_sec`` means the run is stuck: it gets SIGTERM (Windows: Ctrl+Break), then after
``kill_grace_sec`` its whole process group is killed, and it is restarted like a crash. Before the first
heartbeat (imports, downloads, tokenization) only ``startup_grace_sec`` applies, and only when set, so a command
that never writes heartbeats is never killed for it. Time is measured with a monotonic clock on the
supervisor's side, so clock changes do not fake a hang.

Every decision is logged with a timestamp. The child runs in its own session / process group, so a Ctrl+C at
the terminal reaches it exactly once (through the supervisor) instead of twice, which the child would read as
"exit immediately, skip the checkpoint".
"""

from __future__ import annotations

import logging
import os
import shlex
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError
from ..exitcodes import (
    EXIT_BAD_INPUT,
    EXIT_FAILURE,
    EXIT_OK,
    STOP_EXIT_CODES,
    describe_exit,
    exit_code_for_signal,
    normalize_exit_code,
)
from ..runstate.heartbeat import HEARTBEAT_ENV, HeartbeatWatcher
from ..storage import fsio
from ..system.platform import signal_name
from ..system.process import ProcessControl, default_process_control
from ..system.redact import redact_argv
from .stoprequests import StopRequests

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class SuperviseOptions:
    """How ``aegis-ckpt run`` restarts, waits and detects hangs."""

    max_restarts: int = 5
    """Restarts in a row without training progress before giving up (exit 1)."""
    backoff_sec: float = 10.0
    """Wait before the first restart; doubles with each failure in a row."""
    backoff_max_sec: float = 300.0
    """Upper bound of the doubling wait."""
    hang_timeout_sec: float | None = 1800.0
    """No heartbeat for this long, once the first one arrived, means hung. None disables. Must exceed the longest
    save and evaluation: the Trainer writes no heartbeat while it evaluates."""
    startup_grace_sec: float | None = None
    """Kill a child that wrote no first heartbeat after this long. None: wait for the first one forever (for
    commands that never write heartbeats)."""
    kill_grace_sec: float = 30.0
    """After the polite stop of a hung child, wait this long before killing its process group."""
    poll_sec: float = 0.2
    """How often the child, the heartbeat and pending signals are looked at."""
    inject: bool = False
    """Inject ``AegisCheckpointCallback`` and resume-from-newest-intact into an unmodified Trainer script."""
    inject_checkpoint: dict = field(default_factory=dict)
    """``CheckpointOptions`` fields for the injected callback (e.g. ``save_interval_sec``)."""

    def __post_init__(self) -> None:
        if (
            isinstance(self.max_restarts, bool)
            or not isinstance(self.max_restarts, int)
            or self.max_restarts < 0
        ):
            raise ConfigError(f"max_restarts must be an integer >= 0 (got {self.max_restarts!r})")
        for name in ("backoff_sec", "backoff_max_sec", "kill_grace_sec"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0:
                raise ConfigError(f"{name} must be a number >= 0 (got {value!r})")
        for name in ("hang_timeout_sec", "startup_grace_sec"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, (int, float)) or value <= 0):
                raise ConfigError(f"{name} must be a number > 0, or unset to disable (got {value!r})")
        if not self.poll_sec > 0:
            raise ConfigError(f"poll_sec must be > 0 (got {self.poll_sec!r})")
        if self.inject_checkpoint:
            from ..options import CheckpointOptions

            CheckpointOptions.from_mapping(self.inject_checkpoint, where="injected checkpoint options")


# ---- one attempt -----------------------------------------------------------------------------------------------
@dataclass
class Attempt:
    number: int
    code: int | None = None
    hung: bool = False
    first_step: int | None = None
    max_step: int | None = None
    beats: int = 0
    seconds: float = 0.0


# ---- the supervisor --------------------------------------------------------------------------------------------
class Supervisor:
    """Runs ``cmd`` until it finishes, is stopped on request, fails for good, or runs out of restarts."""

    def __init__(
        self,
        cmd: Sequence[str],
        options: SuperviseOptions | None = None,
        *,
        control: ProcessControl | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        if not cmd:
            raise ConfigError("no command to run: use aegis-ckpt run [options] -- CMD ...")
        self.cmd = list(cmd)
        self._shown_cmd = shlex.join(redact_argv(self.cmd))
        """The command line as logged: secret option values and URL tokens masked (``system.redact``)."""
        self.options = options or SuperviseOptions()
        self.control = control or default_process_control()
        self.clock = clock
        self.attempts: list[Attempt] = []
        self._stops = StopRequests(self.control, clock)
        self._workdir: Path | None = None

    # -- environment --
    def _child_env(self, heartbeat: Path) -> dict[str, str]:
        env = dict(os.environ)
        env[HEARTBEAT_ENV] = str(heartbeat)
        # The log file should hold the child's last lines before a crash, not lose them in a buffer.
        env.setdefault("PYTHONUNBUFFERED", "1")
        if self.options.inject:
            from .inject import injection_env

            env.update(injection_env(env, self.options.inject_checkpoint))
        return env

    # -- one attempt --
    @staticmethod
    def _take_beat(attempt: Attempt, record: dict | None) -> None:
        if record is None:
            return
        attempt.beats += 1
        step = record.get("step")
        if isinstance(step, int):
            attempt.max_step = step if attempt.max_step is None else max(attempt.max_step, step)
            if attempt.first_step is None:
                attempt.first_step = step

    def _run_attempt(self, attempt: Attempt) -> None:
        opts = self.options
        workdir = self._workdir if self._workdir is not None else Path(tempfile.gettempdir())
        hb_path = workdir / f"aegis-heartbeat-{os.getpid()}-{attempt.number}.json"
        heartbeat = HeartbeatWatcher(hb_path)
        started = self.clock()
        proc = self.control.spawn(self.cmd, self._child_env(hb_path))
        logger.info("attempt %d: started pid %d: %s", attempt.number, proc.pid, self._shown_cmd)
        last_beat = started
        stopping_since: float | None = None
        killed = False
        while True:
            self._stops.handle(proc)
            code = proc.poll()
            if code is not None:
                self._take_beat(attempt, heartbeat.poll())  # the last words of a quick crash count too
                break
            now = self.clock()
            record = heartbeat.poll()
            if record is not None:
                last_beat = now
                self._take_beat(attempt, record)
                if attempt.beats == 1:
                    logger.info(
                        "attempt %d: first heartbeat (pid %s, step %s, phase %s): hang detection armed (%s)",
                        attempt.number,
                        record.get("pid"),
                        record.get("step"),
                        record.get("phase"),
                        f"{opts.hang_timeout_sec:g} s" if opts.hang_timeout_sec else "disabled",
                    )
            if stopping_since is None:
                reason = self._hang_reason(attempt, now - last_beat)
                if reason:
                    stopping_since = now
                    self._stop_hung(attempt, proc, reason)
            elif not killed and now - stopping_since > opts.kill_grace_sec:
                logger.error(
                    "attempt %d: still running %g s later: killing its process group",
                    attempt.number,
                    opts.kill_grace_sec,
                )
                self.control.kill_tree(proc)
                killed = True
            time.sleep(opts.poll_sec)
        if not killed:
            # Whatever the child left behind in its group (a launcher's ranks, dataloader workers) goes too:
            # orphaned ranks would hold the GPU memory the restart needs.
            try:
                self.control.kill_tree(proc)
            except OSError:
                pass
        attempt.code = normalize_exit_code(code)
        attempt.seconds = self.clock() - started

    def _hang_reason(self, attempt: Attempt, silent: float) -> str:
        """Why ``attempt`` counts as hung after ``silent`` seconds without a heartbeat ("" while it does not)."""
        opts = self.options
        if attempt.beats and opts.hang_timeout_sec and silent > opts.hang_timeout_sec:
            return f"no heartbeat for {silent:.0f} s (hang timeout {opts.hang_timeout_sec:g} s, last step {attempt.max_step})"
        if not attempt.beats and opts.startup_grace_sec and silent > opts.startup_grace_sec:
            return f"no first heartbeat after {silent:.0f} s (startup grace {opts.startup_grace_sec:g} s)"
        return ""

    def _stop_hung(self, attempt: Attempt, proc, reason: str) -> None:
        """Mark ``attempt`` as hung and ask it to stop (it is killed ``kill_grace_sec`` later if it does not)."""
        attempt.hung = True
        logger.error(
            "attempt %d: %s: the run is hung; asking it to stop, killing it in %g s if it does not",
            attempt.number,
            reason,
            self.options.kill_grace_sec,
        )
        try:
            self.control.ask_to_stop(proc)
        except OSError as e:
            logger.debug("stop request failed: %s", e)

    def _wait(self, seconds: float) -> bool:
        """Sleep for a backoff; False when a stop signal arrived meanwhile."""
        deadline = self.clock() + seconds
        while self.clock() < deadline:
            self._stops.handle(None)
            if self._stops.signal is not None:
                return False
            time.sleep(min(self.options.poll_sec, max(0.0, deadline - self.clock())))
        self._stops.handle(None)
        return self._stops.signal is None

    # -- the loop --
    def run(self) -> int:
        previous = self._stops.install()
        self._workdir = Path(tempfile.mkdtemp(prefix="aegis-run-"))
        try:
            return self._loop()
        finally:
            self._stops.restore(previous)
            fsio.rmtree(self._workdir, ignore_errors=True)

    def _loop(self) -> int:
        opts = self.options
        logger.info(
            "supervising: %s (restarts in a row without progress: %d, backoff %g..%g s, hang timeout %s%s)",
            self._shown_cmd,
            opts.max_restarts,
            opts.backoff_sec,
            opts.backoff_max_sec,
            f"{opts.hang_timeout_sec:g} s" if opts.hang_timeout_sec else "off",
            ", injecting the aegis callback" if opts.inject else "",
        )
        failures_in_a_row = 0
        best_step: int | None = None
        while True:
            attempt = Attempt(len(self.attempts) + 1)
            self.attempts.append(attempt)
            try:
                self._run_attempt(attempt)
            except OSError as e:
                logger.error(
                    "cannot start %s: %s: check the command and PATH; not restarting", self.cmd[0], e
                )
                return EXIT_BAD_INPUT
            final_code = self._final_code(attempt)
            if final_code is not None:
                return final_code
            if _made_progress(attempt, best_step):
                if failures_in_a_row:
                    logger.info(
                        "attempt %d made progress (step %s -> %s): restart budget reset",
                        attempt.number,
                        best_step if best_step is not None else attempt.first_step,
                        attempt.max_step,
                    )
                failures_in_a_row = 0
            if attempt.max_step is not None:
                best_step = attempt.max_step if best_step is None else max(best_step, attempt.max_step)
            failures_in_a_row += 1
            if failures_in_a_row > opts.max_restarts:
                logger.error(
                    "giving up after %d attempt(s): %d failure(s) in a row without progress "
                    "(max_restarts=%d); the newest committed checkpoint is kept for the next start",
                    attempt.number,
                    failures_in_a_row,
                    opts.max_restarts,
                )
                return EXIT_FAILURE
            delay = min(opts.backoff_sec * 2 ** (failures_in_a_row - 1), opts.backoff_max_sec)
            logger.warning(
                "restarting in %g s (restart %d of %d in a row without progress)",
                delay,
                failures_in_a_row,
                opts.max_restarts,
            )
            if not self._wait(delay):
                name = signal_name(self._stops.signal or 0)
                logger.warning("received %s while waiting to restart: not restarting", name)
                return exit_code_for_signal(self._stops.signal or 0)

    def _final_code(self, attempt: Attempt) -> int | None:
        """Log how ``attempt`` ended; the code to exit with when no restart can or may follow, else None."""
        code = attempt.code if attempt.code is not None else EXIT_FAILURE
        summary = f"attempt {attempt.number}: {describe_exit(code)} after {attempt.seconds:.1f} s"
        if self._stops.signal is not None:
            name = signal_name(self._stops.signal)
            if code == EXIT_OK:
                logger.info("%s: finished while stopping", summary)
                return EXIT_OK
            logger.warning("%s: stopped on request (%s); not restarting", summary, name)
            return exit_code_for_signal(self._stops.signal)
        if attempt.hung:
            logger.error("%s: killed as hung", summary)
        elif code == EXIT_OK:
            logger.info("%s: finished", summary)
            return EXIT_OK
        elif code == EXIT_BAD_INPUT:
            logger.error("%s: bad input (config, command line or output dir); a restart cannot help", summary)
            return EXIT_BAD_INPUT
        elif code in STOP_EXIT_CODES:
            logger.warning("%s: the run was stopped by a signal sent to it; not restarting", summary)
            return code
        else:
            logger.error("%s: failed", summary)
        return None


def _made_progress(attempt: Attempt, best_step: int | None) -> bool:
    """Whether ``attempt`` trained beyond every step reached before (and beyond where it started)."""
    return attempt.max_step is not None and attempt.max_step > max(
        best_step if best_step is not None else -1,
        attempt.first_step if attempt.first_step is not None else -1,
    )


def run_supervised(cmd: Sequence[str], options: SuperviseOptions | None = None) -> int:
    """Entry point of ``aegis-ckpt run``: supervise ``cmd`` and return the exit code to leave with."""
    return Supervisor(cmd, options).run()
