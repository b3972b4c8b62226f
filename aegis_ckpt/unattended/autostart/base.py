"""What every autostart method shares: the OS seam, the host facts, the options, the plan and the install record.

Everything that touches the OS goes through a ``SystemOps`` object: ``query`` (read-only commands, run even in a
dry run), ``run`` (commands that change something), and file writes. ``DryRunOps`` prints instead of acting;
tests pass a recording one. ``Host`` holds the facts about the machine that decide what to create, so tests can
describe a Windows host on Linux.
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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePath

from ...errors import ConfigError
from ...storage import fsio

CRON_MARKER_PREFIX = "# aegis-ckpt:"
TASK_FOLDER = "aegis-ckpt"
RECORD_DIR = "autostart"
_NAME_RE = re.compile(r"[^A-Za-z0-9_.-]+")


# ---- the OS seam -----------------------------------------------------------------------------------------------
@dataclass
class CommandResult:
    """What a command printed and how it ended."""

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
        """The file's text, or None when it cannot be read (reads happen in a dry run too)."""
        try:
            return Path(path).read_text(encoding="utf-8")
        except OSError:
            return None

    def write_text(self, path: PurePath, text: str, *, encoding: str = "utf-8", newline: str = "\n") -> None:
        """Write ``text`` (creating the folder), with the line ends the file's reader expects; durably and all at
        once, so that a power cut right after installing never leaves a half unit file or task."""
        fsio.makedirs_durable(Path(path).parent)
        fsio.atomic_write_bytes(path, text.replace("\n", newline).encode(encoding))

    def remove(self, path: PurePath) -> bool:
        """Delete a file; False when it was already gone."""
        try:
            fsio.unlink(path)
            fsio.fsync_dir(Path(path).parent)
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


def check_command(result: CommandResult, cmd: list[str]) -> None:
    """Raise ``ConfigError`` with the command's last line of output when it failed."""
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise ConfigError(
            f"{shlex.join(cmd)} failed ({result.returncode}): {detail[-1] if detail else 'no output'}"
        )


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
    """The facts of the machine this runs on."""
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


def default_name(config: PurePath) -> str:
    """A name that is stable for one config path: its stem and a short hash of the whole path."""
    digest = hashlib.sha256(str(config).encode("utf-8")).hexdigest()[:8]
    stem = _NAME_RE.sub("-", config.stem).strip("-") or "run"
    return f"aegis-ckpt-{stem}-{digest}"


def check_name(name: str) -> str:
    """``name`` itself, once it is safe as a file, unit and task name."""
    if not name or _NAME_RE.search(name):
        raise ConfigError(f"autostart name {name!r} may only use letters, digits, '.', '_' and '-'")
    return name


# ---- the plan --------------------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class AutostartOptions:
    """What to install: which config the launcher trains, from where, by which method, under which name."""

    config: PurePath
    """Absolute path of the YAML config the launcher trains."""
    project_dir: PurePath
    """The folder holding ``launch/auto_train.{bat,sh}``."""
    method: str
    name: str


@dataclass
class FileSpec:
    """A file an install writes, with the encoding and line ends its reader expects."""

    path: PurePath
    text: str
    encoding: str = "utf-8"
    newline: str = "\n"


@dataclass
class Plan:
    """Everything an install or uninstall will do, worked out before anything changes (and printed in a dry run)."""

    method: str
    name: str
    files: list[FileSpec] = field(default_factory=list)
    commands: list[list[str]] = field(default_factory=list)
    crontab: str | None = None
    """The whole new crontab (cron method), written with ``crontab -``; ``""`` means remove it (``crontab -r``)."""
    record: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def record_path(host: Host, name: str) -> PurePath:
    """The install record of ``name``: exactly what its install created."""
    return host.state_dir / RECORD_DIR / f"{name}.json"


def read_record(host: Host, ops: SystemOps, name: str) -> dict | None:
    """The install record of ``name``, or None when there is none (or it is unreadable)."""
    text = ops.read_text(record_path(host, name))
    if text is None:
        return None
    try:
        record = json.loads(text)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def launcher_path(opts: AutostartOptions, host: Host) -> PurePath:
    """The launcher script the autostart runs: ``auto_train.bat`` on Windows, ``auto_train.sh`` elsewhere."""
    return opts.project_dir / "launch" / ("auto_train.bat" if host.is_windows else "auto_train.sh")


def launch_paths(
    opts: AutostartOptions, host: Host, check: Callable[[PurePath, str], str]
) -> tuple[str, str, str]:
    """The launcher, the config it trains and the folder it runs in, as text checked by ``check`` (what the
    reader of the file at hand can carry, ``quoting``): every file an autostart method writes names these three."""
    return (
        check(launcher_path(opts, host), "launcher"),
        check(opts.config, "config"),
        check(opts.project_dir, "project"),
    )


class AutostartMethod:
    """One way to start the launcher at logon or boot: what its install and uninstall add to a plan.

    Subclasses fill in ``plan_install`` and ``plan_uninstall``; ``after_uninstall`` runs once the record's files
    are removed (systemd reloads its units there)."""

    name = ""
    windows = False
    """The platform the method is for: Windows (True) or Linux."""

    def plan_install(
        self, plan: Plan, opts: AutostartOptions, host: Host, ops: SystemOps, previous: dict
    ) -> None:
        """Add the files, commands and notes of an install to ``plan`` and its facts to ``plan.record``
        (``previous``: the record of an earlier install of the same name, or empty)."""
        raise NotImplementedError

    def plan_uninstall(self, plan: Plan, host: Host, ops: SystemOps) -> None:
        """Add what undoes ``plan.record`` to ``plan``."""

    def after_uninstall(self, plan: Plan, host: Host, ops: SystemOps, done: list[str]) -> None:
        """Clean up after the record's files are gone; append what was undone to ``done``."""
