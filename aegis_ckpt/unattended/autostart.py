"""``aegis-ckpt install-autostart CONFIG`` / ``uninstall-autostart``: start the launcher again after a reboot.

What each method creates (all of it runs ``launch/auto_train.{bat,sh} CONFIG``, which logs, runs the preflight
and the supervisor, and does nothing but log "already finished" once the run is done):

* ``schtasks`` (Windows, the default): a Task Scheduler task "at logon of this user", registered from an XML
  definition because only XML can say what unattended training needs: no 72-hour execution limit, keep running
  on battery, restart on failure, start when available, one instance. It runs in the user's session, so the
  console window and the end sound are there.
* ``startup`` (Windows): ``<name>.cmd`` in the user's Startup folder, which starts the launcher minimized. A
  ``.cmd`` rather than a ``.lnk`` shortcut: a shortcut can only be written through COM (``IShellLink``, i.e.
  pywin32 or PowerShell), a ``.cmd`` is plain text that Explorer runs the same way at logon.
* ``systemd`` (Linux with systemd, the default there): a user unit with ``Restart=on-failure``,
  ``WantedBy=default.target``, enabled with ``systemctl --user enable``, plus ``loginctl enable-linger`` so that
  it starts at boot without anyone logging in.
* ``cron`` (Linux without systemd): an ``@reboot`` line in the user's crontab, tagged with ``# aegis-ckpt:<name>``.

Installing twice gives the same result. Every install writes a record (``autostart/<name>.json`` in the user's
aegis-ckpt config folder) of exactly what it created; uninstall undoes that and nothing else (it leaves a running
training alone, and lingering or a crontab only if it had created them).

Everything that touches the OS goes through a ``SystemOps`` object: ``query`` (read-only commands, run even in a
dry run), ``run`` (commands that change something), and file writes. ``DryRunOps`` prints instead of acting;
tests pass a recording one.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePath, PureWindowsPath
from xml.sax.saxutils import escape as xml_escape

from .autostart_quoting import (
    check_path,
    check_task_path,
    cmd_file_text,
    systemd_plain,
    systemd_quote,
)

from ..errors import ConfigError

PACKAGE_DIR = Path(__file__).resolve().parents[1]
"""The ``aegis_ckpt`` folder (its parent is the source checkout in an editable install)."""

METHODS = ("schtasks", "startup", "systemd", "cron")
CRON_MARKER_PREFIX = "# aegis-ckpt:"
TASK_FOLDER = "aegis-ckpt"
RECORD_DIR = "autostart"
_NAME_RE = re.compile(r"[^A-Za-z0-9_.-]+")


# ---- the OS seam -----------------------------------------------------------------------------------------------
@dataclass
class CommandResult:
    returncode: int
    stdout: str = ""
    stderr: str = ""


class SystemOps:
    """Real file and command operations."""

    dry_run = False

    def query(self, cmd: list[str]) -> CommandResult:
        """A read-only command (also run in a dry run)."""
        return self._exec(cmd, None)

    def run(self, cmd: list[str], input_text: str | None = None) -> CommandResult:
        """A command that changes the system."""
        return self._exec(cmd, input_text)

    @staticmethod
    def _exec(cmd: list[str], input_text: str | None) -> CommandResult:
        try:
            p = subprocess.run(cmd, input=input_text, capture_output=True, text=True, check=False, timeout=60)
        except FileNotFoundError as e:
            return CommandResult(127, "", str(e))
        except subprocess.TimeoutExpired:
            return CommandResult(124, "", f"{cmd[0]} did not answer within 60 s")
        return CommandResult(p.returncode, p.stdout, p.stderr)

    def read_text(self, path: PurePath) -> str | None:
        try:
            return Path(path).read_text(encoding="utf-8")
        except OSError:
            return None

    def write_text(self, path: PurePath, text: str, *, encoding: str = "utf-8", newline: str = "\n") -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", encoding=encoding, newline=newline) as f:
            f.write(text)

    def remove(self, path: PurePath) -> bool:
        try:
            Path(path).unlink()
            return True
        except FileNotFoundError:
            return False


class DryRunOps(SystemOps):
    """Reads the system, changes nothing, and prints what it would do."""

    dry_run = True

    def __init__(self, out=None):
        self.out = out or sys.stdout

    def run(self, cmd: list[str], input_text: str | None = None) -> CommandResult:
        print(f"would run: {shlex.join(cmd)}", file=self.out)
        if input_text is not None:
            print("  with input:", file=self.out)
            for line in input_text.splitlines():
                print(f"    {line}", file=self.out)
        return CommandResult(0)

    def write_text(self, path: PurePath, text: str, *, encoding: str = "utf-8", newline: str = "\n") -> None:
        print(
            f"would write {path} ({encoding}, {'CRLF' if newline == chr(13) + chr(10) else 'LF'}):",
            file=self.out,
        )
        for line in text.splitlines():
            print(f"    {line}", file=self.out)

    def remove(self, path: PurePath) -> bool:
        print(f"would remove {path}", file=self.out)
        return True


# ---- where things are ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Host:
    """The facts about this machine that decide what to create, so tests can describe a Windows host here."""

    platform: str  # "win32", "linux", "darwin"
    user: str
    config_home: PurePath
    """Per-user settings folder: ``%APPDATA%`` on Windows, ``$XDG_CONFIG_HOME`` or ``~/.config`` elsewhere."""
    has_systemd: bool = False
    has_crontab: bool = False

    @property
    def is_windows(self) -> bool:
        return self.platform == "win32"

    @property
    def state_dir(self) -> PurePath:
        return self.config_home / "aegis-ckpt"


def detect_host() -> Host:
    windows = sys.platform == "win32"
    user = os.environ.get("USERNAME") if windows else None
    if windows and os.environ.get("USERDOMAIN"):
        user = f"{os.environ['USERDOMAIN']}\\{user}"
    if windows:
        config_home = Path(os.environ.get("APPDATA") or Path.home() / "AppData" / "Roaming")
    else:
        config_home = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return Host(
        platform=sys.platform,
        user=user or getpass.getuser(),
        config_home=config_home,
        has_systemd=os.path.isdir("/run/systemd/system") and shutil.which("systemctl") is not None,
        has_crontab=shutil.which("crontab") is not None,
    )


def default_method(host: Host) -> str:
    if host.is_windows:
        return "schtasks"
    if host.platform == "darwin":
        raise ConfigError(
            "macOS has no autostart method here yet: add a launchd agent that runs launch/auto_train.sh CONFIG"
        )
    if host.has_systemd:
        return "systemd"
    if host.has_crontab:
        return "cron"
    raise ConfigError(
        "neither systemd nor crontab found: install cron (apt-get install cron) or start launch/auto_train.sh "
        "from your desktop's autostart"
    )


def default_name(config: PurePath) -> str:
    digest = hashlib.sha256(str(config).encode("utf-8")).hexdigest()[:8]
    stem = _NAME_RE.sub("-", config.stem).strip("-") or "run"
    return f"aegis-ckpt-{stem}-{digest}"


def check_name(name: str) -> str:
    if not name or _NAME_RE.search(name):
        raise ConfigError(f"autostart name {name!r} may only use letters, digits, '.', '_' and '-'")
    return name


# ---- the plan --------------------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class AutostartOptions:
    config: PurePath
    """Absolute path of the YAML config the launcher trains."""
    project_dir: PurePath
    """The folder holding ``launch/auto_train.{bat,sh}``."""
    method: str
    name: str


@dataclass
class FileSpec:
    path: PurePath
    text: str
    encoding: str = "utf-8"
    newline: str = "\n"


@dataclass
class Plan:
    method: str
    name: str
    files: list[FileSpec] = field(default_factory=list)
    commands: list[list[str]] = field(default_factory=list)
    crontab: str | None = None
    """The whole new crontab (cron method), written with ``crontab -``; ``""`` means remove it (``crontab -r``)."""
    record: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def record_path(host: Host, name: str) -> PurePath:
    return host.state_dir / RECORD_DIR / f"{name}.json"


def read_record(host: Host, ops: SystemOps, name: str) -> dict | None:
    text = ops.read_text(record_path(host, name))
    if text is None:
        return None
    try:
        record = json.loads(text)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def launcher_path(opts: AutostartOptions, host: Host) -> PurePath:
    return opts.project_dir / "launch" / ("auto_train.bat" if host.is_windows else "auto_train.sh")


# -- Windows --
def task_name(name: str) -> str:
    return f"\\{TASK_FOLDER}\\{name}"


def task_xml(opts: AutostartOptions, host: Host) -> str:
    """The Task Scheduler definition. ``ExecutionTimeLimit PT0S`` matters most: the default (72 h) would kill a
    long training run."""
    user = xml_escape(host.user)
    return f"""<?xml version="1.0" encoding="UTF-16"?>
