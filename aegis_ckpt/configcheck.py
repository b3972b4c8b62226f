"""Checks of config values against a dataclass's field types, with one-line errors a user can act on.

Every error names the key (``section.key``), the value and what is expected; an unknown key gets a "did you
mean" from ``difflib``. Values of keys that look like secrets (URLs, tokens, passwords) are never shown: a
webhook URL carries its credential in the path, and error lines end up in logs.
"""

from __future__ import annotations

import difflib
import enum
import re
import types
import typing
from collections.abc import Iterable
from typing import Any

from .errors import ConfigError

_SECRET_PARTS = {
    "url",
    "uri",
    "token",
    "secret",
    "password",
    "passwd",
    "key",
    "auth",
    "credential",
    "credentials",
}
_NUMBER_RE = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
_INT_RE = re.compile(r"[-+]?\d+")
_MAX_LISTED = 12


def is_secret_key(key: str) -> bool:
    """Keys whose values must not appear in messages (``webhook_url``, ``hub_token``, ``api_key``, ...)."""
    parts = re.split(r"[^a-z0-9]+", key.lower().rsplit(".", 1)[-1])
    return any(p in _SECRET_PARTS for p in parts)


def shown(key: str, value: Any) -> str:
    """``repr(value)`` for a message, or a placeholder when ``key`` looks like a secret."""
    return "<hidden>" if is_secret_key(key) else repr(value)


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest known name, or an empty string."""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_known_keys(where: str, values: Iterable[str], known: Iterable[str]) -> None:
    """Refuse the first unknown key, with a suggestion; short key sets are listed in full."""
    known = sorted(known)
    unknown = sorted(set(values) - set(known))
    if not unknown:
        return
    name = unknown[0]
    hint = did_you_mean(name, known)
    if not hint and len(known) <= _MAX_LISTED:
        hint = f" (known: {', '.join(known)})"
    elif not hint:
        hint = f" ({len(known)} keys; see docs/configuration.md)"
    more = f"; also unknown: {', '.join(unknown[1:])}" if len(unknown) > 1 else ""
    raise ConfigError(f"unknown {'key ' + where + '.' if where else 'section '}{name}{hint}{more}")


def check_fields(cls, where: str, values: dict[str, Any]) -> dict[str, Any]:
    """Check keys and value types of ``values`` against dataclass ``cls``; return them with numeric strings
    turned into numbers (YAML 1.1 reads ``5e-4`` as a string)."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in _init_fields(cls)]
    check_known_keys(where, values, names)
    return {key: check_value(f"{where}.{key}", value, hints.get(key, Any)) for key, value in values.items()}


def _init_fields(cls):
    import dataclasses

    return [f for f in dataclasses.fields(cls) if f.init]


def check_value(key: str, value: Any, annotation: Any) -> Any:
    """``value`` (possibly converted) if it fits ``annotation``, else a ``ConfigError`` naming what fits."""
    ok, converted = _fit(value, annotation)
    if ok:
        return converted
    quote = isinstance(value, bool) and _accepts_str(annotation)
    hint = " (YAML reads no/yes/off/on as false/true: put the word in quotes)" if quote else ""
    raise ConfigError(f"{key}: expected {describe(annotation)}, got {shown(key, value)}{hint}")


def _members(annotation: Any) -> tuple:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


def _accepts_str(annotation: Any) -> bool:
    return any(m is str for m in _members(annotation))


def _fit(value: Any, annotation: Any) -> tuple[bool, Any]:
    members = _members(annotation)
    enums = [m for m in members if isinstance(m, type) and issubclass(m, enum.Enum)]
    if enums and isinstance(value, str):  # "save_strategy: stpes" is an error even though the field says str
        return any(value in {e.value for e in m} for m in enums), value
    for member in members:
        ok, converted = _fit_one(value, member)
        if ok:
            return True, converted
    return False, value


def _fit_one(value: Any, t: Any) -> tuple[bool, Any]:  # noqa: PLR0911 - one branch per kind of type
    origin = typing.get_origin(t) or t
    if t is Any or isinstance(t, typing.TypeVar):
        return True, value
    if t is type(None):
        return value is None, value
    if t is bool:
        return isinstance(value, bool), value
    if t is int:
        if isinstance(value, str) and _INT_RE.fullmatch(value.strip()):
            return True, int(value)
        return isinstance(value, int) and not isinstance(value, bool), value
    if t is float:
        if isinstance(value, str) and _NUMBER_RE.fullmatch(value.strip()):
            return True, float(value)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value == value
        return ok, float(value) if ok else value
    if t is str:
        return isinstance(value, str), value
    if origin is typing.Literal:
        return value in typing.get_args(t), value
    if origin in (list, tuple, set):
        return isinstance(value, (list, tuple)), value
    if origin is dict:
        return isinstance(value, dict), value
    if isinstance(origin, type) and issubclass(origin, enum.Enum):
        return isinstance(value, origin), value
    if isinstance(origin, type) and origin.__module__ != "builtins" and not isinstance(value, dict):
        return isinstance(value, origin), value
    return True, value  # anything else is left to the class's own checks


def describe(annotation: Any) -> str:
    """What fits ``annotation``, in words: ``a number``, ``one of 'no', 'steps'``, ``null``, ..."""
    words: list[str] = []
    for member in _members(annotation):
        text = _describe_one(member)
        if text and text not in words:
            words.append(text)
    if any(w.startswith("one of") for w in words):
        words = [w for w in words if w != "a string"]
    return " or ".join(words) or "a valid value"


def _describe_one(t: Any) -> str:  # noqa: PLR0911 - one branch per kind of type
    origin = typing.get_origin(t) or t
    if t is type(None):
        return "null"
    if t is bool:
        return "true or false"
    if t is int:
        return "an integer"
    if t is float:
        return "a number"
    if t is str:
        return "a string"
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(t))
    if origin in (list, tuple, set):
        return "a list"
    if origin is dict:
        return "a mapping"
    if isinstance(origin, type) and issubclass(origin, enum.Enum):
        return "one of " + ", ".join(repr(e.value) for e in origin)
    return getattr(t, "__name__", str(t))


def prefixed(where: str, error: ConfigError) -> ConfigError:
    """``error`` with ``where.`` in front of the key it names, unless it already says where it comes from."""
    message = str(error)
    if message.startswith(f"{where}.") or message.startswith(f"{where}:"):
        return error
    return ConfigError(f"{where}.{message}" if re.match(r"[a-z_]+ ", message) else f"{where}: {message}")
