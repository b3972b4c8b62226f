"""Fixtures for running launch/auto_train.bat under Wine (recipe: shared/wine-testing.md).

A throwaway Wine prefix per test session, a fake venv ``python.exe`` built from ``fakepython.c`` with mingw
(never committed as a binary), and a project folder (with a space in its path) holding a copy of the launcher.
Without Wine the tests skip locally, but fail in CI (``CI`` set), where ``.ci/run`` installs Wine first.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FAKEPYTHON_C = Path(__file__).with_name("fakepython.c")
ACTIVATE_BAT = '@echo off\r\nfor %%I in ("%~dp0..") do set "VIRTUAL_ENV=%%~fI"\r\nset "PATH=%VIRTUAL_ENV%\\Scripts;%PATH%"\r\n'


def _require(tool: str) -> str:
    path = shutil.which(tool)
    if path:
        return path
    message = f"{tool} is not installed (apt-get install wine wine64 gcc-mingw-w64-x86-64-win32; see .ci/run)"
    if os.environ.get("CI"):
        pytest.fail(f"CI must run the Wine tests: {message}")
    pytest.skip(message)


def to_windows(path: Path) -> str:
    return "Z:" + str(path).replace("/", "\\")


@pytest.fixture(scope="session")
def wine_env(tmp_path_factory):
    _require("wine")
    prefix = tmp_path_factory.mktemp("wineprefix")
    env = {k: v for k, v in os.environ.items() if k != "DISPLAY"}
    env.update(WINEPREFIX=str(prefix), WINEDEBUG="-all", WINEDLLOVERRIDES="mscoree,mshtml=")
    # Create the prefix once (5-8 s), so that no test pays for it.
    subprocess.run(
        ["wine", "cmd", "/c", "exit 0"], env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=300
    )
    yield env
    subprocess.run(["wineserver", "-k"], env=env, capture_output=True, timeout=60)


@pytest.fixture(scope="session")
def fake_python_exe(tmp_path_factory) -> Path:
    gcc = _require("x86_64-w64-mingw32-gcc")
    out = tmp_path_factory.mktemp("fakepython") / "python.exe"
    subprocess.run(
        [gcc, "-municode", "-O2", "-s", "-static", "-o", str(out), str(FAKEPYTHON_C)], check=True, timeout=300
    )
    return out


def _decode(data: bytes) -> str:
    """The fake python writes its log in the ANSI code page (cp1252 under Wine): non-ASCII paths come back."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace")


@dataclass
class BatRun:
    code: int
    console: str
    calls: list[str]
    logs: list[Path]

    @property
    def log_text(self) -> str:
        assert len(self.logs) == 1, self.logs
        return self.logs[0].read_text(errors="replace")

    def calls_of(self, sub: str) -> list[str]:
        return [c for c in self.calls if f" -m aegis_ckpt {sub} " in c]


class Project:
    """A project folder as a user has it: launch\\auto_train.bat, configs\\, and optionally a venv."""

    def __init__(self, root: Path, wine_env: dict[str, str], fake_python: Path):
        self.root = root
        self.wine_env = wine_env
        self.fake_python = fake_python
        (root / "launch").mkdir(parents=True)
        shutil.copy(REPO / "launch" / "auto_train.bat", root / "launch" / "auto_train.bat")
        (root / "configs").mkdir()
        (root / "configs" / "tiny.yaml").write_text("# placeholder: the fake python does not read it\n")
        self.calls_file = root.parent / f"{root.name}-calls.txt"

    def make_venv(self, name: str = ".venv") -> Path:
        scripts = self.root / name / "Scripts"
        scripts.mkdir(parents=True)
        shutil.copy(self.fake_python, scripts / "python.exe")
        (scripts / "activate.bat").write_bytes(ACTIVATE_BAT.encode())
        return scripts

    def run(self, *args: str, cwd: Path | None = None, bat: str = "auto_train.bat", **env: str) -> BatRun:
        """Like a double-click: cwd is the launch folder unless given. A ``bat`` path with spaces is started with
        ``call``: ``cmd /c "a b.bat" "x"`` would lose its outer quotes (cmd's quote rule), as on Windows."""
        self.calls_file.unlink(missing_ok=True)
        full_env = {**self.wine_env, "FAKEPY_LOG": to_windows(self.calls_file), **env}
        proc = subprocess.run(
            ["wine", "cmd", "/c", *(["call"] if " " in bat else []), bat, *args],
            cwd=cwd or self.root / "launch",
            env=full_env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=120,
        )
        calls = _decode(self.calls_file.read_bytes()).splitlines() if self.calls_file.exists() else []
        logs = sorted((self.root / "logs").glob("*.log")) if (self.root / "logs").is_dir() else []
        return BatRun(proc.returncode, proc.stdout.decode(errors="replace"), calls, logs)


@pytest.fixture
def project(tmp_path, wine_env, fake_python_exe) -> Project:
    return Project(tmp_path / "my project", wine_env, fake_python_exe)