<Task version="1.2" xmlns="http://schemas.microsoft.com/windows/2004/02/mit/task">
  <RegistrationInfo>
    <Description>{xml_escape(f"aegis-ckpt unattended training of {opts.config} (created by aegis-ckpt install-autostart)")}</Description>
  </RegistrationInfo>
  <Triggers>
    <LogonTrigger>
      <Enabled>true</Enabled>
      <UserId>{user}</UserId>
      <Delay>PT30S</Delay>
    </LogonTrigger>
  </Triggers>
  <Principals>
    <Principal id="Author">
      <UserId>{user}</UserId>
      <LogonType>InteractiveToken</LogonType>
      <RunLevel>LeastPrivilege</RunLevel>
    </Principal>
  </Principals>
  <Settings>
    <MultipleInstancesPolicy>IgnoreNew</MultipleInstancesPolicy>
    <DisallowStartIfOnBatteries>false</DisallowStartIfOnBatteries>
    <StopIfGoingOnBatteries>false</StopIfGoingOnBatteries>
    <AllowHardTerminate>true</AllowHardTerminate>
    <StartWhenAvailable>true</StartWhenAvailable>
    <RunOnlyIfNetworkAvailable>false</RunOnlyIfNetworkAvailable>
    <IdleSettings>
      <StopOnIdleEnd>false</StopOnIdleEnd>
      <RestartOnIdle>false</RestartOnIdle>
    </IdleSettings>
    <AllowStartOnDemand>true</AllowStartOnDemand>
    <Enabled>true</Enabled>
    <Hidden>false</Hidden>
    <RunOnlyIfIdle>false</RunOnlyIfIdle>
    <WakeToRun>false</WakeToRun>
    <ExecutionTimeLimit>PT0S</ExecutionTimeLimit>
    <Priority>5</Priority>
    <RestartOnFailure>
      <Interval>PT5M</Interval>
      <Count>3</Count>
    </RestartOnFailure>
  </Settings>
  <Actions Context="Author">
    <Exec>
      <Command>{xml_escape(check_task_path(launcher_path(opts, host), "launcher"))}</Command>
      <Arguments>{xml_escape(f'"{check_task_path(opts.config, "config")}"')}</Arguments>
      <WorkingDirectory>{xml_escape(check_task_path(opts.project_dir, "project"))}</WorkingDirectory>
    </Exec>
  </Actions>
