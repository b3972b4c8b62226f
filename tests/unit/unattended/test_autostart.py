"""install-autostart / uninstall-autostart: the generated unit, crontab line, task XML and Startup .cmd, the
commands run, idempotent installs, and uninstalls that remove exactly what was created.

The OS commands themselves (systemctl, loginctl, crontab, schtasks) cannot run here; `FakeSystem` answers them
with a little state, through the `SystemOps` seam. Linux files are real files under tmp_path; Windows files,
whose paths cannot exist here, are kept in memory.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path, PurePath, PureWindowsPath

import pytest

from aegis_ckpt.cli import main as cli_main
from aegis_ckpt.errors import ConfigError
from aegis_ckpt.unattended import autostart
from aegis_ckpt.unattended.autostart import AutostartOptions, CommandResult, Host, SystemOps

REPO = Path(__file__).resolve().parents[3]
TASK_NS = {"t": "http://schemas.microsoft.com/windows/2004/02/mit/task"}


class FakeSystem(SystemOps):
    def __init__(self, *, linger: bool = False, crontab: str | None = None, memory_files: bool = False):
        self.linger = linger
        self.crontab = crontab
        self.units: set[str] = set()
        self.tasks: dict[str, str] = {}
        self.commands: list[list[str]] = []
        self.queries: list[list[str]] = []
        self.files: dict[str, tuple[str, str, str]] | None = {} if memory_files else None

    # -- commands --
    def query(self, cmd):
        self.queries.append(cmd)
        return self._answer(cmd, None)

    def run(self, cmd, input_text=None):
        self.commands.append(cmd)
        return self._answer(cmd, input_text)

    def _answer(self, cmd, text) -> CommandResult:
        match cmd:
            case ["crontab", "-l"]:
                if self.crontab is None:
                    return CommandResult(1, "", "no crontab for alice\n")
                return CommandResult(0, self.crontab)
            case ["crontab", "-"]:
                self.crontab = text
            case ["crontab", "-r"]:
                self.crontab = None
            case ["loginctl", "show-user", _, "--property=Linger"]:
                return CommandResult(0, f"Linger={'yes' if self.linger else 'no'}\n")
            case ["loginctl", "enable-linger", _]:
                self.linger = True
            case ["loginctl", "disable-linger", _]:
                self.linger = False
            case ["systemctl", "--user", "daemon-reload"]:
                pass
            case ["systemctl", "--user", "enable", unit]:
                self.units.add(unit)
            case ["systemctl", "--user", "disable", unit]:
                self.units.discard(unit)
            case ["schtasks", "/Create", "/TN", name, "/XML", xml, "/F"]:
                self.tasks[name] = self.read_text(PureWindowsPath(xml))
            case ["schtasks", "/Delete", "/TN", name, "/F"]:
                if self.tasks.pop(name, None) is None:
                    return CommandResult(1, "", "ERROR: The system cannot find the file specified.")
            case _:
                return CommandResult(127, "", f"unexpected command {cmd}")
        return CommandResult(0)

    # -- files (in memory for Windows paths) --
    def read_text(self, path):
        if self.files is None:
            return super().read_text(path)
        entry = self.files.get(str(path))
        return entry[0] if entry else None

    def write_text(self, path, text, *, encoding="utf-8", newline="\n"):
        if self.files is None:
            return super().write_text(path, text, encoding=encoding, newline=newline)
        self.files[str(path)] = (text, encoding, newline)

    def remove(self, path):
        if self.files is None:
            return super().remove(path)
        return self.files.pop(str(path), None) is not None


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


@pytest.fixture
def linux(tmp_path):
    host = Host("linux", "alice", tmp_path / "home" / ".config", has_systemd=True, has_crontab=True)
    project = tmp_path / "my project"
    options = AutostartOptions(
        config=project / "configs" / "tiny.yaml",
        project_dir=project,
        method="systemd",
        name=autostart.default_name(project / "configs" / "tiny.yaml"),
    )
    return host, options


@pytest.fixture
def windows():
    host = Host("win32", "PC\\alice", PureWindowsPath(r"C:\Users\alice\AppData\Roaming"))
    project = PureWindowsPath(r"C:\Users\alice\my project")
    options = AutostartOptions(
        config=project / "configs" / "tiny.yaml",
        project_dir=project,
        method="schtasks",
        name="aegis-ckpt-tiny",
    )
    return host, options


def install(options, host, ops):
    plan = autostart.plan_install(options, host, ops)
    autostart.apply_install(plan, host, ops)
    return plan


def uninstall(name, host, ops):
    plan = autostart.plan_uninstall(name, host, ops)
    return autostart.apply_uninstall(plan, host, ops)


# ---- Linux: systemd ---------------------------------------------------------------------------------------------
def test_systemd_unit_install_twice_then_uninstall_exactly(linux):
    host, options = linux
    ops = FakeSystem()
    before = tree(Path(host.config_home))
    install(options, host, ops)
    unit_file = Path(host.config_home) / "systemd" / "user" / f"{options.name}.service"
    unit = unit_file.read_text()
    for line in (
        "Restart=on-failure",
        "WantedBy=default.target",
        "KillMode=mixed",
        "RestartPreventExitStatus=2 129 130 143",
        f"WorkingDirectory={options.project_dir}",
        f'ExecStart=/bin/bash "{options.project_dir}/launch/auto_train.sh" "{options.config}"',
    ):
        assert line in unit.splitlines(), (line, unit)
    assert ops.commands == [
        ["systemctl", "--user", "daemon-reload"],
        ["systemctl", "--user", "enable", f"{options.name}.service"],
        ["loginctl", "enable-linger", "alice"],
    ]
    assert ops.units == {f"{options.name}.service"} and ops.linger
    record_file = Path(autostart.record_path(host, options.name))
    record = json.loads(record_file.read_text())
    assert record["files"] == [str(unit_file)] and record["linger_enabled_by_us"] is True
    first = (tree(Path(host.config_home)), unit, record_file.read_text())

    install(options, host, ops)  # again: the same state, linger not enabled twice, and still ours to undo
    assert (tree(Path(host.config_home)), unit_file.read_text(), record_file.read_text()) == first
    assert ops.commands.count(["loginctl", "enable-linger", "alice"]) == 1

    ops.commands.clear()
    uninstall(options.name, host, ops)
    assert ops.commands == [
        ["systemctl", "--user", "disable", f"{options.name}.service"],
        ["systemctl", "--user", "daemon-reload"],
        ["loginctl", "disable-linger", "alice"],
    ]
    assert not ops.units and not ops.linger
    assert [p for p in tree(Path(host.config_home)) if "." in Path(p).name] == [p for p in before if "." in p]


def test_lingering_that_was_on_before_is_left_on(linux):
    host, options = linux
    ops = FakeSystem(linger=True)
    install(options, host, ops)
    assert ["loginctl", "enable-linger", "alice"] not in ops.commands
    uninstall(options.name, host, ops)
    assert ops.linger and ["loginctl", "disable-linger", "alice"] not in ops.commands


def test_systemd_quoting_of_odd_paths(tmp_path):
    host = Host("linux", "alice", tmp_path / ".config", has_systemd=True)
    project = PurePath('/srv/100% "fun"')
    opts = AutostartOptions(config=project / "a.yaml", project_dir=project, method="systemd", name="x")
    unit = autostart.systemd_unit(opts, host)
    assert (
        r'ExecStart=/bin/bash "/srv/100%% \"fun\"/launch/auto_train.sh" "/srv/100%% \"fun\"/a.yaml"' in unit
    )


# ---- Linux: cron ------------------------------------------------------------------------------------------------
def test_cron_keeps_the_users_lines_is_idempotent_and_uninstalls_only_its_line(linux):
    host, options = linux
    options = AutostartOptions(**{**options.__dict__, "method": "cron"})
    mine = "0 3 * * * /home/alice/backup.sh\n"
    ops = FakeSystem(crontab=mine)
    install(options, host, ops)
    install(options, host, ops)
    lines = ops.crontab.splitlines()
    assert lines[0] == mine.strip() and len(lines) == 2
    assert lines[1] == (
        f"@reboot cd '{options.project_dir}' && /bin/bash '{options.project_dir}/launch/auto_train.sh' "
        f"'{options.config}' >/dev/null 2>&1 # aegis-ckpt:{options.name}"
    )
    uninstall(options.name, host, ops)
    assert ops.crontab == mine
    assert tree(Path(host.config_home) / "aegis-ckpt" / "autostart") == []


def test_cron_removes_a_crontab_it_created(linux):
    host, options = linux
    options = AutostartOptions(**{**options.__dict__, "method": "cron"})
    ops = FakeSystem(crontab=None)
    install(options, host, ops)
    install(options, host, ops)
    assert ops.crontab.count("@reboot") == 1
    uninstall(options.name, host, ops)
    assert ops.crontab is None and ops.commands[-1] == ["crontab", "-r"]


def test_cron_escapes_percent_signs():
    host = Host("linux", "alice", PurePath("/home/alice/.config"), has_crontab=True)
    project = PurePath("/data/100% done")
    opts = AutostartOptions(config=project / "c.yaml", project_dir=project, method="cron", name="n")
    assert (
        "cd '/data/100\\% done' && /bin/bash '/data/100\\% done/launch/auto_train.sh'"
        in autostart.cron_line(opts, host)
    )


# ---- Windows ----------------------------------------------------------------------------------------------------
def test_schtasks_task_xml_and_commands(windows):
    host, options = windows
    ops = FakeSystem(memory_files=True)
    install(options, host, ops)
    xml_path = r"C:\Users\alice\AppData\Roaming\aegis-ckpt\autostart\aegis-ckpt-tiny.xml"
    assert ops.commands == [
        ["schtasks", "/Create", "/TN", r"\aegis-ckpt\aegis-ckpt-tiny", "/XML", xml_path, "/F"]
    ]
    text, encoding, newline = ops.files[xml_path]
    assert encoding == "utf-16" and newline == "\r\n"  # what schtasks /XML reads
    task = ET.fromstring(text.encode("utf-16"))
    get = lambda path: task.find(path, TASK_NS).text  # noqa: E731
    assert get("t:Triggers/t:LogonTrigger/t:UserId") == "PC\\alice"
    assert get("t:Principals/t:Principal/t:LogonType") == "InteractiveToken"
    assert get("t:Settings/t:ExecutionTimeLimit") == "PT0S"  # the default 72 h would kill a long run
    assert get("t:Settings/t:DisallowStartIfOnBatteries") == "false"
    assert get("t:Settings/t:StopIfGoingOnBatteries") == "false"
    assert get("t:Settings/t:RestartOnFailure/t:Count") == "3"
    assert get("t:Settings/t:MultipleInstancesPolicy") == "IgnoreNew"
    assert get("t:Actions/t:Exec/t:Command") == r"C:\Users\alice\my project\launch\auto_train.bat"
    assert get("t:Actions/t:Exec/t:Arguments") == r'"C:\Users\alice\my project\configs\tiny.yaml"'
    assert get("t:Actions/t:Exec/t:WorkingDirectory") == r"C:\Users\alice\my project"

    install(options, host, ops)  # idempotent: /F replaces the task with the same definition
    assert list(ops.tasks) == [r"\aegis-ckpt\aegis-ckpt-tiny"] and len(ops.files) == 2

    ops.commands.clear()
    uninstall(options.name, host, ops)
    assert ops.commands == [["schtasks", "/Delete", "/TN", r"\aegis-ckpt\aegis-ckpt-tiny", "/F"]]
    assert ops.tasks == {} and ops.files == {}


def test_startup_folder_cmd(windows):
    host, options = windows
    options = AutostartOptions(**{**options.__dict__, "method": "startup"})
    ops = FakeSystem(memory_files=True)
    install(options, host, ops)
    path = r"C:\Users\alice\AppData\Roaming\Microsoft\Windows\Start Menu\Programs\Startup\aegis-ckpt-tiny.cmd"
    text, _encoding, newline = ops.files[path]
    assert newline == "\r\n" and ops.commands == []
    assert r'cd /d "C:\Users\alice\my project"' in text
    assert (
        r'start "aegis-ckpt training" /min "C:\Users\alice\my project\launch\auto_train.bat" '
        r'"C:\Users\alice\my project\configs\tiny.yaml"'
    ) in text
    uninstall(options.name, host, ops)
    assert ops.files == {}


def test_dry_run_prints_and_changes_nothing(windows, capsys):
    host, options = windows
    ops = autostart.DryRunOps()
    plan = autostart.plan_install(options, host, ops)
    autostart.apply_install(plan, host, ops)
    out = capsys.readouterr().out
    assert (
        r"would write C:\Users\alice\AppData\Roaming\aegis-ckpt\autostart\aegis-ckpt-tiny.xml (utf-16, CRLF):"
        in out
    )
    assert "<ExecutionTimeLimit>PT0S</ExecutionTimeLimit>" in out
    assert r"would run: schtasks /Create /TN '\aegis-ckpt\aegis-ckpt-tiny' /XML" in out


# ---- choices and errors -----------------------------------------------------------------------------------------
def test_default_method():
    base = dict(user="u", config_home=PurePath("/h"))
    assert autostart.default_method(Host("win32", **base)) == "schtasks"
    assert autostart.default_method(Host("linux", has_systemd=True, has_crontab=True, **base)) == "systemd"
    assert autostart.default_method(Host("linux", has_crontab=True, **base)) == "cron"
    with pytest.raises(ConfigError, match="neither systemd nor crontab"):
        autostart.default_method(Host("linux", **base))
    with pytest.raises(ConfigError, match="macOS"):
        autostart.default_method(Host("darwin", **base))


def test_wrong_platform_method_and_reinstall_with_another_method(linux):
    host, options = linux
    with pytest.raises(ConfigError, match="--method schtasks is for Windows only"):
        autostart.plan_install(
            AutostartOptions(**{**options.__dict__, "method": "schtasks"}), host, FakeSystem()
        )
    ops = FakeSystem()
    install(options, host, ops)
    with pytest.raises(ConfigError, match="already installed with method systemd"):
        autostart.plan_install(AutostartOptions(**{**options.__dict__, "method": "cron"}), host, ops)


# ---- through the CLI --------------------------------------------------------------------------------------------
@pytest.fixture
def cli_host(tmp_path, monkeypatch):
    """The CLI on a Linux host with systemd whose commands are faked: files land under tmp_path."""
    host = Host("linux", "alice", tmp_path / ".config", has_systemd=True)
    fake = FakeSystem()
    monkeypatch.setattr(autostart, "detect_host", lambda: host)
    monkeypatch.setattr(SystemOps, "_exec", staticmethod(lambda cmd, text: fake._answer(cmd, text)))
    calls: list[list[str]] = []
    original = fake._answer
    fake._answer = lambda cmd, text: (calls.append(cmd), original(cmd, text))[1]
    return host, fake, calls


def test_cli_dry_run_install_then_install_and_uninstall(cli_host, capsys):
    host, fake, calls = cli_host
    config = REPO / "configs" / "tiny.yaml"
    name = autostart.default_name(config.resolve())

    assert cli_main(["install-autostart", str(config), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"would write {host.config_home}/systemd/user/{name}.service (utf-8, LF):" in out
    assert "    Restart=on-failure" in out and "    WantedBy=default.target" in out
    assert f"would run: systemctl --user enable {name}.service" in out
    assert "would run: loginctl enable-linger alice" in out
    assert f"aegis-ckpt: would install autostart {name} (systemd)" in out
    assert tree(Path(host.config_home)) == [] and calls == [
        ["loginctl", "show-user", "alice", "--property=Linger"]
    ]

    assert cli_main(["install-autostart", str(config)]) == 0
    out = capsys.readouterr().out
    assert f"installed autostart {name} (systemd)" in out and f"uninstall-autostart --name {name}" in out
    assert fake.units == {f"{name}.service"}

    assert cli_main(["uninstall-autostart", str(config), "--dry-run"]) == 0
    assert f"would run: systemctl --user disable {name}.service" in capsys.readouterr().out
    assert fake.units == {f"{name}.service"}

    assert cli_main(["uninstall-autostart", "--name", name]) == 0
    assert "removed autostart" in capsys.readouterr().out
    assert (
        fake.units == set()
        and [p for p in tree(Path(host.config_home)) if p.endswith((".json", ".service"))] == []
    )


def test_cli_errors_are_one_line(cli_host, tmp_path, capsys):
    assert cli_main(["uninstall-autostart", "--name", "nothing-here"]) == 2
    assert "no autostart named nothing-here was installed by aegis-ckpt" in capsys.readouterr().err
    assert cli_main(["install-autostart", str(tmp_path / "missing.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err
    assert cli_main(["install-autostart", str(REPO / "configs" / "tiny.yaml"), "--name", "bad name!"]) == 2
    assert "may only use letters" in capsys.readouterr().err
    assert cli_main(["uninstall-autostart"]) == 2
