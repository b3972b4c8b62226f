"""Paths in the files autostart writes: quoted for each reader, or refused where no quoting can carry them.

Every reader expands something: ``cmd`` expands ``%NAME%`` in a ``.cmd`` file (``%%`` is a literal ``%``), Task
Scheduler expands ``%NAME%`` in a task's command, arguments and folder (with no escape at all), systemd expands
``%`` specifiers and ``$NAME`` in ``ExecStart`` (``%%`` and ``$$`` are literal), cron turns ``%`` into a newline
(``\\%`` is literal) and hands the line to ``sh``. A line break or another control character ends a line in all
of them. Paths are checked once (``check_path``) and then quoted for the file at hand.
"""

from __future__ import annotations

import os
import re
from pathlib import PurePath

from ...errors import ConfigError

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_WINDOWS_VARIABLE = re.compile(r"%([^%]+)%")


def check_path(path: PurePath, what: str) -> str:
    """The path as text; ``ConfigError`` if it holds a line break or another control character."""
    text = str(path)
    if _CONTROL.search(text):
        raise ConfigError(f"the {what} path {text!r} contains a control character; autostart cannot start it")
    return text


def check_task_path(path: PurePath, what: str, environ=os.environ) -> str:
    """A path for a Task Scheduler task: ``%NAME%`` naming a variable would be expanded by the scheduler, which
    has no escape for it, so such a path is refused (the Startup method takes it)."""
    text = check_path(path, what)
    names = {k.upper() for k in environ}
    for name in _WINDOWS_VARIABLE.findall(text):
        if name.upper() in names:
            raise ConfigError(
                f"the {what} path {text!r} contains %{name}%, which Task Scheduler would replace by the value of "
                "that variable; move it, or use --method startup"
            )
    return text


def cmd_file_text(text: str) -> str:
    """``text`` inside a double-quoted argument of a ``.cmd`` file: ``%`` doubled (the only character a quoted
    string does not protect; ``.cmd`` files run without delayed expansion, so ``!`` stays)."""
    return text.replace("%", "%%")


def systemd_quote(arg: str) -> str:
    """One ``ExecStart`` argument: double-quoted, ``\\`` and ``"`` escaped, specifiers (``%%``) and variables
    (``$$``) made literal."""
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "$$") + '"'


def systemd_plain(text: str) -> str:
    """A value systemd does not split or expand as variables (``WorkingDirectory``, ``Description``): only
    specifiers are escaped."""
    return text.replace("%", "%%")
