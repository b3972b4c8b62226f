"""Paths and the child-process environment shared by the tests (imported as ``testenv``; ``tests/scripts`` is on
``sys.path``). Tests import these from here rather than from ``conftest``: several directories have a
``conftest.py``, and which one ``import conftest`` finds depends on the collection order."""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPTS_DIR = Path(__file__).resolve().parent


def subprocess_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for child Pythons: import ``aegis_ckpt`` from the repo under test, and stay offline."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), str(SCRIPTS_DIR)])
    env.update(
        {
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "OMP_NUM_THREADS": "1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra or {})
    return env


def with_default_sigint(cmd: list[str]) -> list[str]:
    """``cmd`` (a command line) started with SIGINT at its default disposition and unblocked.

    A child inherits an ignored or blocked SIGINT from its parent, and Python then never installs its
    ``KeyboardInterrupt`` handler, so the child would not see Ctrl+C at all. A suite started as a background job
    of a non-interactive shell (``pytest ... &`` in a script) runs with SIGINT ignored in every worker, so
    without this the Ctrl+C tests hung there. They are about aegis-ckpt, not their parent: their children start
    as they would from an interactive shell."""
    boot = (
        "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
        "signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT]); os.execv(sys.argv[1], sys.argv[1:])"
    )
    return [sys.executable, "-c", boot, *map(str, cmd)]


def ctrl_c_after_line(
    cmd: list[str],
    line: str,
    *,
    cwd: str | os.PathLike | None = None,
    settle: float = 0.0,
    timeout: float = 30,
) -> tuple[int, str, float]:
    """Start ``cmd`` (Ctrl+C at its default, see ``with_default_sigint``), wait until its first stdout line is
    ``line``, wait ``settle`` seconds more, send a real SIGINT. Returns the exit code, the whole stderr and the
    seconds from the signal to the exit."""
    import signal
    import subprocess
    import time

    proc = subprocess.Popen(
        with_default_sigint(cmd),
        cwd=cwd,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first = proc.stdout.readline().strip()
        assert first == line, (first, proc.stderr.read() if proc.poll() is not None else "")
        time.sleep(settle)
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout)
        took = time.monotonic() - sent
        return code, proc.stderr.read(), took
    finally:
        proc.kill()
        proc.wait()
