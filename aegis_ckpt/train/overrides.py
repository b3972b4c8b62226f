"""What changes a config's text before it is validated: ``${VAR}`` references to the environment and ``--set``
assignments from the command line.

Both run before ``config.parse_config`` checks anything, so an override or a variable is validated exactly like a
value written in the file. Neither ever echoes a value in an error: it may be a webhook URL or a token.
"""

from __future__ import annotations

import copy
import os
import re
from typing import Any

import yaml

from ..errors import ConfigError

_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(value: Any, where: str) -> Any:
    """``value`` with every ``${VAR}`` / ``${VAR:-default}`` in its strings replaced (``where`` names the key in
    errors)."""
    if isinstance(value, str):

        def repl(m: re.Match) -> str:
            name, default = m.group(1), m.group(2)
            if name in os.environ:
                return os.environ[name]
            if default is not None:
                return default
            raise ConfigError(f"{where}: environment variable {name} is not set (use ${{{name}:-default}})")

        return _ENV_RE.sub(repl, value)
    if isinstance(value, dict):
        return {k: expand_env(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, where) for v in value]
    return value


def apply_overrides(raw: dict[str, Any], assignments: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` assignments (values parsed as YAML) to a raw config mapping."""
    out = copy.deepcopy(raw)
    for item in assignments:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, _, text = item.partition("=")
        parts = [p for p in key.strip().split(".") if p]
        if len(parts) < 2:
            raise ConfigError(f"--set key must be section.key (e.g. training.max_steps=100), got {key!r}")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as e:
            # Never echo the value: it may be a webhook URL or a token (PyYAML's message quotes the text).
            raise ConfigError(f"--set {key}: value is not valid YAML{yaml_problem(e)}") from None
        node = out
        for p in parts[:-1]:
            child = node.get(p)
            if child is None:
                child = node[p] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set {key}: {p} is not a section")
            node = child
        node[parts[-1]] = value
    return out


def yaml_problem(error: yaml.YAMLError) -> str:
    """Where and what, without the text around it (which may hold a secret): " at line 3, column 7: ..."."""
    mark = getattr(error, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    problem = getattr(error, "problem", None) or type(error).__name__
    return f"{where}: {problem}"
