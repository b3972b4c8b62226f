"""Start the suite's Python child processes from a preloaded interpreter (``preloadserver.py``).

Almost every slow test starts real ``python -m aegis_ckpt ...`` or ``python tests/scripts/*.py`` processes and
kills, interrupts or restarts them; each of those used to import torch and transformers from scratch, 7 to 9 s
of CPU on a 2-core machine, which was most of the suite's time. ``install()`` (called by ``tests/conftest.py``)
replaces ``subprocess.Popen`` in the test process so that a call made by test code (never by the package under
test) whose command is ``sys.executable`` followed by ``-m MODULE``, ``-c CODE`` or a script is served by a
forked child of a server that imported those libraries once per test worker. The child is a real process with
its own pid, environment, working directory and standard streams; signals, exit codes and ``-signum`` for a
killed child are as with ``subprocess.Popen``. Anything else, including a command whose environment differs
from the server's in a variable that the preloaded libraries read at import (``HF_*``, ``TORCH*``, ``OMP_*``,
``HOME``, ``TMPDIR`` ...), starts a fresh interpreter as before.

``AEGIS_TEST_PRELOAD=0`` turns this off: every child is a fresh interpreter (slower; the way to rule out a
difference such as the shared hash seed, see ``preloadserver.py``).
"""

from __future__ import annotations

import io
import json
import locale
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections import OrderedDict
from pathlib import Path

_REAL_POPEN = subprocess.Popen
_TESTS_DIR = str(Path(__file__).resolve().parents[1]) + os.sep
_THIS_FILE = os.path.realpath(__file__)
_SERVER_SCRIPT = str(Path(__file__).resolve().with_name("preloadserver.py"))

# Variables that the preloaded libraries (or the interpreter itself) read while importing: a child whose value
# differs from the server's would not see its value, so it starts a fresh interpreter instead.
_IMPORT_TIME_PREFIXES = (
    "AEGIS_TEST_PRELOAD_MODULES",
    "HF_",
    "HUGGINGFACE",
    "TRANSFORMERS",
    "TORCH",
    "PYTORCH",
    "OMP_",
    "MKL",
    "KMP_",
    "OPENBLAS",
    "CUDA",
    "NCCL",
    "ACCELERATE",
    "DATASETS",
    "SAFETENSORS",
    "TOKENIZERS",
    "PYTHON",
    "LD_",
    "MALLOC",
    "JEMALLOC",
    "XDG_",
    "HOME",
    "TMPDIR",
    "TEMP",
    "TMP",
    "LANG",
    "LC_",
    "TZ",
    "AWS_",
    "FSSPEC",
    "PEFT",
    "TRL",
    "WANDB",
)
# Of those, the ones the server applies to each child itself.
_APPLIED_PER_CHILD = {"PYTHONPATH", "PYTHONUNBUFFERED", "PYTHONFAULTHANDLER"}


def _import_time_env(env: dict[str, str]) -> dict[str, str]:
    return {
        key: value
        for key, value in env.items()
        if key.upper().startswith(_IMPORT_TIME_PREFIXES) and key not in _APPLIED_PER_CHILD
    }


class _Server:
    """A preload server whose imports ran under one set of import-time variables; ended with the test process
    (its stdin closes)."""

    def __init__(self, env: dict[str, str]) -> None:
        self.folder = tempfile.mkdtemp(prefix="aegis-preload-")
        self.socket_path = os.path.join(self.folder, "s")
        self.failed: str | None = None
        log = open(os.path.join(self.folder, "server.log"), "wb")  # noqa: SIM115 - the server writes it
        self.proc = _REAL_POPEN(
            [sys.executable, _SERVER_SCRIPT, self.socket_path],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            cwd=self.folder,
        )
        log.close()
        self.ready = False

    def wait_ready(self) -> bool:
        if not self.ready and self.failed is None:
            line = self.proc.stdout.readline()
            if line.strip() == b"ready":
                self.ready = True
            else:
                self.failed = Path(self.folder, "server.log").read_text(errors="replace")[-2000:]
        return self.ready

    def stop(self) -> None:
        """End the server (its children go on); it exits when its stdin closes."""
        self.proc.stdin.close()
        self.proc.stdout.close()
        self.proc.wait(30)


# One server per set of import-time variables, started when a second child asks for the same set (a set that a
# single child uses is not worth a server); the least recently used one ends when a new one would make more
# than _MAX_SERVERS in this test process.
_MAX_SERVERS = 3
ASKS_BEFORE_SERVER = 2
_servers: OrderedDict[frozenset, _Server] = OrderedDict()
_asked: dict[frozenset, int] = {}
_server_lock = threading.Lock()


def _server_for(env: dict[str, str]) -> tuple[_Server | None, str | None]:
    """The ready server for ``env``'s import-time variables, or None and why there is none."""
    key = frozenset(_import_time_env(env).items())
    with _server_lock:
        server = _servers.get(key)
        if server is None:
            _asked[key] = _asked.get(key, 0) + 1
            if _asked[key] < ASKS_BEFORE_SERVER:
                return None, "no server for these import-time variables (yet)"
            while len(_servers) >= _MAX_SERVERS:
                _servers.popitem(last=False)[1].stop()
            server = _servers[key] = _Server(env)
            if not server.wait_ready():
                warnings.warn(
                    f"the preload server did not start; children start fresh:\n{server.failed}", stacklevel=2
                )
        _servers.move_to_end(key)
        return (server, None) if server.ready else (None, "the preload server did not start")


