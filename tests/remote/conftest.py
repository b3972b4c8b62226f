"""A real S3-compatible HTTP server on 127.0.0.1 for the remote-copy tests: moto's server application behind
werkzeug, on a free loopback port, reached through s3fs exactly as a user's S3 would be (credentials and
endpoint from the standard AWS environment variables).

The server can be stopped and started again on the same port (its buckets survive: moto keeps them in this
process), and it can hold uploads whose path matches a pattern (a slow or hanging remote), which is how a test
catches a training process in the middle of an upload, or answer them with HTTP 500 a given number of times (a
flaky remote).
"""

from __future__ import annotations

import logging
import re
import threading
import uuid

import pytest
from remotelib import ACCESS_KEY, SECRET_KEY

HOLD_LIMIT_SEC = 60.0


class S3Server:
    """moto's S3 on 127.0.0.1 (threaded werkzeug), restartable on its port, with an upload hold."""

    def __init__(self):
        from moto.server import DomainDispatcherApplication, create_backend_app

        self._app = DomainDispatcherApplication(create_backend_app)
        self.port = 0
        self._server = None
        self._thread: threading.Thread | None = None
        self._hold_pattern: re.Pattern | None = None
        self._released = threading.Event()
        self.held = threading.Event()  # set once a request was held
        self.held_paths: list[str] = []
        self.hold_expired = False
        self._fail_pattern: re.Pattern | None = None
        self._fail_left = 0
        self.uploads: list[str] = []  # the path of every PUT/POST, in arrival order
        logging.getLogger("werkzeug").setLevel(logging.ERROR)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _wsgi(self, environ, start_response):
        if environ.get("REQUEST_METHOD") in ("PUT", "POST"):
            self.uploads.append(environ.get("PATH_INFO", ""))
        failing = self._fail_pattern
        if failing is not None and self._fail_left > 0 and environ.get("REQUEST_METHOD") in ("PUT", "POST"):
            if failing.search(environ.get("PATH_INFO", "")):
                self._fail_left -= 1
                start_response("500 Internal Server Error", [("Content-Type", "application/xml")])
                return [b"<Error><Code>InternalError</Code><Message>injected</Message></Error>"]
        pattern = self._hold_pattern
        if (
            pattern is not None
            and environ.get("REQUEST_METHOD") in ("PUT", "POST")
            and pattern.search(environ.get("PATH_INFO", ""))
        ):
            self.held_paths.append(environ.get("PATH_INFO", ""))
            self.held.set()
            if not self._released.wait(timeout=HOLD_LIMIT_SEC):
                self.hold_expired = True  # nobody released it: the client waited, not the test
        return self._app(environ, start_response)

    def start(self) -> S3Server:
        from werkzeug.serving import make_server

        self._server = make_server("127.0.0.1", self.port, self._wsgi, threaded=True)
        self.port = self._server.server_port
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=10)
            self._server = None

    def hold_uploads(self, pattern: str) -> None:
        """Uploads whose path matches ``pattern`` hang until ``release`` (at most ``HOLD_LIMIT_SEC``; then
        ``hold_expired`` is set)."""
        self._released.clear()
        self.held.clear()
        self.held_paths = []
        self.hold_expired = False
        self._hold_pattern = re.compile(pattern)

    def fail_uploads(self, pattern: str, count: int) -> None:
        """The next ``count`` uploads whose path matches ``pattern`` are answered with HTTP 500."""
        self._fail_pattern = re.compile(pattern)
        self._fail_left = count

    def release(self) -> None:
        self._hold_pattern = None
        self._released.set()


@pytest.fixture(scope="session")
def s3_server():
    server = S3Server().start()
    yield server
    server.release()
    server.fail_uploads("", 0)
    server.stop()


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """The standard AWS variables pointing at the local server (also inherited by subprocesses)."""
    values = {
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_ENDPOINT_URL": s3_server.endpoint,
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(name, raising=False)
    return values


@pytest.fixture
def bucket_url(s3_env):
    """A fresh bucket for this test, as ``s3://<bucket>/run``."""
    import s3fs

    name = f"aegis-{uuid.uuid4().hex[:12]}"
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.mkdir(name)
    return f"s3://{name}/run"


@pytest.fixture
def s3(s3_env):
    """A plain s3fs file system on the local server, for the tests' own looks at the bucket."""
    import s3fs

    return s3fs.S3FileSystem(skip_instance_cache=True)


@pytest.fixture(autouse=True)
def restore_aegis_logger():
    """The CLI run in-process installs its own handler on the ``aegis_ckpt`` logger; put the logger back."""
    pkg = logging.getLogger("aegis_ckpt")
    saved = (pkg.handlers[:], pkg.propagate, pkg.level)
    yield
    pkg.handlers[:], pkg.propagate, pkg.level = saved
