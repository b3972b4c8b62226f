"""The ``aegis-ckpt`` command line: the parser and commands (``app``) and the read-only reports (``status``).

The entry point is ``aegis_ckpt.cli:main``. ``aegis_ckpt.cli`` was one module before 0.2; its ``cmd_*``
functions stay importable from here for one release.
"""

from .._moved import lazy_exports
from .app import build_parser, main

__all__ = ["build_parser", "main"]

_COMMANDS = (
    "cmd_install_autostart cmd_notify cmd_preflight cmd_resume_path cmd_run cmd_status cmd_train "
    "cmd_uninstall_autostart cmd_verify"
)
__getattr__ = lazy_exports(__name__, dict.fromkeys(_COMMANDS.split(), "app"))
