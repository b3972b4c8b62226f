"""launch/auto_train.bat under Wine, with a fake venv python.exe that records every call and returns the exit
codes a test picks (see conftest.py and fakepython.c). What the Python side does with those calls (preflight,
the supervisor's bounded restarts, notify) is tested against the real thing in tests/integration."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def to_windows(path: Path) -> str:
    return "Z:" + str(path).replace("/", "\\")


pytestmark = pytest.mark.wine

TS_LOG = re.compile(r"^auto_training_(\d{8})_(\d{6})\.log$")


def test_committed_bat_has_crlf_line_endings():
    for bat in (REPO / "launch" / "auto_train.bat", REPO / "aegis_ckpt" / "unattended" / "auto_train.bat"):
        data = bat.read_bytes()
        assert data.count(b"\n") > 50 and data.count(b"\n") == data.count(b"\r\n"), bat
    assert "*.bat text eol=crlf" in (REPO / ".gitattributes").read_text().splitlines()


def test_success_path_log_file_and_calls(project):
    project.make_venv(".venv")
    assert not (project.root / "logs").exists()  # created on first use
    run = project.run(FAKEPY_STDOUT_C="20250102_030405")
    assert run.code == 0, run.console
    # the log name comes from the venv python's locale-independent timestamp
    assert [p.name for p in run.logs] == ["auto_training_20250102_030405.log"]
    log = run.log_text
    root = to_windows(project.root)
    for expected in (
        f"[auto_train] project: {root}",
        "[auto_train] activated .venv\\",
        "[auto_train] preflight",
        "[preflight] OK       disk        fake preflight line",
        "fake training output on stdout",
        "fake training output on stderr",
        "[auto_train] FINISHED: training finished (exit 0)",
        "fake notify",
    ):
        assert expected in log, (expected, log)
    assert log.index("fake preflight line") < log.index("fake training output") < log.index("FINISHED")
    # the launcher's own lines reach the console too; the training output only the log
    assert "FINISHED: training finished" in run.console and "fake training output" not in run.console

    py = f'"{root}\\.venv\\Scripts\\python.exe"'
    assert all(f"VIRTUAL_ENV={root}\\.venv |" in c and c.endswith(f"cwd={root}") for c in run.calls), (
        run.calls
    )
    assert run.calls_of("preflight") == [
        f'cmdline={py} -m aegis_ckpt preflight "configs\\tiny.yaml"   | VIRTUAL_ENV={root}\\.venv | cwd={root}'
    ]
    (supervise,) = run.calls_of("run")
    assert "--max-restarts 5 --backoff 30 --backoff-max 600 --hang-timeout 1800 --" in supervise
    assert f'-- {py} -m aegis_ckpt train "configs\\tiny.yaml"' in supervise  # full venv path for the child
    (notify,) = run.calls_of("notify")
    assert 'notify finished --config "configs\\tiny.yaml"' in notify

    # The .bat passes Python code for the timestamp; run exactly that code with a real Python.
    (call,) = [c for c in run.calls if " -c " in c]
    code = call.split(' -c "', 1)[1].rsplit('"', 1)[0]
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert re.fullmatch(r"\d{8}_\d{6}", out), out


def test_wmic_fallback_when_python_prints_no_timestamp(project):
    project.make_venv(".venv")
    before = time.strftime("%Y%m%d")
    run = project.run()  # FAKEPY_STDOUT_C unset: "python -c" prints nothing
    after = time.strftime("%Y%m%d")
    assert run.code == 0, run.console
    (log,) = run.logs
    m = TS_LOG.match(log.name)
    assert m, log.name
    assert m.group(1) in (before, after)
    hh, mm, ss = int(m.group(2)[:2]), int(m.group(2)[2:4]), int(m.group(2)[4:])
    assert hh < 24 and mm < 60 and ss < 60


def test_runs_from_any_folder_with_relative_config_argument(project, tmp_path):
    project.make_venv("venv")  # venv\ works as well as .venv\
    elsewhere = tmp_path / "somewhere else"
    (elsewhere / "cfg").mkdir(parents=True)
    run = project.run(
        "cfg\\my run.yaml",
        cwd=elsewhere,
        bat=to_windows(project.root / "launch" / "auto_train.bat"),
        FAKEPY_STDOUT_C="20250102_030405",
    )
    assert run.code == 0, run.console
    root = to_windows(project.root)
    assert "[auto_train] activated venv\\" in run.log_text
    assert all(f"VIRTUAL_ENV={root}\\venv |" in c and c.endswith(f"cwd={root}") for c in run.calls)
    (preflight,) = run.calls_of("preflight")
    assert f'preflight "{to_windows(elsewhere)}\\cfg\\my run.yaml"' in preflight
    assert (project.root / "logs" / "auto_training_20250102_030405.log").is_file()


def test_config_retries_and_log_dir_from_arguments_and_environment(project, tmp_path):
    project.make_venv()
    run = project.run(AEGIS_CONFIG="configs\\other.yaml", AEGIS_RETRIES="3", AEGIS_LOG_DIR="my logs")
    assert run.code == 0, run.console
    assert ' -m aegis_ckpt preflight "configs\\other.yaml"' in run.calls_of("preflight")[0]
    assert "--max-restarts 3 " in run.calls_of("run")[0]
    assert len(list((project.root / "my logs").glob("auto_training_*.log"))) == 1
    # arguments win over the environment
    logs = tmp_path / "arg logs"
    run = project.run(
        "configs\\x.yaml", "7", str(to_windows(logs)), AEGIS_RETRIES="3", AEGIS_LOG_DIR="my logs"
    )
    assert run.code == 0
    assert "--max-restarts 7 " in run.calls_of("run")[0]
    assert len(list(logs.glob("auto_training_*.log"))) == 1


def test_logs_go_to_the_runs_output_dir_unless_given(project, tmp_path):
    """Without LOG_DIR the .bat asks Python for the run's log folder (``launcher --log-dir CONFIG``, read back
    through a file) and creates it; an explicit LOG_DIR wins; no answer falls back to logs\\ of the project."""
    project.make_venv()
    run_logs = tmp_path / "out dir" / "logs"
    run = project.run(FAKEPY_STDOUT_C="20250102_030405", FAKEPY_LOG_DIR=to_windows(run_logs))
    assert run.code == 0, run.console
    assert [p.name for p in run_logs.glob("*.log")] == ["auto_training_20250102_030405.log"]
    assert run.logs == [] and not (project.root / "logs").exists()
    text = (run_logs / "auto_training_20250102_030405.log").read_text(errors="replace")
    assert f"[auto_train] log: {to_windows(run_logs)}\\auto_training_20250102_030405.log" in text
    assert "FINISHED: training finished" in text and "fake training output" in text
    (query,) = run.calls_of("launcher")
    assert ' -m aegis_ckpt launcher --log-dir "configs\\tiny.yaml"' in query

    run = project.run(FAKEPY_LOG_DIR=to_windows(run_logs), AEGIS_LOG_DIR="my logs")
    assert run.code == 0 and run.calls_of("launcher") == []
    assert len(list((project.root / "my logs").glob("*.log"))) == 1 and len(list(run_logs.glob("*.log"))) == 1

    run = project.run()  # no answer, as for a config that cannot be read
    assert run.code == 0, run.console
    assert "could not be read from the config or is not writable: logging to logs\\ of the project" in (
        run.log_text
    )


def test_failure_path_bounded_retries_error_line_and_exit_code(project):
    project.make_venv()
    run = project.run("configs\\tiny.yaml", "2", FAKEPY_RC_RUN="1", FAKEPY_STDOUT_C="20250102_030405")
    assert run.code == 1
    log = run.log_text
    assert "ERROR: training failed and the supervisor gave up after 2 restart(s) in a row (exit 1)" in log, (
        log
    )
    assert "FINISHED" not in log
    # the retries are the supervisor's (bounded, with backoff): it gets the budget, and is called once
    (supervise,) = run.calls_of("run")
    assert "--max-restarts 2 --backoff 30 " in supervise
    (notify,) = run.calls_of("notify")
    assert " notify failed " in notify


def test_supervisor_exit_on_bad_input_is_not_retried(project):
    project.make_venv()
    run = project.run(FAKEPY_RC_RUN="2")
    assert run.code == 2
    assert "ERROR: bad input (exit 2)" in run.log_text
    assert len(run.calls_of("run")) == 1


def test_preflight_refusal_stops_before_training(project):
    project.make_venv()
    run = project.run(FAKEPY_RC_PREFLIGHT="2")
    assert run.code == 2
    assert "ERROR: preflight refused to start (exit 2)" in run.log_text
    assert run.calls_of("run") == []
    assert " notify failed " in run.calls_of("notify")[0]


def test_already_finished_does_nothing_but_log_it(project):
    project.make_venv()
    run = project.run(FAKEPY_RC_PREFLIGHT="3")
    assert run.code == 0
    assert "[auto_train] already finished: nothing to do" in run.log_text
    assert run.calls_of("run") == [] and run.calls_of("notify") == []


def test_stop_on_request_is_not_an_error(project):
    code = "130"  # Ctrl+C forwarded by the supervisor, emergency checkpoint committed
    project.make_venv()
    run = project.run(FAKEPY_RC_RUN=code)
    assert run.code == int(code)
    assert f"stopped on request (exit {code})" in run.log_text
    assert "ERROR" not in run.log_text and run.calls_of("notify") == []


def test_no_venv_and_no_python_gives_a_clear_message(project):
    run = project.run()
    assert run.code == 2
    assert "ERROR: no venv\\ or .venv\\ in" in run.console and "and no python on PATH" in run.console
    assert "py -m venv .venv" in run.log_text
    assert run.calls == []


def test_no_venv_uses_python_from_path(project, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python.exe").write_bytes(project.fake_python.read_bytes())
    run = project.run(WINEPATH=to_windows(bin_dir), FAKEPY_STDOUT_C="20250102_030405")
    assert run.code == 0, run.console
    assert "using python from PATH" in run.log_text
    assert run.calls_of("preflight")[0].startswith('cmdline="python" -m aegis_ckpt preflight')
    assert '-- "python" -m aegis_ckpt train' in run.calls_of("run")[0]
