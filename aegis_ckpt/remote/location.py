"""The remote end: an fsspec file system opened from a URL, and what every remote operation shares (retries
with backoff, transient-error classification, secret scrubbing).

Credentials and endpoints are never taken from our own options: fsspec and its backends read them from their
usual places (for S3 through botocore: ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``,
``AWS_ENDPOINT_URL``, ``AWS_PROFILE`` and the shared config files). Every message this package logs or records
about a remote failure goes through ``scrub`` first, so a secret that a library puts into an error text does not
reach a log file.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable
from typing import Any, TypeVar

from ..errors import AegisError

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Environment variables that hold secrets of the common fsspec backends (S3, GCS, Azure).
SECRET_ENV_VARS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AZURE_STORAGE_KEY",
    "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_CONNECTION_STRING",
    "AZURE_STORAGE_SAS_TOKEN",
    "AZURE_CLIENT_SECRET",
)
# botocore retries each request itself; keep that short so our own backoff (with jitter, per file) decides how
# long a dead endpoint is tried, instead of 6-16 s of hidden retries per request.
_S3_DEFAULT_CONFIG = {"retries": {"max_attempts": 2}, "connect_timeout": 10, "read_timeout": 120}
# Errors that no retry can fix: wrong credentials or bucket, a local file that is gone.
_PERMANENT_ERRORS = (PermissionError, FileNotFoundError, IsADirectoryError, NotADirectoryError, ValueError)


class RemoteError(AegisError):
    """A remote operation failed for good (after retries), or a remote checkpoint was refused; the message says
    why (with secrets removed)."""


def scrub(text: str) -> str:
    """``text`` with the values of secret environment variables replaced by ``***``."""
    for name in SECRET_ENV_VARS:
        value = os.environ.get(name)
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    return text


def describe_error(error: BaseException) -> str:
    """One line for a log or a status record: the error's type and its scrubbed message."""
    message = " ".join(str(error).split()) or "no message"
    return scrub(f"{type(error).__name__}: {message}")


def is_transient(error: BaseException) -> bool:
    """Connection drops, timeouts, throttling and server errors are worth another try; refused credentials, a
    missing bucket or a vanished local file are not."""
    return isinstance(error, Exception) and not isinstance(error, _PERMANENT_ERRORS)


def backoff_delay(
    attempt: int,
    *,
    base_sec: float = 0.5,
    max_sec: float = 20.0,
    jitter: Callable[[], float] = random.random,
) -> float:
    """The pause after failed try number ``attempt`` (1-based): a random share (full jitter) of
    ``base_sec * 2**(attempt - 1)``, capped at ``max_sec``, so many clients do not retry in lockstep."""
    return jitter() * min(max_sec, base_sec * 2 ** (attempt - 1))


def with_retries(
    action: Callable[[], T],
    *,
    attempts: int,
    what: str,
    base_sec: float = 0.5,
    max_sec: float = 20.0,
    sleep: Callable[[float], None] = time.sleep,
    jitter: Callable[[], float] = random.random,
    on_retry: Callable[[BaseException], None] | None = None,
) -> T:
    """Run ``action``; on a transient error wait (exponential backoff with full jitter: a random share of
    ``base_sec * 2**n``, capped at ``max_sec``, so many clients do not retry in lockstep) and try again, at most
    ``attempts`` times in all. ``on_retry`` hears of each transient error that is retried. The last error is
    raised."""
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except Exception as e:
            if attempt >= attempts or not is_transient(e):
                raise
            if on_retry is not None:
                on_retry(e)
            delay = backoff_delay(attempt, base_sec=base_sec, max_sec=max_sec, jitter=jitter)
            logger.debug(
                "%s failed (%s); try %d of %d in %.2f s",
                what,
                describe_error(e),
                attempt + 1,
                attempts,
                delay,
            )
            sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


class RemoteLocation:
    """One remote folder that holds ``checkpoint-<step>/`` copies.

    Args:
        url: ``s3://bucket/prefix``, ``gs://...``, ``file:///mnt/nas/run`` or any fsspec URL.
        options: extra keyword arguments of the fsspec file system (never credentials: ``RemoteOptions``
            refuses them).
    """

    def __init__(self, url: str, options: dict[str, Any] | None = None):
        try:
            import fsspec
        except ImportError as e:  # pragma: no cover - fsspec comes with datasets
            raise RemoteError("remote copies need fsspec: pip install 'aegis-ckpt[remote]'") from e
        self.url = url.rstrip("/")
        protocol = self.url.split("://", 1)[0].lower()
        kwargs = dict(options or {})
        if protocol in ("s3", "s3a"):
            kwargs.setdefault("config_kwargs", _S3_DEFAULT_CONFIG)
        if protocol in ("file", "local"):
            kwargs.setdefault("auto_mkdir", True)
        try:
            self.fs, self.root = fsspec.core.url_to_fs(self.url, **kwargs)
        except ImportError as e:
            raise RemoteError(
                f"cannot open {self.url}: {e}. Install the backend, e.g. pip install 'aegis-ckpt[remote]' for S3."
            ) from e
        self.root = self.root.rstrip("/")

    def __repr__(self) -> str:
        return f"RemoteLocation({self.url!r})"

    def path(self, *parts: str) -> str:
        """The backend path of ``parts`` below the root (POSIX separators)."""
        return "/".join([self.root, *(p.strip("/") for p in parts if p)])

    def refresh(self) -> None:
        """Forget cached listings: another process (or an earlier run) may have changed the remote."""
        self.fs.invalidate_cache()


def open_remote(url: str, options: dict[str, Any] | None = None) -> RemoteLocation:
    return RemoteLocation(url, options)
