"""The Windows autostart methods.

* ``schtasks`` (the default): a Task Scheduler task "at logon of this user", registered from an XML definition
  because only XML can say what unattended training needs: no 72-hour execution limit, keep running on battery,
  restart on failure, start when available, one instance. It runs in the user's session, so the console window
  and the end sound are there.
* ``startup``: ``<name>.cmd`` in the user's Startup folder, which starts the launcher minimized. A ``.cmd``
  rather than a ``.lnk`` shortcut: a shortcut can only be written through COM (``IShellLink``, i.e. pywin32 or
  PowerShell), a ``.cmd`` is plain text that Explorer runs the same way at logon.
"""

from __future__ import annotations

from pathlib import PurePath
from xml.sax.saxutils import escape as xml_escape

from .base import (
    RECORD_DIR,
    TASK_FOLDER,
    AutostartMethod,
    AutostartOptions,
    FileSpec,
    Host,
    Plan,
    SystemOps,
    launch_paths,
)
from .quoting import check_path, check_task_path, cmd_file_text


def task_name(name: str) -> str:
    """The task's path in the Task Scheduler library (its own folder, so the user's tasks stay apart)."""
    return f"\\{TASK_FOLDER}\\{name}"


def task_xml(opts: AutostartOptions, host: Host) -> str:
    """The Task Scheduler definition. ``ExecutionTimeLimit PT0S`` matters most: the default (72 h) would kill a
    long training run."""
    user = xml_escape(host.user)
    launcher, config, project = launch_paths(opts, host, check_task_path)
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
      <Command>{xml_escape(launcher)}</Command>
      <Arguments>{xml_escape(f'"{config}"')}</Arguments>
      <WorkingDirectory>{xml_escape(project)}</WorkingDirectory>
    </Exec>
  </Actions>
</Task>
"""


def startup_folder(host: Host) -> PurePath:
    """The user's Startup folder: Explorer runs what is in it at logon."""
    return host.config_home / "Microsoft" / "Windows" / "Start Menu" / "Programs" / "Startup"


def startup_cmd(opts: AutostartOptions, host: Host) -> str:
    """The ``.cmd`` file that starts the launcher in a minimized console window."""
    launcher, config, project = (cmd_file_text(text) for text in launch_paths(opts, host, check_path))
    return (
        "@echo off\n"
        f"rem Created by aegis-ckpt install-autostart ({opts.name}); remove with: aegis-ckpt uninstall-autostart --name {opts.name}\n"
        "chcp 65001 >nul\n"  # the file is UTF-8: paths with non-ASCII letters
        f'cd /d "{project}"\n'
        f'start "aegis-ckpt training" /min "{launcher}" "{config}"\n'
    )


class SchtasksMethod(AutostartMethod):
    """A Task Scheduler task at logon, registered from its XML definition."""

    name = "schtasks"
    windows = True

    def plan_install(
        self, plan: Plan, opts: AutostartOptions, host: Host, ops: SystemOps, previous: dict
    ) -> None:
        xml_file = host.state_dir / RECORD_DIR / f"{opts.name}.xml"
        plan.files.append(FileSpec(xml_file, task_xml(opts, host), encoding="utf-16", newline="\r\n"))
        plan.commands.append(
            ["schtasks", "/Create", "/TN", task_name(opts.name), "/XML", str(xml_file), "/F"]
        )
        plan.record["task"] = task_name(opts.name)
        plan.notes.append(
            f'the task starts at your next logon; start it now with: schtasks /Run /TN "{task_name(opts.name)}"'
        )

    def plan_uninstall(self, plan: Plan, host: Host, ops: SystemOps) -> None:
        plan.commands.append(
            ["schtasks", "/Delete", "/TN", plan.record.get("task", task_name(plan.name)), "/F"]
        )


class StartupMethod(AutostartMethod):
    """A ``.cmd`` in the user's Startup folder (removed with the record's files)."""

    name = "startup"
    windows = True

    def plan_install(
        self, plan: Plan, opts: AutostartOptions, host: Host, ops: SystemOps, previous: dict
    ) -> None:
        plan.files.append(
            FileSpec(startup_folder(host) / f"{opts.name}.cmd", startup_cmd(opts, host), newline="\r\n")
        )
        plan.notes.append("the launcher starts at your next logon (minimized console window)")