def _caller() -> tuple[str, int]:
    """File and line of the code that asked for a process: the first frame outside ``subprocess`` and this
    module."""
    frame = sys._getframe(1)
    while frame is not None:
        name = frame.f_code.co_filename
        if name != subprocess.__file__ and os.path.realpath(name) != _THIS_FILE:
            return os.path.realpath(name), frame.f_lineno
        frame = frame.f_back
    return "?", 0


def _customizes_startup(env: dict[str, str]) -> bool:
    """Whether a folder on the child's PYTHONPATH holds a ``sitecustomize``/``usercustomize``: the interpreter
    runs it at start-up, which a preloaded child has behind it."""
    for folder in filter(None, env.get("PYTHONPATH", "").split(os.pathsep)):
        for name in ("sitecustomize", "usercustomize"):
            if os.path.exists(os.path.join(folder, name + ".py")) or os.path.isdir(
                os.path.join(folder, name)
            ):
                return True
    return False


def _python_command(args) -> list[str] | None:
    """The arguments after the interpreter when ``args`` runs this interpreter on a module, code or script."""
    if isinstance(args, (str, bytes, os.PathLike)) or len(args) < 2:
        return None
    args = [os.fspath(a) for a in args]
    if any(not isinstance(a, str) for a in args):
        return None
    if args[0] != sys.executable and os.path.realpath(args[0]) != os.path.realpath(sys.executable):
        return None
    if args[1] in ("-m", "-c"):
        return args[1:] if len(args) >= 3 else None
    return None if args[1].startswith("-") else args[1:]


_DEFAULTS = {
    "executable": None,
    "preexec_fn": None,
    "close_fds": True,
    "shell": False,
    "startupinfo": None,
    "creationflags": 0,
    "restore_signals": True,
    "pass_fds": (),
    "user": None,
    "group": None,
    "extra_groups": None,
    "umask": -1,
    "pipesize": -1,
    "process_group": None,
}
_HANDLED = {
    "bufsize",
    "stdin",
    "stdout",
    "stderr",
    "cwd",
    "env",
    "text",
    "universal_newlines",
    "encoding",
    "errors",
}


def _maybe_preloaded(args, popen_args: tuple, kwargs: dict):
    if os.environ.get("AEGIS_TEST_PRELOAD", "1") == "0":
        return None
    caller = _caller()
    why, argv, env = _why_fresh(args, popen_args, kwargs, caller[0])
    server = None
    if why is None:
        server, why = _server_for(env)
    _log(why, args, caller)
    return None if why else PreloadedPopen(server, list(args), argv, env, kwargs)


def _why_fresh(args, popen_args: tuple, kwargs: dict, caller_file: str) -> tuple[str | None, list[str], dict]:
    """Why ``Popen(args, ...)`` starts a fresh process (None: it can come from a server), the arguments after
    the interpreter and the child's environment."""
    if popen_args:
        return "positional Popen arguments", [], {}
    for key, value in kwargs.items():
        if (
            key != "start_new_session"
            and key not in _HANDLED
            and (key not in _DEFAULTS or value != _DEFAULTS[key])
        ):
            return f"Popen argument {key}", [], {}
    argv = _python_command(args)
    if argv is None:
        return "not this Python on a module, code or script", [], {}
    if not caller_file.startswith(_TESTS_DIR):
        return "started by code outside the tests", argv, {}
    env = dict(os.environ if kwargs.get("env") is None else kwargs["env"])
    if _customizes_startup(env):
        return "a sitecustomize on PYTHONPATH", argv, env
    return None, argv, env


