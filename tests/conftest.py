"""Shared fixtures: a tiny GPT-2, a tiny dataset, a Trainer factory, a fake clock and a subprocess runner.

The model/data/arguments themselves live in ``tests/scripts/tinylib.py`` so that the subprocess scripts in
``tests/scripts/`` build exactly the same run as the in-process tests (a requirement for "bit-identical to an
uninterrupted run" comparisons across processes).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPTS_DIR = Path(__file__).resolve().parent / "scripts"

# tinylib is shared with the subprocess scripts; make it importable for the tests as well.
if str(SCRIPTS_DIR) not in sys.path:
    sys.path.insert(0, str(SCRIPTS_DIR))

import preloaded  # noqa: E402
import tinylib  # noqa: E402
from testenv import subprocess_env  # noqa: E402


def pytest_configure(config):
    # Same thread count as the subprocess scripts: in-process reference runs must match theirs bit for bit.
    tinylib.quiet_and_single_threaded()
    # Python children of the tests start from an interpreter that imported torch and transformers once
    # (tests/scripts/preloaded.py; AEGIS_TEST_PRELOAD=0 starts every child fresh).
    preloaded.install()


# --------------------------------------------------------------------------------------------------------------
# Model, data, Trainer
# --------------------------------------------------------------------------------------------------------------
@pytest.fixture
def tiny_gpt2() -> Callable:
    """Factory for a freshly initialised tiny GPT-2 (same seed -> same weights)."""
    return tinylib.build_model


@pytest.fixture
def tiny_dataset() -> tinylib.TinyLMDataset:
    """40 fixed random sequences of 16 tokens (10 optimizer steps per epoch at batch size 4)."""
    return tinylib.TinyLMDataset()


@pytest.fixture
def make_trainer(tiny_gpt2, tiny_dataset) -> Callable:
    """``make_trainer(output_dir, callbacks=[...], **training_args)`` -> a CPU ``Trainer`` on the tiny model.

    Defaults: batch size 4, ``max_steps=20``, ``save_strategy="no"``, ``report_to="none"``, no tqdm.
    """

    def factory(output_dir, callbacks=None, **training_args):
        return tinylib.make_trainer(
            output_dir, callbacks, model=tiny_gpt2(), train_dataset=tiny_dataset, **training_args
        )

    return factory


_REFERENCE_CACHE: dict[str, dict] = {}


@pytest.fixture
def reference_weights(tmp_path_factory) -> Callable:
    """``reference_weights(**training_args)`` -> final weights of an uninterrupted plain-Trainer run (no aegis
    callback, no saves), cached per argument set for the whole session."""

    def get(**training_args):
        key = json.dumps(training_args, sort_keys=True)
        if key not in _REFERENCE_CACHE:
            out = tmp_path_factory.mktemp("reference")
            trainer = tinylib.make_trainer(out, **training_args)
            trainer.train()
            _REFERENCE_CACHE[key] = tinylib.weights(trainer.model)
        return _REFERENCE_CACHE[key]

    return get


# --------------------------------------------------------------------------------------------------------------
# Clock
# --------------------------------------------------------------------------------------------------------------
@pytest.fixture
def fake_clock() -> tinylib.FakeClock:
    """``tinylib.FakeClock``: a settable monotonic clock, shared with the subprocess scripts."""
    return tinylib.FakeClock()


# --------------------------------------------------------------------------------------------------------------
# Subprocesses
# --------------------------------------------------------------------------------------------------------------
@dataclass
class RunResult:
    returncode: int
    stdout: str
    stderr: str
    killed: bool
    seconds: float


def _run_py(
    script: str | os.PathLike,
    args: list[str] | tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    *,
    kill_after: float | Callable[[], bool] | None = None,
    poll_sec: float = 0.001,
    timeout: float = 300.0,
) -> RunResult:
    """Run a Python script (a name is looked up in ``tests/scripts/``) in a child process.

    ``kill_after`` sends a real SIGKILL either after that many seconds, or as soon as the given predicate
    returns True (polled every ``poll_sec``). ``killed`` says whether our SIGKILL ended the process.
    """
    path = Path(script)
    if not path.is_absolute() and not path.exists():
        path = SCRIPTS_DIR / path
    cmd = [sys.executable, str(path), *map(str, args)]
    started = time.monotonic()
    proc = subprocess.Popen(
        cmd, env=subprocess_env(env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT
    )
    killed = False
    if kill_after is not None:
        should_kill = (
            (lambda: time.monotonic() - started >= kill_after) if not callable(kill_after) else kill_after
        )
        while proc.poll() is None:
            if time.monotonic() - started > timeout:
                break
            if should_kill():
                proc.send_signal(signal.SIGKILL)
                killed = True
                break
            time.sleep(poll_sec)
    try:
        stdout, stderr = proc.communicate(timeout=max(1.0, timeout - (time.monotonic() - started)))
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
        raise AssertionError(
            f"{cmd} timed out after {timeout} s\nstdout:\n{stdout}\nstderr:\n{stderr}"
        ) from None
    # A process that exited on its own just before our signal was not killed by us.
    killed = killed and proc.returncode == -signal.SIGKILL
    return RunResult(proc.returncode, stdout, stderr, killed, time.monotonic() - started)


@pytest.fixture
def run_py() -> Callable[..., RunResult]:
    """``run_py(script, args, env, kill_after=...)``: see :func:`_run_py`."""
    return _run_py


# --------------------------------------------------------------------------------------------------------------
# Checkpoint folders without a Trainer (fast unit tests on real file formats)
# --------------------------------------------------------------------------------------------------------------
def write_plain_checkpoint(folder: str | os.PathLike, step: int) -> Path:
    """Write a folder shaped like ``Trainer._save_checkpoint``'s output, with real file formats (safetensors,
    torch zip archives, JSON) but no Trainer run: ~30 ms instead of seconds."""
    import torch
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(step)
    save_file(
        {"w": torch.randn(64, 32, generator=g), "b": torch.randn(32, generator=g)},
        folder / "model.safetensors",
    )
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 2}), encoding="utf-8")
    torch.save(
        {"state": {0: {"exp_avg": torch.randn(64, 32, generator=g)}}, "param_groups": []},
        folder / "optimizer.pt",
    )
    torch.save({"last_epoch": step, "_step_count": step + 1}, folder / "scheduler.pt")
    torch.save({"cpu": torch.random.get_rng_state(), "python": None}, folder / "rng_state.pth")
    (folder / "trainer_state.json").write_text(
        json.dumps({"global_step": step, "epoch": step / 10}), encoding="utf-8"
    )
    return folder


@pytest.fixture
def plain_checkpoint() -> Callable[..., Path]:
    """``plain_checkpoint(output_dir, step)`` -> ``output_dir/checkpoint-<step>`` in the Trainer's layout."""

    def make(output_dir: str | os.PathLike, step: int) -> Path:
        return write_plain_checkpoint(Path(output_dir) / f"checkpoint-{step}", step)

    return make


