"""The ``aegis-ckpt`` command line: the parser and the run's commands (``app``), the unattended-operation commands
(``unattended``), housekeeping (``maintenance``) and the read-only reports (``status``).

The entry point is ``aegis_ckpt.cli:main``. ``aegis_ckpt.cli`` was one module before 0.2; its ``cmd_*``
functions stay importable from here for one release.
"""

from .._moved import lazy_exports
from .app import build_parser, main

__all__ = ["build_parser", "main"]

_COMMANDS = {
    **dict.fromkeys("cmd_resume_path cmd_status cmd_train cmd_verify".split(), "app"),
    **dict.fromkeys(
        "cmd_install_autostart cmd_notify cmd_preflight cmd_run cmd_uninstall_autostart".split(), "unattended"
    ),
}
__getattr__ = lazy_exports(__name__, _COMMANDS)