def _log(why: str | None, args, caller: tuple[str, int]) -> None:
    """With AEGIS_TEST_PRELOAD_LOG=FILE, one line per child: how it started, why, and who asked."""
    path = os.environ.get("AEGIS_TEST_PRELOAD_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as log:
            where = f"{caller[0]}:{caller[1]}"
            log.write(f"{'fresh' if why else 'preloaded'}\t{why or ''}\t{where}\t{str(args)[:160]}\n")


class RoutedPopen(_REAL_POPEN):
    """``subprocess.Popen`` whose eligible Python commands from test code start from the preload server."""

    def __new__(cls, args, *popen_args, **kwargs):
        if cls is RoutedPopen:
            routed = _maybe_preloaded(args, popen_args, kwargs)
            if routed is not None:
                return routed
        return super().__new__(cls)


def install() -> None:
    subprocess.Popen = RoutedPopen


class PreloadedPopen:
    """The part of ``subprocess.Popen``'s interface that the tests use, for a child of the preload server."""

    def __init__(self, server: _Server, args: list, argv: list[str], env: dict[str, str], kwargs: dict):
        self.args = args
        self.returncode: int | None = None
        self.text_mode = bool(
            kwargs.get("text")
            or kwargs.get("universal_newlines")
            or kwargs.get("encoding")
            or kwargs.get("errors")
        )
        self.universal_newlines = self.text_mode
        self._encoding = kwargs.get("encoding") or locale.getpreferredencoding(False)
        self._errors = kwargs.get("errors") or "strict"
        self._bufsize = kwargs.get("bufsize", -1)
        self._readers: dict[str, threading.Thread] = {}
        self._collected: dict[str, list] = {}
        self._status = b""

        child_fds: list[int] = []
        to_close: list[int] = []
        ours: dict[str, int] = {}
        for index, name in enumerate(("stdin", "stdout", "stderr")):
            spec = kwargs.get(name)
            if spec is None:
                child_fds.append(index)
            elif spec == subprocess.DEVNULL:
                fd = os.open(os.devnull, os.O_RDWR)
                child_fds.append(fd)
                to_close.append(fd)
            elif spec == subprocess.PIPE:
                read_end, write_end = os.pipe()
                child, mine = (read_end, write_end) if name == "stdin" else (write_end, read_end)
                child_fds.append(child)
                to_close.append(child)
                ours[name] = mine
            elif spec == subprocess.STDOUT and name == "stderr":
                child_fds.append(child_fds[1])
            elif isinstance(spec, int):
                child_fds.append(spec)
            else:
                child_fds.append(spec.fileno())
        cwd = kwargs.get("cwd")
        request = {
            "argv": argv,
            "cwd": os.path.abspath(os.fspath(cwd)) if cwd is not None else os.getcwd(),
            "env": env,
            "new_session": bool(kwargs.get("start_new_session")),
        }
        body = json.dumps(request).encode()
        self._conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._conn.connect(server.socket_path)
            socket.send_fds(self._conn, [struct.pack("!I", len(body)) + body], child_fds)
            self.pid = int(self._read_line(None))
        finally:
            for fd in to_close:
                os.close(fd)
        self.stdin = self._wrap(ours.get("stdin"), "wb")
        self.stdout = self._wrap(ours.get("stdout"), "rb")
        self.stderr = self._wrap(ours.get("stderr"), "rb")

    def _wrap(self, fd: int | None, mode: str):
        if fd is None:
            return None
        raw = open(fd, mode, self._bufsize if self._bufsize not in (0, 1) else -1)
        if not self.text_mode:
            return raw
        return io.TextIOWrapper(
            raw,
            encoding=self._encoding,
            errors=self._errors,
            write_through=mode == "wb",
            line_buffering=False,
        )

    def _read_line(self, timeout: float | None) -> bytes | None:
        """The next line the server sends, or None when ``timeout`` passes first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self._status:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([self._conn], [], [], left)
            if not ready:
                return None
            chunk = self._conn.recv(4096)
            if not chunk:
                raise RuntimeError(f"the preload server ended while {self.args} ran")
            self._status += chunk
        line, self._status = self._status.split(b"\n", 1)
        return line

    # -- waiting ---------------------------------------------------------------------------------------------
    def _ended(self, timeout: float | None) -> bool:
        """Whether the child has ended, waiting up to ``timeout`` (None: for good) for the server to say so."""
        if self.returncode is None:
            line = self._read_line(timeout)
            if line is None:
                return False
            self.returncode = os.waitstatus_to_exitcode(int(line))
            self._conn.close()
        return True

    def poll(self) -> int | None:
        self._ended(0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if not self._ended(timeout):
            raise subprocess.TimeoutExpired(self.args, timeout)
        return self.returncode

    def communicate(self, input=None, timeout: float | None = None):
        deadline = None if timeout is None else time.monotonic() + timeout
        if self.stdin is not None and not self.stdin.closed:
            try:
                if input:
                    self.stdin.write(input)
                self.stdin.close()
            except BrokenPipeError:
                pass
        for name in ("stdout", "stderr"):
            stream = getattr(self, name)
            if stream is not None and name not in self._readers:
                self._collected[name] = []
                reader = threading.Thread(
                    target=lambda s=stream, out=self._collected[name]: out.append(s.read()), daemon=True
                )
                reader.start()
                self._readers[name] = reader
        for reader in self._readers.values():
            reader.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if reader.is_alive():
                raise subprocess.TimeoutExpired(self.args, timeout)
        self.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
        results = []
        for name in ("stdout", "stderr"):
            if name in self._collected:
                chunks = self._collected[name]
                results.append(chunks[0] if chunks else ("" if self.text_mode else b""))
                getattr(self, name).close()
            else:
                results.append(None)
        return tuple(results)

    # -- signals ---------------------------------------------------------------------------------------------
    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    # -- context manager -------------------------------------------------------------------------------------
    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        for stream in (self.stdout, self.stderr):
            if stream is not None:
                stream.close()
        try:
            if self.stdin is not None:
                self.stdin.close()
        finally:
            self.wait()

    def __repr__(self) -> str:
        return f"<PreloadedPopen: returncode: {self.returncode} args: {self.args!r}>"