</Task>
"""


def startup_folder(host: Host) -> PurePath:
    return host.config_home / "Microsoft" / "Windows" / "Start Menu" / "Programs" / "Startup"


def startup_cmd(opts: AutostartOptions, host: Host) -> str:
    return (
        "@echo off\n"
        f"rem Created by aegis-ckpt install-autostart ({opts.name}); remove with: aegis-ckpt uninstall-autostart --name {opts.name}\n"
        "chcp 65001 >nul\n"  # the file is UTF-8: paths with non-ASCII letters
        f'cd /d "{cmd_file_text(check_path(opts.project_dir, "project"))}"\n'
        f'start "aegis-ckpt training" /min "{cmd_file_text(check_path(launcher_path(opts, host), "launcher"))}" '
        f'"{cmd_file_text(check_path(opts.config, "config"))}"\n'
    )


# -- Linux --
_systemd_quote = systemd_quote


def unit_path(host: Host, name: str) -> PurePath:
    return host.config_home / "systemd" / "user" / f"{name}.service"


def systemd_unit(opts: AutostartOptions, host: Host) -> str:
    """The user unit. ``KillMode=mixed``: ``systemctl stop`` sends SIGTERM to the launcher only, which passes it
    down once; SIGTERM to every process at once would reach the training twice (directly and forwarded), and a
    second signal means "stop now, skip the checkpoint". The exit codes that mean bad input or a requested stop
    are not restarted."""
    launcher = str(launcher_path(opts, host))
    return f"""# Created by aegis-ckpt install-autostart; remove with: aegis-ckpt uninstall-autostart --name {opts.name}
[Unit]
Description=aegis-ckpt unattended training of {systemd_plain(check_path(opts.config, "config"))}
StartLimitIntervalSec=3600
StartLimitBurst=5

[Service]
Type=simple
WorkingDirectory={systemd_plain(check_path(opts.project_dir, "project"))}
ExecStart=/bin/bash {_systemd_quote(launcher)} {_systemd_quote(str(opts.config))}
Restart=on-failure
RestartSec=120
RestartPreventExitStatus=2 129 130 143
KillMode=mixed
TimeoutStopSec=600

