"""launch/auto_train.sh under bash: the same cases as the .bat under Wine (fake python recording its calls), plus
one real end-to-end story on the shipped tiny config shrunk with a small YAML: start, power cut (SIGKILL of the
whole process tree), start again -> training continued and finished with the end notification, start again ->
"already finished"."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[2]
LAUNCHER = REPO / "launch" / "auto_train.sh"

FAKE_PYTHON = r"""#!/bin/bash
# A stand-in for the venv's python3: records the call, answers by aegis_ckpt subcommand.
printf 'argv=%s | VIRTUAL_ENV=%s | cwd=%s\n' "$*" "${VIRTUAL_ENV:-}" "$PWD" >> "$FAKEPY_LOG"
case "${3:-}" in
  preflight) echo "[preflight] OK       disk        fake preflight line"; exit "${FAKEPY_RC_PREFLIGHT:-0}" ;;
  run)
    echo "fake training output on stdout"; echo "fake training output on stderr" >&2
    if [ -n "${FAKEPY_TRAP:-}" ]; then
      trap 'echo TERM >> "$FAKEPY_TRAP"; exit 143' TERM
      echo ready > "$FAKEPY_TRAP.ready"
      while :; do sleep 0.05; done
    fi
    exit "${FAKEPY_RC_RUN:-0}" ;;
  notify) echo "fake notify $4"; exit 0 ;;
  launcher) [ "${4:-}" = --log-dir ] && [ -n "${FAKEPY_LOG_DIR:-}" ] && { echo "$FAKEPY_LOG_DIR"; exit 0; }; exit 2 ;;
