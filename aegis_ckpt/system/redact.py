"""Secrets stay secret: what the project prints never carries a webhook URL's token, a credential in a URL, or the
value of a secret environment variable or command-line option.

Webhook URLs carry their secret in the path or query (Slack, Discord, Mattermost), so any URL is shown as
``scheme://host/***`` (user and password dropped). Values of environment variables whose names say they are
secret (``AEGIS_WEBHOOK_URL``, ``HF_TOKEN``, ``WANDB_API_KEY``...) are masked wherever they appear, and so are the
values of command-line options with such names (``--hf-token X``, ``--webhook-url=X``) in the supervised command
lines the supervisor logs. ``RedactingFormatter`` applies this to every log line of the CLI and of the injected
hook; the CLI's error messages go through ``redact`` too.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence

MASK = "***"
SECRET_NAME_RE = re.compile(
    r"token|secret|passw(or)?d|passwd|webhook|api[_-]?key|access[_-]?key|private[_-]?key|credential|auth",
    re.IGNORECASE,
)
"""Names of environment variables and command-line options whose values are secrets."""
MIN_SECRET_CHARS = 6
"""Shorter values (``1``, ``true``) are too common to mask without garbling unrelated text."""

_URL_RE = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]{1,15})://(?P<rest>[^\s'\"<>`]+)")


def _mask_url(match: re.Match) -> str:
    scheme, rest = match.group("scheme"), match.group("rest")
    authority, sep, _tail = rest.partition("/")
    host = authority.rsplit("@", 1)[-1]
    query_or_fragment = "?" in authority or "#" in authority
    if query_or_fragment:
        host = re.split(r"[?#]", host, maxsplit=1)[0]
    if not sep and not query_or_fragment and "@" not in authority:
        return match.group(0)  # a bare scheme://host carries no secret
    return f"{scheme}://{host}/{MASK}"


def secret_values(environ: Mapping[str, str] | None = None) -> list[str]:
    """Values of the environment variables whose names say they hold a secret, longest first."""
    env = os.environ if environ is None else environ
    values = {v for k, v in env.items() if SECRET_NAME_RE.search(k) and len(v) >= MIN_SECRET_CHARS}
    return sorted(values, key=len, reverse=True)


def redact(text: str, environ: Mapping[str, str] | None = None) -> str:
    """``text`` with every secret environment value and every URL's path, query and credentials masked."""
    for value in secret_values(environ):
        text = text.replace(value, MASK)
    return _URL_RE.sub(_mask_url, text)


def redact_argv(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> list[str]:
    """A command line to log: the value of every option named like a secret is masked (``--token X``,
    ``--token=X``), then each word is ``redact``-ed."""
    out: list[str] = []
    hide_next = False
    for word in argv:
        if hide_next:
            out.append(MASK)
            hide_next = False
            continue
        if word.startswith("-") and SECRET_NAME_RE.search(word.split("=", 1)[0]):
            if "=" in word:
                out.append(word.split("=", 1)[0] + "=" + MASK)
            else:
                out.append(word)
                hide_next = True
            continue
        out.append(redact(word, environ))
    return out


class RedactingFormatter(logging.Formatter):
    """A ``logging.Formatter`` whose output (message, arguments and any traceback) went through ``redact``."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))