[Install]
WantedBy=default.target
"""


def cron_line(opts: AutostartOptions, host: Host) -> str:
    command = (
        f"cd {shlex.quote(check_path(opts.project_dir, 'project'))} && "
        f"/bin/bash {shlex.quote(check_path(launcher_path(opts, host), 'launcher'))} "
        f"{shlex.quote(check_path(opts.config, 'config'))} >/dev/null 2>&1"
    )
    # cron turns an unescaped % into a newline.
    return f"@reboot {command.replace('%', chr(92) + '%')} {CRON_MARKER_PREFIX}{opts.name}"


def _read_crontab(ops: SystemOps) -> tuple[str, bool]:
    """The current crontab and whether one exists (``crontab -l`` fails with "no crontab for USER")."""
    result = ops.query(["crontab", "-l"])
    if result.returncode != 0:
        if "no crontab" in (result.stderr + result.stdout).lower():
            return "", False
        raise ConfigError(f"crontab -l failed: {(result.stderr or result.stdout).strip()}")
    return result.stdout, True


def _without_marker(crontab: str, name: str) -> list[str]:
    tag = f"{CRON_MARKER_PREFIX}{name}"
    return [line for line in crontab.splitlines() if not line.rstrip().endswith(tag)]


def _linger_enabled(host: Host, ops: SystemOps) -> bool:
    result = ops.query(["loginctl", "show-user", host.user, "--property=Linger"])
    return result.returncode == 0 and result.stdout.strip() == "Linger=yes"


# -- install / uninstall plans --
def plan_install(opts: AutostartOptions, host: Host, ops: SystemOps) -> Plan:
    if opts.method not in METHODS:
        raise ConfigError(f"--method must be one of {', '.join(METHODS)} (got {opts.method!r})")
    windows_method = opts.method in ("schtasks", "startup")
    if windows_method != host.is_windows:
        raise ConfigError(f"--method {opts.method} is for {'Windows' if windows_method else 'Linux'} only")
    previous = read_record(host, ops, opts.name)
    if previous is not None and previous.get("method") != opts.method:
        raise ConfigError(
            f"{opts.name} is already installed with method {previous.get('method')}: "
            f"run aegis-ckpt uninstall-autostart --name {opts.name} first"
        )
    plan = Plan(opts.method, opts.name)
    record = {
        "name": opts.name,
        "method": opts.method,
        "config": str(opts.config),
        "project_dir": str(opts.project_dir),
        "installed_at": (previous or {}).get("installed_at") or time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "files": [],
    }
    if opts.method == "schtasks":
        xml_file = host.state_dir / RECORD_DIR / f"{opts.name}.xml"
        plan.files.append(FileSpec(xml_file, task_xml(opts, host), encoding="utf-16", newline="\r\n"))
        plan.commands.append(
            ["schtasks", "/Create", "/TN", task_name(opts.name), "/XML", str(xml_file), "/F"]
        )
        record["task"] = task_name(opts.name)
        plan.notes.append(
            f'the task starts at your next logon; start it now with: schtasks /Run /TN "{task_name(opts.name)}"'
        )
    elif opts.method == "startup":
        plan.files.append(
            FileSpec(startup_folder(host) / f"{opts.name}.cmd", startup_cmd(opts, host), newline="\r\n")
        )
        plan.notes.append("the launcher starts at your next logon (minimized console window)")
    elif opts.method == "systemd":
        unit = f"{opts.name}.service"
        plan.files.append(FileSpec(unit_path(host, opts.name), systemd_unit(opts, host)))
        plan.commands += [["systemctl", "--user", "daemon-reload"], ["systemctl", "--user", "enable", unit]]
        lingering = _linger_enabled(host, ops)
        enabled_by_us = bool((previous or {}).get("linger_enabled_by_us"))
        if not lingering:
            plan.commands.append(["loginctl", "enable-linger", host.user])
            enabled_by_us = True
        record.update(unit=unit, linger_enabled_by_us=enabled_by_us)
        plan.notes.append(f"starts at boot; start it now with: systemctl --user start {unit}")
        plan.notes.append(f"follow it with: journalctl --user -u {unit} -f (and the log files under logs/)")
    else:  # cron
        current, existed = _read_crontab(ops)
        lines = _without_marker(current, opts.name) + [cron_line(opts, host)]
        plan.crontab = "\n".join(lines) + "\n"
        record.update(
            cron_line=cron_line(opts, host),
            crontab_existed_before=(previous or {}).get("crontab_existed_before", existed),
        )
        plan.notes.append("starts at the next boot (cron @reboot)")
    record["files"] = [str(f.path) for f in plan.files]
    plan.record = record
    return plan


def plan_uninstall(name: str, host: Host, ops: SystemOps) -> Plan:
    record = read_record(host, ops, name)
    if record is None:
        raise ConfigError(
            f"no autostart named {name} was installed by aegis-ckpt (no record {record_path(host, name)})"
        )
    method = record.get("method")
    plan = Plan(str(method), name, record=record)
    if method == "schtasks":
        plan.commands.append(["schtasks", "/Delete", "/TN", record.get("task", task_name(name)), "/F"])
    elif method == "systemd":
        plan.commands.append(["systemctl", "--user", "disable", record.get("unit", f"{name}.service")])
        plan.notes.append(
            f"a training started by it keeps running; stop it with: systemctl --user stop {record.get('unit')}"
        )
    elif method == "cron":
        current, _existed = _read_crontab(ops)
        remaining = _without_marker(current, name)
        if not remaining and not record.get("crontab_existed_before", True):
            plan.crontab = ""
        else:
            plan.crontab = "\n".join(remaining) + ("\n" if remaining else "")
    return plan


def _others_need_linger(host: Host, ops: SystemOps, name: str) -> bool:
    folder = Path(host.state_dir / RECORD_DIR)
    if not folder.is_dir():
        return False
    for path in folder.glob("*.json"):
        other = read_record(host, ops, path.stem)
        if other and other.get("name") != name and other.get("method") == "systemd":
            return True
    return False


# ---- apply -----------------------------------------------------------------------------------------------------
def _check(result: CommandResult, cmd: list[str]) -> None:
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise ConfigError(
            f"{shlex.join(cmd)} failed ({result.returncode}): {detail[-1] if detail else 'no output'}"
        )


def _write_crontab(ops: SystemOps, text: str) -> None:
    if text == "":
        cmd = ["crontab", "-r"]
        _check(ops.run(cmd), cmd)
    else:
        cmd = ["crontab", "-"]
        _check(ops.run(cmd, text), cmd)


def apply_install(plan: Plan, host: Host, ops: SystemOps) -> None:
    # The record first: should a command fail, uninstall still knows what to remove.
    ops.write_text(record_path(host, plan.name), json.dumps(plan.record, indent=2) + "\n")
    for f in plan.files:
        ops.write_text(f.path, f.text, encoding=f.encoding, newline=f.newline)
    for cmd in plan.commands:
        _check(ops.run(cmd), cmd)
    if plan.crontab is not None:
        _write_crontab(ops, plan.crontab)


def apply_uninstall(plan: Plan, host: Host, ops: SystemOps) -> list[str]:
    """Undo what the record says was created; returns what was removed."""
    done: list[str] = []
    for cmd in plan.commands:
        result = ops.run(cmd)
        if result.returncode == 0:
            done.append(shlex.join(cmd))
        elif not ops.dry_run:
            # Already gone (deleted by hand) is fine: the goal is that it does not exist.
            done.append(
                f"{shlex.join(cmd)} (failed, probably already gone: {(result.stderr or result.stdout).strip()})"
            )
    if plan.crontab is not None:
        _write_crontab(ops, plan.crontab)
        done.append("crontab line removed")
    for path in plan.record.get("files", []):
        target = PureWindowsPath(path) if host.is_windows else Path(path)
        if ops.remove(target):
            done.append(f"removed {path}")
    if plan.method == "systemd":
        cmd = ["systemctl", "--user", "daemon-reload"]
        ops.run(cmd)
        if plan.record.get("linger_enabled_by_us") and not _others_need_linger(host, ops, plan.name):
            cmd = ["loginctl", "disable-linger", host.user]
            ops.run(cmd)
            done.append(shlex.join(cmd))
    ops.remove(record_path(host, plan.name))
    return done


def find_project_dir(config: Path) -> Path:
    """The folder with ``launch/``: the current directory, the config's project, or this package's checkout."""
    candidates = [Path.cwd(), *config.parents, PACKAGE_DIR.parent]
    for folder in candidates:
        if (folder / "launch" / "auto_train.sh").is_file() and (
            folder / "launch" / "auto_train.bat"
        ).is_file():
            return folder
    raise ConfigError(
        "cannot find launch/auto_train.sh and launch/auto_train.bat: run this from the project folder or pass --project"
    )
