"""Ctrl+C caught by the command line exits 130 under ``python -m aegis_ckpt`` too, whatever code it lands in.

CPython records an interrupt escaping code run by ``exec()``/``eval()`` of a string (dataclass creation, so every
import of transformers) and ``python -m`` then ends the process with SIGINT (-2) after the clean exit. The command
line raises its own ``Interrupted`` subclass, which CPython does not record. Real processes, real SIGINTs.
"""

from __future__ import annotations

import signal
import sys

from testenv import ctrl_c_after_line

PROBE = r"""
import sys
from aegis_ckpt.cli import app

def _run(argv):
    print("ready", flush=True)
    # Where a Ctrl+C lands while transformers is being imported: inside code run by exec() of a string.
    exec("import time\nwhile True:\n    time.sleep(0.005)")

app._run = _run
sys.exit(app.main())
"""


def test_ctrl_c_inside_exec_of_a_string_exits_130_under_python_m(tmp_path):
    (tmp_path / "aegis_probe_cli.py").write_text(PROBE)
    code, stderr, _ = ctrl_c_after_line([sys.executable, "-m", "aegis_probe_cli"], "ready", cwd=tmp_path)
    assert code == 130, (code, stderr)
    assert stderr.strip() == "aegis-ckpt: interrupted (SIGINT): exiting with code 130", stderr


def test_the_handler_is_only_installed_over_pythons_default_and_is_put_back():
    from aegis_ckpt.system.interrupts import interrupts_raise_interrupted, raise_interrupted

    before = signal.getsignal(signal.SIGINT)
    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        with interrupts_raise_interrupted():
            assert signal.getsignal(signal.SIGINT) is raise_interrupted
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler

        def mine(signum, frame):
            pass

        signal.signal(signal.SIGINT, mine)
        with interrupts_raise_interrupted():
            assert signal.getsignal(signal.SIGINT) is mine
        assert signal.getsignal(signal.SIGINT) is mine
    finally:
        signal.signal(signal.SIGINT, before)
