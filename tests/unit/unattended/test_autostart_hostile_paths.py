"""The autostart files for a project in a hostile folder (spaces, quotes, ``$``, ``!``, ``%``, ``&``, ``;``,
backticks, non-ASCII letters): the cron line is run by a real ``sh`` after cron's own ``%`` rule, the systemd
``ExecStart`` is unquoted by systemd's rules, the Task Scheduler XML is parsed back; the launcher must receive
exactly the config path. Paths no reader can carry are refused with a clear message."""

from __future__ import annotations

import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path, PurePath, PureWindowsPath

import pytest

from aegis_ckpt.errors import ConfigError
from aegis_ckpt.unattended import autostart
from aegis_ckpt.unattended.autostart import AutostartOptions, Host
from aegis_ckpt.unattended.autostart.quoting import check_task_path

HOSTILE = 'it\'s "a" $HOME !x 100% %HOME% & ; `id` é ü'


def _linux(tmp_path: Path, method: str):
    project = tmp_path / HOSTILE
    (project / "launch").mkdir(parents=True)
    host = Host("linux", "alice", tmp_path / ".config", has_systemd=method == "systemd")
    opts = AutostartOptions(config=project / "run $x é.yaml", project_dir=project, method=method, name="x")
    return host, opts, project


def test_cron_line_runs_the_launcher_with_the_exact_config_path(tmp_path):
    host, opts, project = _linux(tmp_path, "cron")
    received = tmp_path / "argv.txt"
    launcher = project / "launch" / "auto_train.sh"
    launcher.write_text(f'printf "%s\\n" "$PWD" "$@" > {received}\n')
    line = autostart.cron_line(opts, host)
    command = line.removeprefix("@reboot ").rsplit(" # ", 1)[0]
    command = command.replace("\\%", "%").replace(">/dev/null 2>&1", "")  # what cron hands to sh
    subprocess.run(["/bin/sh", "-c", command], check=True, timeout=30)
    assert received.read_text().splitlines() == [str(project), str(opts.config)]


def _systemd_words(value: str) -> list[str]:
    """Split an ``ExecStart`` value as systemd does for these quotes: specifiers and variables first."""
    value = value.replace("%%", "\0p").replace("$$", "\0d")
    assert "%" not in value and "$" not in value, value  # nothing left for systemd to expand
    words, word, quoted, chars = [], "", False, iter(value)
    for c in chars:
        if c == "\\" and quoted:
            word += next(chars)
        elif c == '"':
            quoted = not quoted
        elif c == " " and not quoted:
            words.append(word) if word else None
            word = ""
        else:
            word += c
    words.append(word)
    return [w.replace("\0p", "%").replace("\0d", "$") for w in words]


def test_systemd_exec_start_gives_the_launcher_the_exact_paths(tmp_path):
    host, opts, project = _linux(tmp_path, "systemd")
    unit = autostart.systemd_unit(opts, host)
    (exec_start,) = [line for line in unit.splitlines() if line.startswith("ExecStart=")]
    assert _systemd_words(exec_start.removeprefix("ExecStart=")) == [
        "/bin/bash",
        str(project / "launch" / "auto_train.sh"),
        str(opts.config),
    ]
    (workdir,) = [line for line in unit.splitlines() if line.startswith("WorkingDirectory=")]
    assert workdir.removeprefix("WorkingDirectory=").replace("%%", "%") == str(project)


def _windows(project: str):
    host = Host("win32", "alice", PureWindowsPath("C:/Users/alice/AppData/Roaming"), has_systemd=False)
    root = PureWindowsPath(project)
    return host, AutostartOptions(config=root / "run é.yaml", project_dir=root, method="schtasks", name="x")


def test_task_xml_carries_the_paths_exactly(tmp_path, monkeypatch):
    monkeypatch.delenv("X", raising=False)
    host, opts = _windows("C:/Users/alice/it's a b!c 100% & <x> é")
    task = ET.fromstring(autostart.task_xml(opts, host).encode("utf-16"))
    ns = {"t": "http://schemas.microsoft.com/windows/2004/02/mit/task"}
    assert task.find(".//t:Command", ns).text == str(opts.project_dir / "launch" / "auto_train.bat")
    assert task.find(".//t:Arguments", ns).text == f'"{opts.config}"'
    assert task.find(".//t:WorkingDirectory", ns).text == str(opts.project_dir)


def test_task_paths_that_the_scheduler_would_expand_are_refused():
    with pytest.raises(ConfigError, match=r"%USERNAME%.*--method startup"):
        check_task_path(PureWindowsPath("C:/x/%USERNAME%/p"), "project", environ={"USERNAME": "alice"})
    assert check_task_path(PureWindowsPath("C:/x/100% sure/p"), "project", environ={"USERNAME": "a"})


def test_startup_cmd_doubles_percent_signs_and_reads_utf8():
    host, opts = _windows("C:/Users/alice/a b!c 100% %OS% & é")
    text = autostart.startup_cmd(opts, host)
    assert "chcp 65001 >nul" in text
    assert 'cd /d "C:\\Users\\alice\\a b!c 100%% %%OS%% & é"' in text


@pytest.mark.parametrize("bad", ["line\nbreak", "tab\there", "nul\x00"])
def test_control_characters_are_refused(tmp_path, bad):
    host = Host("linux", "alice", tmp_path, has_systemd=True)
    opts = AutostartOptions(
        config=PurePath("/p") / bad, project_dir=PurePath("/p"), method="systemd", name="x"
    )
    with pytest.raises(ConfigError, match="control character"):
        autostart.systemd_unit(opts, host)


pytestmark = pytest.mark.skipif(shutil.which("sh") is None, reason="needs a POSIX shell")
