"""Install and uninstall plans: which method, what it creates, and carrying the plan out.

A method is one object in ``METHOD_IMPLS`` (``windows``, ``linux``); choosing it is a lookup. Installing twice
gives the same result. Every install writes a record (``autostart/<name>.json`` in the user's aegis-ckpt config
folder) of exactly what it created; uninstall undoes that and nothing else (it leaves a running training alone,
and lingering or a crontab only if it had created them).
"""

from __future__ import annotations

import json
import shlex
import time
from pathlib import Path, PurePath, PureWindowsPath

from ...errors import ConfigError
from ...system.platform import PACKAGE_DIR
from .base import (
    AutostartMethod,
    AutostartOptions,
    Host,
    Plan,
    SystemOps,
    check_command,
    read_record,
    record_path,
)
from .linux import CronMethod, SystemdMethod, write_crontab
from .windows import SchtasksMethod, StartupMethod

METHOD_IMPLS: dict[str, AutostartMethod] = {
    m.name: m for m in (SchtasksMethod(), StartupMethod(), SystemdMethod(), CronMethod())
}
METHODS = tuple(METHOD_IMPLS)


def default_method(host: Host) -> str:
    """The method for this host: Task Scheduler on Windows, systemd where it runs, else cron."""
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


def _method(opts: AutostartOptions, host: Host) -> AutostartMethod:
    method = METHOD_IMPLS.get(opts.method)
    if method is None:
        raise ConfigError(f"--method must be one of {', '.join(METHODS)} (got {opts.method!r})")
    if method.windows != host.is_windows:
        raise ConfigError(f"--method {opts.method} is for {'Windows' if method.windows else 'Linux'} only")
    return method


def plan_install(opts: AutostartOptions, host: Host, ops: SystemOps) -> Plan:
    """What installing ``opts`` would create (nothing is changed yet)."""
    method = _method(opts, host)
    previous = read_record(host, ops, opts.name)
    if previous is not None and previous.get("method") != opts.method:
        raise ConfigError(
            f"{opts.name} is already installed with method {previous.get('method')}: "
            f"run aegis-ckpt uninstall-autostart --name {opts.name} first"
        )
    previous = previous or {}
    plan = Plan(opts.method, opts.name)
    plan.record = {
        "name": opts.name,
        "method": opts.method,
        "config": str(opts.config),
        "project_dir": str(opts.project_dir),
        "installed_at": previous.get("installed_at") or time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "files": [],
    }
    method.plan_install(plan, opts, host, ops, previous)
    plan.record["files"] = [str(f.path) for f in plan.files]
    return plan


def plan_uninstall(name: str, host: Host, ops: SystemOps) -> Plan:
    """What uninstalling ``name`` would undo, from its install record."""
    record = read_record(host, ops, name)
    if record is None:
        raise ConfigError(
            f"no autostart named {name} was installed by aegis-ckpt (no record {record_path(host, name)})"
        )
    plan = Plan(str(record.get("method")), name, record=record)
    method = METHOD_IMPLS.get(plan.method)
    if method is not None:
        method.plan_uninstall(plan, host, ops)
    return plan


# ---- apply -----------------------------------------------------------------------------------------------------
def apply_install(plan: Plan, host: Host, ops: SystemOps) -> None:
    """Carry out an install plan."""
    # The record first: should a command fail, uninstall still knows what to remove.
    ops.write_text(record_path(host, plan.name), json.dumps(plan.record, indent=2) + "\n")
    for f in plan.files:
        ops.write_text(f.path, f.text, encoding=f.encoding, newline=f.newline)
    for cmd in plan.commands:
        check_command(ops.run(cmd), cmd)
    if plan.crontab is not None:
        write_crontab(ops, plan.crontab)


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
        write_crontab(ops, plan.crontab)
        done.append("crontab line removed")
    for path in plan.record.get("files", []):
        target: PurePath = PureWindowsPath(path) if host.is_windows else Path(path)
        if ops.remove(target):
            done.append(f"removed {path}")
    method = METHOD_IMPLS.get(plan.method)
    if method is not None:
        method.after_uninstall(plan, host, ops, done)
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
