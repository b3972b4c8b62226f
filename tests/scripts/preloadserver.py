"""A Python that has already imported torch, transformers and the other heavy libraries, and forks one child per
request: the suite's child processes start from it (see ``preloaded.py``) instead of importing those libraries
again, which costs 7 to 9 seconds of CPU per process on a 2-core machine and was most of the suite's time.

Usage: ``python preloadserver.py SOCKET_PATH``. It prints ``ready`` on stdout once everything is imported, then
serves requests on a Unix socket until its stdin closes (the test worker that started it ended). A request is one
JSON document (argv after the interpreter, cwd, env, whether to start a new session) sent with the child's
stdin, stdout and stderr as file descriptors (SCM_RIGHTS). The server forks; the child takes those descriptors,
cwd, environment, ``sys.argv`` and ``sys.path`` as a fresh ``python`` would, runs the module, script or code
as ``__main__`` and ends the way the interpreter does (``sys.exit``, an uncaught exception, a signal). The
server answers the child's pid at once and, when the child ends, its raw wait status.

What such a child shares with the server, unlike a fresh interpreter: the already imported third-party modules
(nothing of ``aegis_ckpt`` or of the test scripts is imported here, so the code under test is imported fresh in
every child), their import-time configuration (``preloaded.py`` serves a child only from a server whose
import-time variables are the child's), the hash seed, and warnings already shown during those imports. At exit
it skips the teardown of those modules (``run_child_and_exit``). The server must never run a torch operation or
start a thread: a fork copies only the forking thread.
"""

from __future__ import annotations

import atexit
import builtins
import gc
import importlib
import json
import os
import selectors
import signal
import socket
import struct
import sys
import threading
import types

PRELOAD = (
    "torch",
    "transformers",
    "transformers.trainer",
    "transformers.training_args",
    "transformers.models.gpt2.modeling_gpt2",
    "datasets",
    "accelerate",
    "safetensors.torch",
    "tokenizers",
    "xxhash",
    "psutil",
    "yaml",
    "filelock",
    "fsspec",
    "s3fs",
    "peft",
    "trl",
)

# sys.path as the interpreter built it for this script, before any import: the child's is rebuilt from it.
_BASE_PATH = list(sys.path)
_OWN_PYTHONPATH = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
_OWN_UNBUFFERED = bool(os.environ.get("PYTHONUNBUFFERED"))


def _preload() -> None:
    names = os.environ.get("AEGIS_TEST_PRELOAD_MODULES")
    for name in names.split(",") if names else PRELOAD:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - an optional library may be missing or broken; children import it then
            pass


def _receive(conn: socket.socket) -> tuple[dict, list[int]] | None:
    """One request: a length-prefixed JSON document with three descriptors (None when the client went away)."""
    data, fds, _flags, _addr = socket.recv_fds(conn, 1 << 16, 3)
    length = struct.unpack("!I", data[:4])[0] if len(data) >= 4 else None
    body = data[4:]
    while length is not None and len(body) < length:
        chunk = conn.recv(length - len(body))
        body += chunk
        if not chunk:
            length = None
    if length is None:
        for fd in fds:
            os.close(fd)
        return None
    return json.loads(body), list(fds)