@pytest.fixture
def committed_checkpoint(plain_checkpoint) -> Callable[..., Path]:
    """``committed_checkpoint(output_dir, step)`` -> a plain checkpoint folder committed with a manifest, in a
    directory marked as managed by aegis-ckpt."""
    from aegis_ckpt.storage.commit import commit_checkpoint
    from aegis_ckpt.storage.store import CheckpointStore

    def make(output_dir: str | os.PathLike, step: int) -> Path:
        CheckpointStore(output_dir).mark_managed()
        folder = plain_checkpoint(output_dir, step)
        commit_checkpoint(folder, step=step, reason="test")
        return folder

    return make


# --------------------------------------------------------------------------------------------------------------
# Parallel runs (pytest-xdist)
# --------------------------------------------------------------------------------------------------------------
# Test folders whose tests share machine-wide resources and run on one worker: one Slurm cluster (its daemons and
# the reference runs the cluster tests compare with), one Wine prefix and one fake python.exe.
_ONE_WORKER_FOLDERS = ("tests/cluster/", "tests/windows/")
_SHARED_FIXTURE = re.compile(r"""@pytest\.fixture\([^)]*scope=["'](module|session|package)["']""")


def _worker_scope(nodeid: str, rootpath: Path) -> str:
    """Which tests must run on the same worker: a whole folder of machine-wide resources, a whole file when it
    defines a module- or session-scoped fixture (built once instead of once per worker), otherwise the test
    alone. Decided from the node id only: the scheduler runs in the controller, which collects nothing."""
    path = nodeid.split("::", 1)[0]
    for folder in _ONE_WORKER_FOLDERS:
        if path.startswith(folder):
            return folder
    try:
        source = (rootpath / path).read_text(encoding="utf-8")
    except OSError:
        return nodeid
    return path if _SHARED_FIXTURE.search(source) else nodeid


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """xdist's own ``--dist loadgroup`` reads groups from node ids it rewrites in the workers, which pytest 9.2
    no longer honours (pytest-xdist issue 1386): the groups are decided here instead, from the node ids."""
    from xdist.scheduler import LoadScopeScheduling

    scopes: dict[str, str] = {}

    class SharedResourceScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            if nodeid not in scopes:
                scopes[nodeid] = _worker_scope(nodeid, config.rootpath)
            return scopes[nodeid]

    return SharedResourceScheduling(config, log)


# --------------------------------------------------------------------------------------------------------------
# Exit status
# --------------------------------------------------------------------------------------------------------------
def pytest_sessionfinish(session, exitstatus):
    """A marker or keyword selection that matches nothing (e.g. ``-m wine`` on a tree without Wine tests yet) is
    not a failure: turn pytest's exit 5 into 0 then. A run without selection that collects nothing stays 5."""
    option = session.config.option
    if exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED and (option.markexpr or option.keyword):
        session.exitstatus = pytest.ExitCode.OK
