"""Bad input through the real ``python -m aegis_ckpt`` entry point: one line naming key, value and what is
expected, exit code 2, "did you mean" for unknown keys, no traceback ever (a closed pipe and an unexpected
exception included). More values, and secrets, in tests/unit/test_config_errors.py (in-process ``main``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from testenv import REPO_ROOT, subprocess_env

pytestmark = pytest.mark.slow  # real entry point in subprocesses


TINY = str(REPO_ROOT / "configs" / "tiny.yaml")


def aegis(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "aegis_ckpt", *args],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("aegis-ckpt: error: "), lines
    return lines[0]


@pytest.mark.parametrize(
    "override, expected",
    [
        ("training.learning_rate=abc", "training.learning_rate: expected a number, got 'abc'"),
        ("training.learning_rat=1e-3", "unknown key training.learning_rat (did you mean 'learning_rate'?)"),
    ],
)
def test_bad_override_is_one_line_and_exit_2(tmp_path, override, expected):
    proc = aegis("train", TINY, "--set", f"training.output_dir={tmp_path}/run", "--set", override)
    assert proc.returncode == 2, proc.stderr
    assert expected in one_error_line(proc)
    assert not (tmp_path / "run").exists()  # refused before anything was created


def test_unexpected_exception_is_one_line_with_the_traceback_kept(tmp_path):
    corpus = tmp_path / "latin1.txt"
    corpus.write_bytes(b"caf\xe9 " * 50)  # not UTF-8: the reader raises UnicodeDecodeError
    proc = aegis(
        "train",
        TINY,
        "--set",
        f"training.output_dir={tmp_path}/run",
        "--set",
        f"data.train_file={corpus}",
    )
    assert proc.returncode == 1
    line = next(x for x in proc.stderr.splitlines() if x.startswith("aegis-ckpt: error: "))
    assert "Traceback" not in proc.stderr
    assert "UnicodeDecodeError" in line
    kept = Path(line.split("traceback in ", 1)[1].split(";", 1)[0])
    try:
        assert "Traceback" in kept.read_text(encoding="utf-8")
    finally:
        kept.unlink()


def test_closed_pipe_ends_quietly(tmp_path):
    # Like `aegis-ckpt status DIR | head -1`: the reader is gone before the report is written.
    proc = subprocess.Popen(
        [sys.executable, "-m", "aegis_ckpt", "status", str(tmp_path)],
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 1
    assert "Traceback" not in err and "BrokenPipe" not in err, err