esac
exit 99
"""
ACTIVATE = 'export VIRTUAL_ENV="{venv}"\nexport PATH="{bin}:$PATH"\n'


def make_executable(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


class ShProject:
    def __init__(self, root: Path):
        self.root = root
        (root / "launch").mkdir(parents=True)
        shutil.copy(LAUNCHER, root / "launch" / "auto_train.sh")
        (root / "configs").mkdir()
        (root / "configs" / "tiny.yaml").write_text("# placeholder\n")
        self.calls_file = root.parent / "calls.txt"
        # A PATH without any python: only what the launcher itself needs.
        self.bare_bin = root.parent / "bare-bin"
        self.bare_bin.mkdir()
        for tool in ("bash", "dirname", "date", "mkdir", "sleep"):
            (self.bare_bin / tool).symlink_to(shutil.which(tool))

    def make_fake_venv(self, name: str = ".venv") -> None:
        bin_dir = self.root / name / "bin"
        bin_dir.mkdir(parents=True)
        make_executable(bin_dir / "python3", FAKE_PYTHON)
        (bin_dir / "activate").write_text(ACTIVATE.format(venv=self.root / name, bin=bin_dir))

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AEGIS_", "VIRTUAL_ENV"))}
        env.update(PATH=str(self.bare_bin), FAKEPY_LOG=str(self.calls_file))
        env.update(extra)
        return env

    def start(self, *args: str, cwd: Path | None = None, **env: str) -> subprocess.Popen:
        self.calls_file.unlink(missing_ok=True)
        return subprocess.Popen(
            [shutil.which("bash"), str(self.root / "launch" / "auto_train.sh"), *args],
            cwd=cwd or self.root,
            env=self.env(**env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def run(self, *args: str, cwd: Path | None = None, **env: str):
        proc = self.start(*args, cwd=cwd, **env)
        out, _ = proc.communicate(timeout=120)
        return proc.returncode, out

    def calls(self, sub: str | None = None) -> list[str]:
        lines = self.calls_file.read_text().splitlines() if self.calls_file.exists() else []
        return [c for c in lines if sub is None or c.startswith(f"argv=-m aegis_ckpt {sub} ")]

    def logs(self, folder: str | Path = "logs") -> list[Path]:
        """The log files in ``folder``: relative to the project folder, or absolute."""
        return sorted((self.root / folder).glob("auto_training_*.log"))


@pytest.fixture
def sh_project(tmp_path) -> ShProject:
    return ShProject(tmp_path / "my project")


def test_success_path_log_file_and_calls(sh_project):
    sh_project.make_fake_venv(".venv")
    code, out = sh_project.run()
    assert code == 0, out
    assert out == "", "with a non-terminal stdout everything goes to the log file"
    (log,) = sh_project.logs()
    assert re.fullmatch(r"auto_training_\d{8}_\d{6}\.log", log.name)
    text = log.read_text()
    root = str(sh_project.root)
    for expected in (
        f"[auto_train] project: {root}",
        "[auto_train] activated .venv/",
        "[preflight] OK       disk        fake preflight line",
        "fake training output on stdout",
        "fake training output on stderr",
        "[auto_train] FINISHED: training finished (exit 0)",
        "fake notify finished",
    ):
        assert expected in text, (expected, text)
    assert re.search(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \[auto_train\] preflight$", text, re.M)
    assert all(f"VIRTUAL_ENV={root}/.venv | cwd={root}" in c for c in sh_project.calls())
    (supervise,) = sh_project.calls("run")
    assert (
        "run --max-restarts 5 --backoff 30 --backoff-max 600 --hang-timeout 1800 -- python3 -m aegis_ckpt train configs/tiny.yaml"
        in supervise
    )
    assert sh_project.calls("preflight")[0].startswith("argv=-m aegis_ckpt preflight configs/tiny.yaml |")


def test_logs_go_to_the_runs_output_dir_unless_given(sh_project, tmp_path):
    """Without LOG_DIR the launcher asks Python for the run's log folder (``launcher --log-dir CONFIG``) and
    creates it; an explicit LOG_DIR (argument or variable) wins; an unreadable config falls back to logs/."""
    sh_project.make_fake_venv()
    run_logs = tmp_path / "out dir" / "logs"
    code, out = sh_project.run(FAKEPY_LOG_DIR=str(run_logs))
    assert code == 0, out
    (log,) = sh_project.logs(run_logs)
    assert f"[auto_train] log: {log}" in log.read_text()
    assert not (sh_project.root / "logs").exists()
    assert sh_project.calls("launcher")[0].startswith(
        "argv=-m aegis_ckpt launcher --log-dir configs/tiny.yaml |"
    )

    code, _ = sh_project.run("configs/tiny.yaml", "5", "given logs", FAKEPY_LOG_DIR=str(run_logs))
    assert code == 0 and len(sh_project.logs("given logs")) == 1 and sh_project.calls("launcher") == []
    code, _ = sh_project.run(FAKEPY_LOG_DIR=str(run_logs), AEGIS_LOG_DIR="env logs")
    assert code == 0 and len(sh_project.logs("env logs")) == 1 and len(sh_project.logs(run_logs)) == 1

    code, _ = sh_project.run()  # the fake answers nothing: as for a config that cannot be read
    assert code == 0
    (fallback,) = sh_project.logs()
    assert "could not be read from configs/tiny.yaml or is not writable: logging to logs/ of the project" in (
        fallback.read_text()
    )


def test_venv_folder_and_relative_arguments_from_another_folder(sh_project, tmp_path):
    sh_project.make_fake_venv("venv")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code, out = sh_project.run("cfg/my run.yaml", "2", "my logs", cwd=elsewhere)
    assert code == 0, out
    (log,) = (elsewhere / "my logs").glob("*.log")
    assert "activated venv/" in log.read_text()
    (supervise,) = sh_project.calls("run")
    assert "--max-restarts 2 " in supervise and f"train {elsewhere}/cfg/my run.yaml" in supervise
    assert all(c.endswith(f"cwd={sh_project.root}") for c in sh_project.calls())


def test_environment_variables_are_the_defaults(sh_project):
    sh_project.make_fake_venv()
    code, _ = sh_project.run(
        AEGIS_CONFIG="configs/other.yaml", AEGIS_RETRIES="3", AEGIS_LOG_DIR="my logs", AEGIS_BACKOFF="7"
    )
    assert code == 0
    (supervise,) = sh_project.calls("run")
    assert "--max-restarts 3 --backoff 7 " in supervise and "train configs/other.yaml" in supervise
    assert len(sh_project.logs("my logs")) == 1


def test_failure_path(sh_project):
    sh_project.make_fake_venv()
    code, _ = sh_project.run("configs/tiny.yaml", "2", FAKEPY_RC_RUN="1")
    assert code == 1
    text = sh_project.logs()[0].read_text()
    assert "ERROR: training failed and the supervisor gave up after 2 restart(s) in a row (exit 1)" in text
    assert len(sh_project.calls("run")) == 1 and "--max-restarts 2 " in sh_project.calls("run")[0]
    assert " notify failed " in sh_project.calls("notify")[0]


def test_preflight_refusal_and_already_finished(sh_project):
    sh_project.make_fake_venv()
    code, _ = sh_project.run(FAKEPY_RC_PREFLIGHT="2")
    assert code == 2
    assert "ERROR: preflight refused to start (exit 2)" in sh_project.logs()[-1].read_text()
    assert sh_project.calls("run") == [] and " notify failed " in sh_project.calls("notify")[0]

    time.sleep(1.1)  # a new second: a new log file name
    code, _ = sh_project.run(FAKEPY_RC_PREFLIGHT="3")
    assert code == 0
    assert "already finished: nothing to do" in sh_project.logs()[-1].read_text()
    assert sh_project.calls("run") == [] and sh_project.calls("notify") == []


@pytest.mark.parametrize(
    "code, line", [(143, "stopped on request (exit 143)"), (2, "ERROR: bad input (exit 2)")]
)
def test_stop_and_bad_input_exit_codes(sh_project, code, line):
    sh_project.make_fake_venv()
    got, _ = sh_project.run(FAKEPY_RC_RUN=str(code))
    assert got == code
    assert line in sh_project.logs()[0].read_text()
    assert len(sh_project.calls("run")) == 1


def test_sigterm_to_the_launcher_reaches_the_supervisor_once(sh_project, tmp_path):
    """systemd's KillMode=mixed sends SIGTERM to the launcher only; it must pass it on and log the stop."""
    sh_project.make_fake_venv()
    record = tmp_path / "supervisor-signals"
    proc = sh_project.start(FAKEPY_TRAP=str(record))
    deadline = time.monotonic() + 30
    while not Path(f"{record}.ready").exists():
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 143, out
    assert record.read_text().split() == ["TERM"]
    assert "stopped on request (exit 143)" in sh_project.logs()[0].read_text()


