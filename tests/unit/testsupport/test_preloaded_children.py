"""The suite's child processes start from a preloaded interpreter (tests/scripts/preloaded.py): each must look
and end like a fresh ``python`` started with the same command, environment and directory."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import preloaded
import pytest
from testenv import subprocess_env

PROBE = textwrap.dedent(
    """
    import json, os, signal, sys
    main = sys.modules["__main__"]
    print(json.dumps({
        "name": __name__,
        "file": getattr(main, "__file__", None),
        "argv": sys.argv,
        "path0": sys.path[0],
        "path": sys.path,
        "cwd": os.getcwd(),
        "probe_var": os.environ.get("PROBE_VAR"),
        "sigint": str(signal.getsignal(signal.SIGINT)),
        "sigpipe": str(signal.getsignal(signal.SIGPIPE)),
        "sigterm": str(signal.getsignal(signal.SIGTERM)),
        "session_leader": os.getsid(0) == os.getpid(),
        "aegis_imported": any(m == "aegis_ckpt" or m.startswith("aegis_ckpt.") for m in sys.modules),
    }, sort_keys=True))
    sys.stdout.flush()
    code = int(os.environ.get("PROBE_EXIT", "0"))
    if os.environ.get("PROBE_RAISE") == "KeyboardInterrupt":
        raise KeyboardInterrupt
    if os.environ.get("PROBE_RAISE") == "ValueError":
        raise ValueError("probe")
    sys.exit(code)
    """
)


def _both(cmd, monkeypatch, **kwargs):
    """Run ``cmd`` once from the preload server and once as a fresh interpreter; return both results."""
    results = []
    for preload in ("1", "0"):
        monkeypatch.setenv("AEGIS_TEST_PRELOAD", preload)
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)
        assert isinstance(proc, preloaded.PreloadedPopen) == (preload == "1")
        out, err = proc.communicate(timeout=120)
        results.append((proc.returncode, out, err))
    return results


@pytest.fixture(autouse=True)
def server_at_first_ask(monkeypatch):
    """A server for every set of import-time variables at its first use (normally at its second)."""
    monkeypatch.setattr(preloaded, "ASKS_BEFORE_SERVER", 1)


@pytest.fixture
def probe_script(tmp_path):
    path = tmp_path / "scripts" / "probe.py"
    path.parent.mkdir()
    path.write_text(PROBE, encoding="utf-8")
    return path


@pytest.mark.parametrize("how", ["script", "module", "code"])
def test_a_preloaded_child_sees_what_a_fresh_interpreter_sees(how, probe_script, tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    env = subprocess_env({"PROBE_VAR": "value with spaces", "PROBE_EXIT": "3"})
    env["PYTHONPATH"] = os.pathsep.join([str(probe_script.parent), env["PYTHONPATH"]])
    cmd = {
        "script": [sys.executable, str(probe_script), "a", "b c"],
        "module": [sys.executable, "-m", "probe", "a", "b c"],
        "code": [sys.executable, "-c", PROBE, "a", "b c"],
    }[how]
    (pre_code, pre_out, pre_err), (fresh_code, fresh_out, fresh_err) = _both(
        cmd, monkeypatch, env=env, cwd=work
    )
    assert (pre_code, pre_out) == (fresh_code, fresh_out), (pre_err, fresh_err)
    assert pre_code == 3 and '"probe_var": "value with spaces"' in pre_out
    assert '"aegis_imported": false' in pre_out


def test_a_new_session_and_an_uncaught_exception_end_as_in_a_fresh_interpreter(probe_script, monkeypatch):
    env = subprocess_env({"PROBE_RAISE": "ValueError"})
    (pre_code, pre_out, pre_err), (fresh_code, fresh_out, fresh_err) = _both(
        [sys.executable, str(probe_script)], monkeypatch, env=env, start_new_session=True
    )
    assert (pre_code, pre_out) == (fresh_code, fresh_out)
    assert pre_code == 1 and '"session_leader": true' in pre_out
    assert pre_err.strip().endswith("ValueError: probe") and fresh_err.strip().endswith("ValueError: probe")


EXIT_PROBE = textwrap.dedent(
    """
    import atexit, os, sys, threading, time
    out = open(os.environ["PROBE_FILE"], "w")  # never closed: the exit must flush it
    out.write("buffered at exit\\n")
    class Noisy:
        def __del__(self):
            print("finalized", flush=True)
    keep = Noisy()
    atexit.register(lambda: print("atexit ran", flush=True))
    def late():
        time.sleep(0.5)
        print("thread done", flush=True)
    threading.Thread(target=late).start()
    print("main done")
    sys.exit(os.environ.get("PROBE_CODE", "7"))
    """
)


@pytest.mark.parametrize("code", ["7", "a message"])
def test_the_exit_runs_what_the_interpreters_exit_runs(code, tmp_path, monkeypatch):
    """Threads joined, atexit callbacks, finalizers of the program's objects, unclosed files flushed, the
    status of ``sys.exit``: the preloaded child skips only the teardown of the modules imported before the
    fork."""
    script = tmp_path / "exit_probe.py"
    script.write_text(EXIT_PROBE, encoding="utf-8")
    results = []
    for preload in ("1", "0"):
        env = subprocess_env({"PROBE_FILE": str(tmp_path / f"file-{preload}"), "PROBE_CODE": code})
        monkeypatch.setenv("AEGIS_TEST_PRELOAD", preload)
        proc = subprocess.Popen(
            [sys.executable, str(script)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        assert isinstance(proc, preloaded.PreloadedPopen) == (preload == "1")
        out, err = proc.communicate(timeout=120)
        results.append((proc.returncode, out, err, (tmp_path / f"file-{preload}").read_text()))
    assert results[0] == results[1]
    assert results[0][1] == "main done\nthread done\natexit ran\nfinalized\n"
    assert results[0][3] == "buffered at exit\n"


def test_an_uncaught_keyboard_interrupt_ends_by_sigint_as_in_a_fresh_interpreter(probe_script, monkeypatch):
    env = subprocess_env({"PROBE_RAISE": "KeyboardInterrupt"})
    (pre_code, _, _), (fresh_code, _, _) = _both([sys.executable, str(probe_script)], monkeypatch, env=env)
    assert pre_code == fresh_code == -signal.SIGINT


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT])
def test_signals_reach_a_preloaded_child_and_its_exit_code_says_so(sig, monkeypatch):
    monkeypatch.setenv("AEGIS_TEST_PRELOAD", "1")
    code = "import sys, time; print('up', flush=True); time.sleep(60)"
    proc = subprocess.Popen(
        [sys.executable, "-c", code], env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert isinstance(proc, preloaded.PreloadedPopen)
    assert proc.stdout.readline() == b"up\n"
    assert proc.poll() is None
    with pytest.raises(subprocess.TimeoutExpired):
        proc.wait(0.2)
    started = time.monotonic()
    proc.send_signal(sig)
    if (
        sig == signal.SIGINT
    ):  # an uncaught KeyboardInterrupt: its traceback, then death by SIGINT as CPython does
        assert b"KeyboardInterrupt" in proc.communicate(timeout=30)[1]
    assert proc.wait(30) == -sig
    assert time.monotonic() - started < 30


def test_import_time_settings_are_the_childs_own(tmp_path, monkeypatch):
    """huggingface_hub reads HF_HOME when it is imported: two children with two values, each from a preloaded
    interpreter, each see their own (a server serves only children with its own import-time variables); with
    room for one server, the first one ends when the second starts."""
    monkeypatch.setenv("AEGIS_TEST_PRELOAD", "1")
    monkeypatch.setattr(preloaded, "_MAX_SERVERS", 1)
    monkeypatch.setattr(preloaded, "_servers", preloaded.OrderedDict())
    code = "import huggingface_hub.constants as c, sys; print(c.HF_HOME, 'torch' in sys.modules)"
    servers = []
    for name in ("one", "two"):
        env = subprocess_env({"HF_HOME": str(tmp_path / name)})
        proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
        assert isinstance(proc, preloaded.PreloadedPopen)
        assert proc.communicate(timeout=120)[0].split() == [str(tmp_path / name), "True"]
        servers.append(next(iter(preloaded._servers.values())))
    assert list(preloaded._servers.values()) == [servers[1]]
    assert servers[0].proc.poll() == 0 and servers[1].proc.poll() is None
    servers[1].stop()


def test_run_and_check_output_go_through_the_server_and_raise_as_usual(monkeypatch):
    monkeypatch.setenv("AEGIS_TEST_PRELOAD", "1")
    env = subprocess_env()
    out = subprocess.check_output(
        [sys.executable, "-c", "import torch, sys; print('torch' in sys.modules)"], env=env
    )
    assert out == b"True\n"
    done = subprocess.run(
        [sys.executable, "-c", "import sys; sys.stderr.write('e'); print(input())"],
        env=env,
        input="typed",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "typed\n", "e")
    with pytest.raises(subprocess.CalledProcessError):
        subprocess.run([sys.executable, "-c", "raise SystemExit(4)"], env=env, check=True)
    with pytest.raises(subprocess.TimeoutExpired):
        subprocess.run([sys.executable, "-c", "import time; time.sleep(60)"], env=env, timeout=1)


def test_the_package_under_test_gets_the_real_popen(monkeypatch):
    """Only test code is served by the preload server: a command started by aegis_ckpt runs as it would for
    a user."""
    monkeypatch.setenv("AEGIS_TEST_PRELOAD", "1")
    namespace = {"__name__": "aegis_ckpt.fake", "subprocess": subprocess, "sys": sys}
    exec(
        compile("p = subprocess.Popen([sys.executable, '-c', 'pass'])", "/not/tests/aegis_ckpt/x.py", "exec"),
        namespace,
    )
    assert not isinstance(namespace["p"], preloaded.PreloadedPopen)
    assert namespace["p"].wait(60) == 0


def test_a_sitecustomize_on_the_path_starts_a_fresh_interpreter(tmp_path, monkeypatch):
    """The interpreter runs sitecustomize at start-up, which a preloaded child has behind it."""
    monkeypatch.setenv("AEGIS_TEST_PRELOAD", "1")
    (tmp_path / "sitecustomize.py").write_text("import os\nos.environ['SITE_RAN'] = '1'\n", encoding="utf-8")
    env = subprocess_env()
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env["PYTHONPATH"]])
    code = "import os, sys; print(os.environ.get('SITE_RAN'), 'transformers' in sys.modules)"
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
    assert not isinstance(proc, preloaded.PreloadedPopen)
    assert proc.communicate(timeout=120)[0].split() == ["1", "False"]
