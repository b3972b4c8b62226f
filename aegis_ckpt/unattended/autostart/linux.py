"""The Linux autostart methods.

* ``systemd`` (the default where systemd runs): a user unit with ``Restart=on-failure``,
  ``WantedBy=default.target``, enabled with ``systemctl --user enable``, plus ``loginctl enable-linger`` so that
  it starts at boot without anyone logging in. Uninstall turns lingering off again only if this install turned it
  on and no other installed unit needs it.
* ``cron`` (without systemd): an ``@reboot`` line in the user's crontab, tagged with ``# aegis-ckpt:<name>``;
  uninstall removes that line, and the whole crontab only if the install created it.
"""

from __future__ import annotations

import shlex
from pathlib import Path, PurePath

from ...errors import ConfigError
from .base import (
    CRON_MARKER_PREFIX,
    RECORD_DIR,
    AutostartMethod,
    AutostartOptions,
    FileSpec,
    Host,
    Plan,
    SystemOps,
    check_command,
    launch_paths,
    launcher_path,
    read_record,
)
from .quoting import check_path, systemd_plain, systemd_quote

# ---- systemd -----------------------------------------------------------------------------------------------------
_systemd_quote = systemd_quote


def unit_path(host: Host, name: str) -> PurePath:
    """Where a user unit lives: systemd reads ``~/.config/systemd/user/``."""
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


def _linger_enabled(host: Host, ops: SystemOps) -> bool:
    result = ops.query(["loginctl", "show-user", host.user, "--property=Linger"])
    return result.returncode == 0 and result.stdout.strip() == "Linger=yes"


def _others_need_linger(host: Host, ops: SystemOps, name: str) -> bool:
    folder = Path(host.state_dir / RECORD_DIR)
    if not folder.is_dir():
        return False
    for path in folder.glob("*.json"):
        other = read_record(host, ops, path.stem)
        if other and other.get("name") != name and other.get("method") == "systemd":
            return True
    return False


class SystemdMethod(AutostartMethod):
    """A systemd user unit, started at boot through lingering."""

    name = "systemd"

    def plan_install(
        self, plan: Plan, opts: AutostartOptions, host: Host, ops: SystemOps, previous: dict
    ) -> None:
        unit = f"{opts.name}.service"
        plan.files.append(FileSpec(unit_path(host, opts.name), systemd_unit(opts, host)))
        plan.commands += [["systemctl", "--user", "daemon-reload"], ["systemctl", "--user", "enable", unit]]
        enabled_by_us = bool(previous.get("linger_enabled_by_us"))
        if not _linger_enabled(host, ops):
            plan.commands.append(["loginctl", "enable-linger", host.user])
            enabled_by_us = True
        plan.record.update(unit=unit, linger_enabled_by_us=enabled_by_us)
        plan.notes.append(f"starts at boot; start it now with: systemctl --user start {unit}")
        plan.notes.append(
            f"follow it with: journalctl --user -u {unit} -f (and the log files in logs/ of the run's output dir)"
        )

    def plan_uninstall(self, plan: Plan, host: Host, ops: SystemOps) -> None:
        plan.commands.append(
            ["systemctl", "--user", "disable", plan.record.get("unit", f"{plan.name}.service")]
        )
        plan.notes.append(
            f"a training started by it keeps running; stop it with: systemctl --user stop {plan.record.get('unit')}"
        )

    def after_uninstall(self, plan: Plan, host: Host, ops: SystemOps, done: list[str]) -> None:
        ops.run(["systemctl", "--user", "daemon-reload"])
        if plan.record.get("linger_enabled_by_us") and not _others_need_linger(host, ops, plan.name):
            cmd = ["loginctl", "disable-linger", host.user]
            ops.run(cmd)
            done.append(shlex.join(cmd))


# ---- cron --------------------------------------------------------------------------------------------------------
def cron_line(opts: AutostartOptions, host: Host) -> str:
    """The ``@reboot`` line, tagged with the autostart's name so uninstall finds exactly it."""
    launcher, config, project = (shlex.quote(text) for text in launch_paths(opts, host, check_path))
    command = f"cd {project} && /bin/bash {launcher} {config} >/dev/null 2>&1"
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


def write_crontab(ops: SystemOps, text: str) -> None:
    """Install ``text`` as the user's crontab; ``""`` removes the crontab."""
    cmd = ["crontab", "-r"] if text == "" else ["crontab", "-"]
    check_command(ops.run(cmd, text) if text else ops.run(cmd), cmd)


class CronMethod(AutostartMethod):
    """An ``@reboot`` line in the user's crontab."""

    name = "cron"

    def plan_install(
        self, plan: Plan, opts: AutostartOptions, host: Host, ops: SystemOps, previous: dict
    ) -> None:
        current, existed = _read_crontab(ops)
        line = cron_line(opts, host)
        plan.crontab = "\n".join([*_without_marker(current, opts.name), line]) + "\n"
        plan.record.update(
            cron_line=line, crontab_existed_before=previous.get("crontab_existed_before", existed)
        )
        plan.notes.append("starts at the next boot (cron @reboot)")

    def plan_uninstall(self, plan: Plan, host: Host, ops: SystemOps) -> None:
        current, _existed = _read_crontab(ops)
        remaining = _without_marker(current, plan.name)
        if not remaining and not plan.record.get("crontab_existed_before", True):
            plan.crontab = ""
        else:
            plan.crontab = "\n".join(remaining) + ("\n" if remaining else "")
