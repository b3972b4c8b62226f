"""launch/auto_train.bat under Wine in a project folder whose path holds every character that batch files
mishandle: spaces, ``!`` (eaten by delayed expansion), ``%OS%`` (a defined variable: expanded a second time by
``call``), ``&``, ``$``, quotes and non-ASCII letters. Numbers from arguments and the environment are checked,
so that ``5 & ...`` is refused and never runs as a command.

Not testable under Wine: a value holding a double quote. Windows never parses a FOR variable or a delayed
expansion again (the launcher copies environment values that way); Wine's cmd does, so there a quote in such a
value still ends a string. Windows paths cannot contain quotes; numbers are refused unless they are digits."""

from __future__ import annotations

import pytest
from conftest import Project, to_windows

pytestmark = pytest.mark.wine

HOSTILE = "it's a b!c & $HOME (x) é ü"
"""No "%": Wine's cmd expands the result of every "%" expansion a second time (Windows expands once), so a "%" in
a path cannot be tested under Wine; the generated autostart files are tested with it (tests/unit)."""


@pytest.fixture
def hostile(tmp_path, wine_env, fake_python_exe) -> Project:
    project = Project(tmp_path / HOSTILE / "proj!x", wine_env, fake_python_exe)
    project.make_venv()
    return project


def test_a_hostile_project_path_reaches_python_unchanged(hostile, tmp_path):
    """Started as a double-click does (the launch folder as current directory: the project path comes from
    ``%~dp0``, never through a command line that a prompt would expand), with a hostile config path."""
    config_dir = tmp_path / "cfg & !x! (1) 'q' $x"
    config_dir.mkdir()
    run = hostile.run(AEGIS_CONFIG=to_windows(config_dir / "run é.yaml"), FAKEPY_STDOUT_C="20250102_030405")
    assert run.code == 0, run.console
    root = to_windows(hostile.root)
    log = run.log_text  # written in the console code page: compare up to the first non-ASCII letter
    assert f"[auto_train] project: {root.split('é')[0]}" in log, log
    assert f"config: {to_windows(config_dir)}\\run " in log and ", retries: 5, backoff: 30 s" in log, log
    (preflight,) = run.calls_of("preflight")
    assert f'preflight "{to_windows(config_dir)}\\run é.yaml"' in preflight, preflight
    assert f"cwd={root}" in preflight and f"VIRTUAL_ENV={root}\\.venv" in preflight
    (supervise,) = run.calls_of("run")
    assert (
        f'-- "{root}\\.venv\\Scripts\\python.exe" -m aegis_ckpt train "{to_windows(config_dir)}' in supervise
    )


@pytest.mark.parametrize(
    "where, value",
    [
        ("argument", "5 & echo INJECTED>{marker}"),
        ("AEGIS_RETRIES", "5 & echo INJECTED>{marker}"),
        ("AEGIS_BACKOFF", "1 & echo INJECTED>{marker}"),
        ("AEGIS_HANG_TIMEOUT", "60|echo INJECTED>{marker}"),
        ("AEGIS_RETRIES", "-1"),
        ("AEGIS_BACKOFF", "05"),
    ],
)
def test_numbers_that_are_not_plain_numbers_are_refused(hostile, tmp_path, where, value):
    marker = tmp_path / "injected.txt"
    value = value.format(marker=to_windows(marker))
    if where == "argument":
        run = hostile.run("configs\\tiny.yaml", value)
    else:
        run = hostile.run(
            **{where: value, "AEGIS_BACKOFF": "30"} if where != "AEGIS_BACKOFF" else {where: value}
        )
    assert run.code == 2, run.console
    assert "must be whole numbers of digits only" in run.console
    assert not marker.exists() and not run.calls_of("run") and not run.calls_of("preflight")