def serve(path: str) -> tuple[dict, list[int]] | None:
    """Serve until stdin closes (returns None), or return a request inside the child forked for it."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ, "accept")
    selector.register(sys.stdin, selectors.EVENT_READ, "stdin")
    children: dict[int, tuple[int, socket.socket]] = {}  # pidfd -> (pid, connection)
    print("ready", flush=True)
    while True:
        for key, _events in selector.select():
            if key.data == "stdin":
                if not os.read(sys.stdin.fileno(), 4096):
                    return None
            elif key.data == "accept":
                conn, _addr = listener.accept()
                got = _receive(conn)
                if got is None:
                    conn.close()
                    continue
                request, fds = got
                pid = os.fork()
                if pid == 0:
                    selector.close()
                    listener.close()
                    conn.close()
                    for pidfd, (_pid, other) in children.items():
                        os.close(pidfd)
                        other.close()
                    return request, fds
                for fd in fds:
                    os.close(fd)
                pidfd = os.pidfd_open(pid)
                children[pidfd] = (pid, conn)
                selector.register(pidfd, selectors.EVENT_READ, "child")
                try:
                    conn.sendall(f"{pid}\n".encode())
                except OSError:
                    pass
            else:
                pid, conn = children.pop(key.fd)
                selector.unregister(key.fd)
                os.close(key.fd)
                _pid, status = os.waitpid(pid, 0)
                try:
                    conn.sendall(f"{status}\n".encode())
                except OSError:
                    pass
                conn.close()


def _child_sys_path(argv: list[str], env: dict[str, str]) -> list[str]:
    """sys.path as ``python ARGV`` would build it: the script's folder (``-m``: the working directory, ``-c``:
    ''), then PYTHONPATH, then the standard library and site-packages."""
    if argv[0] == "-m":
        first = os.getcwd()
    elif argv[0] == "-c":
        first = ""
    else:
        first = os.path.dirname(os.path.realpath(argv[0]))
    rest = _BASE_PATH[1 + len(_OWN_PYTHONPATH) :]
    wanted = [os.path.abspath(p) for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    return [first, *wanted, *rest]


def run_child(request: dict, fds: list[int]) -> None:
    """Become ``python ARGV`` with the request's streams, directory and environment; runs in the forked child."""
    if request["new_session"]:
        os.setsid()
    for target, fd in enumerate(fds):
        if fd != target:
            os.dup2(fd, target)
    for fd in set(fds):
        if fd > 2:
            os.close(fd)
    os.chdir(request["cwd"])
    env = request["env"]
    os.environ.clear()
    os.environ.update(env)
    unbuffered = bool(env.get("PYTHONUNBUFFERED"))
    if unbuffered != _OWN_UNBUFFERED:
        sys.stdout.reconfigure(write_through=unbuffered)
    if env.get("PYTHONFAULTHANDLER"):
        import faulthandler

        faulthandler.enable()
    argv = request["argv"]
    sys.path[:] = _child_sys_path(argv, env)
    main = types.ModuleType("__main__")
    main.__dict__["__builtins__"] = builtins
    sys.modules["__main__"] = main
    if argv[0] == "-m":
        import runpy

        sys.argv = ["-m", *argv[2:]]
        runpy._run_module_as_main(argv[1], alter_argv=True)
        return
    if argv[0] == "-c":
        sys.argv = ["-c", *argv[2:]]
        code = compile(argv[1], "<string>", "exec")
    else:
        script = os.path.abspath(argv[0])
        sys.argv = list(argv)
        main.__file__ = script
        main.__cached__ = None
        with open(script, "rb") as source:
            code = compile(source.read(), script, "exec")
    exec(code, main.__dict__)


def _exit_code(exc: SystemExit) -> int:
    """The exit status the interpreter gives an uncaught ``SystemExit`` (printing a non-integer code)."""
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    try:
        sys.stderr.write(f"{code}\n")
    except Exception:  # noqa: BLE001 - as the interpreter, which ignores a failing stderr here
        pass
    return 1


def run_child_and_exit(request: dict, fds: list[int]) -> None:
    """Run the child's program, then end the way ``Py_FinalizeEx`` ends it, except for the teardown of the
    modules imported before the fork.

    A normal interpreter exit deallocates every module; in a forked child that touches, and so copies, the
    server's whole heap (about 1.5 s of CPU per child for torch and transformers). What the tests can observe
    of an exit happens as in the interpreter, in its order: the uncaught exception's traceback
    (``sys.excepthook``), the join of non-daemon threads, the atexit callbacks, a flush of the standard
    streams, the teardown of ``__main__`` and of every module imported after the fork (their objects'
    finalizers run, buffered files are flushed), a garbage collection, then the exit status, or death by
    SIGINT after an uncaught KeyboardInterrupt."""
    before = set(sys.modules)
    try:
        run_child(request, fds)
        code = 0
    except SystemExit as exc:
        code = _exit_code(exc)
    except BaseException as exc:  # noqa: BLE001 - what the interpreter does with any uncaught exception
        sys.excepthook(type(exc), exc, exc.__traceback__)
        code = -signal.SIGINT if type(exc) is KeyboardInterrupt else 1
        del exc
    threading._shutdown()
    atexit._run_exitfuncs()
    _flush_standard_streams()
    _tear_down([name for name in sys.modules if name not in before or name == "__main__"])
    gc.collect()
    _flush_standard_streams()
    if code == -signal.SIGINT:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    os._exit(code & 0xFF)


def _tear_down(names: list[str]) -> None:
    """Clear the modules ``names`` newest first, as the interpreter's finalization clears modules: names with
    one leading underscore first, then the rest, so that their objects' finalizers run."""
    for name in reversed(names):
        module = sys.modules.get(name)
        # Not this server's own module: a child that failed before it had a __main__ of its own still has it.
        if isinstance(module, types.ModuleType) and vars(module) is not globals():
            namespace = vars(module)
            for key in [k for k in namespace if k.startswith("_") and not k.startswith("__")]:
                namespace[key] = None
            for key in [k for k in namespace if not k.startswith("__")]:
                namespace[key] = None


def _flush_standard_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - as the interpreter, which ignores a closed or broken stream here
            pass


if __name__ == "__main__":
    _preload()
    # Everything imported so far stays for good: the garbage collector never walks it again, in the server or
    # in a child, so a child does not copy the server's heap by collecting it.
    gc.freeze()
    _got = serve(sys.argv[1])
    if _got is not None:
        run_child_and_exit(*_got)