def test_no_venv_and_no_python(sh_project):
    code, _ = sh_project.run()
    assert code == 2
    text = sh_project.logs()[0].read_text()
    assert "ERROR: no venv/ or .venv/ in" in text and "no python3 on PATH" in text
    assert "python3 -m venv .venv" in text


# ---- the real thing ----------------------------------------------------------------------------------------------
def _real_project(tmp_path: Path) -> tuple[ShProject, Path, Path]:
    project = ShProject(tmp_path / "real project")
    venv_bin = Path(sys.executable).parent
    (project.root / ".venv" / "bin").mkdir(parents=True)
    (project.root / ".venv" / "bin" / "activate").write_text(
        ACTIVATE.format(venv=venv_bin.parent, bin=venv_bin) + "export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1\n"
    )
    output_dir = tmp_path / "run"
    config = project.root / "configs" / "small.yaml"
    config.write_text(
        json.dumps(
            {
                "model": {"arch": "gpt2", "config": {"n_layer": 2, "n_head": 2, "n_embd": 32}},
                "tokenizer": {"vocab_size": 300},
                "data": {
                    "train_file": str(REPO / "data" / "tiny_corpus.txt"),
                    "block_size": 32,
                    "max_samples": 400,
                },
                "training": {
                    "output_dir": str(output_dir),
                    "max_steps": 300,
                    "per_device_train_batch_size": 4,
                    "save_strategy": "no",
                    "logging_steps": 50,
                    "seed": 42,
                    "use_cpu": True,
                    "disable_tqdm": True,
                },
                "checkpoint": {"save_interval_sec": 0.3, "max_keep": 3},
            }
        )
    )
    return project, config, output_dir


@pytest.mark.slow
def test_power_cut_then_continue_then_already_finished_then_more_steps(tmp_path):
    project, config, out = _real_project(tmp_path)
    env = {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}

    # 1. Started; a power cut hits once a checkpoint is committed: every process dies at once.
    first = project.start("configs/small.yaml", **env)
    deadline = time.monotonic() + 120
    while not any((p / "aegis_manifest.json").exists() for p in out.glob("checkpoint-*")):
        assert first.poll() is None, first.communicate()[0]
        assert time.monotonic() < deadline, "no checkpoint was committed"
        time.sleep(0.05)
    tree = [psutil.Process(first.pid), *psutil.Process(first.pid).children(recursive=True)]
    assert any("train" in " ".join(p.cmdline()) for p in tree), "the training process is not running yet"
    for p in tree:
        p.kill()
    first.wait(30)
    assert not (out / ".aegis" / "completed.json").exists()
    time.sleep(1.1)  # the next log file gets a new name

    # 2. Machine back: the same start continues from the newest intact checkpoint and finishes, with the sound.
    code, _ = project.run("configs/small.yaml", **env)
    text = project.logs(out / "logs")[-1].read_text()  # the log lies next to the checkpoints
    assert code == 0, text[-4000:]
    assert "[preflight] OK       disk" in text and "[preflight] passed" in text
    assert re.search(r"Continuing from .*checkpoint-\d+", text), text[-4000:]
    assert "training finished at step 300" in text
    assert "[auto_train] FINISHED: training finished (exit 0)" in text
    assert "[aegis-ckpt] INFO sound:" in text  # the notification ran (no terminal here: no bell to ring)
    assert json.loads((out / ".aegis" / "completed.json").read_text())["step"] == 300
    time.sleep(1.1)

    # 3. The next boot: nothing but a log line.
    code, _ = project.run("configs/small.yaml", **env)
    text = project.logs(out / "logs")[-1].read_text()
    assert code == 0
    assert "[auto_train] already finished: nothing to do" in text
    assert "training:" not in text and "FINISHED" not in text
    assert len(project.logs(out / "logs")) == 3 and not (project.root / "logs").exists()
    time.sleep(1.1)

    # 4. max_steps raised in the config: the same start continues the finished run to the new end.
    config = project.root / "configs" / "small.yaml"
    config.write_text(config.read_text().replace('"max_steps": 300', '"max_steps": 340'))
    code, _ = project.run("configs/small.yaml", **env)
    text = project.logs(out / "logs")[-1].read_text()
    assert code == 0, text[-4000:]
    assert "the last step is now 340: training continues" in text
    assert text.count("Continuing finished run from step 300 to 340") == 1
    assert "[auto_train] FINISHED: training finished (exit 0)" in text
    assert json.loads((out / ".aegis" / "completed.json").read_text())["step"] == 340
