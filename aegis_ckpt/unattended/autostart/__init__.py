"""``aegis-ckpt install-autostart CONFIG`` / ``uninstall-autostart``: start the launcher again after a reboot.

Every method runs ``launch/auto_train.{bat,sh} CONFIG``, which logs, runs the preflight and the supervisor, and
does nothing but log "already finished" once the run is done. One module per part:

* ``base``: the OS seam (``SystemOps``, ``DryRunOps``), the host facts (``Host``) and what every method shares
  (options, plan, install record);
* ``windows``: ``schtasks`` (a Task Scheduler task at logon, the Windows default) and ``startup`` (a ``.cmd`` in
  the Startup folder);
* ``linux``: ``systemd`` (a user unit with lingering, the default where systemd runs) and ``cron`` (an
  ``@reboot`` line);
* ``plan``: choosing the method (one object per method, looked up by name), the install and uninstall plans, and
  carrying them out.
"""

from .base import (
    CRON_MARKER_PREFIX,
    RECORD_DIR,
    TASK_FOLDER,
    AutostartOptions,
    CommandResult,
    DryRunOps,
    FileSpec,
    Host,
    Plan,
    SystemOps,
    check_name,
    default_name,
    detect_host,
    launcher_path,
    read_record,
    record_path,
)
from .linux import cron_line, systemd_unit, unit_path
from .plan import (
    METHODS,
    apply_install,
    apply_uninstall,
    default_method,
    find_project_dir,
    plan_install,
    plan_uninstall,
)
from .windows import startup_cmd, startup_folder, task_name, task_xml

__all__ = [
    "CRON_MARKER_PREFIX",
    "METHODS",
    "RECORD_DIR",
    "TASK_FOLDER",
    "AutostartOptions",
    "CommandResult",
    "DryRunOps",
    "FileSpec",
    "Host",
    "Plan",
    "SystemOps",
    "apply_install",
    "apply_uninstall",
    "check_name",
    "cron_line",
    "default_method",
    "default_name",
    "detect_host",
    "find_project_dir",
    "launcher_path",
    "plan_install",
    "plan_uninstall",
    "read_record",
    "record_path",
    "startup_cmd",
    "startup_folder",
    "systemd_unit",
    "task_name",
    "task_xml",
    "unit_path",
]
