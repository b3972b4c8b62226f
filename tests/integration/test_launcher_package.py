"""The launchers for pip users: they are in the wheel, ``aegis-ckpt launcher --write DIR`` (the console script pip
installs, run in a subprocess from that install) writes them byte for byte, refuses to overwrite without
``--force``, and the written ``auto_train.sh`` runs: real Python, real preflight, its log next to the run.

``launch/auto_train.*`` of a checkout are copies of the package's files (real files, not links: git without
symlink support, the default on Windows, would check a linked .bat out as a one-line text file); the first test
keeps them identical."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHIPPED = {
    "auto_train.sh": REPO / "aegis_ckpt" / "unattended" / "auto_train.sh",
    "auto_train.bat": REPO / "aegis_ckpt" / "unattended" / "auto_train.bat",
    "train.sbatch": REPO / "aegis_ckpt" / "cluster" / "train.sbatch",
}


def test_checkout_launchers_are_the_shipped_ones():
    assert (REPO / "launch" / "auto_train.sh").read_bytes() == SHIPPED["auto_train.sh"].read_bytes()
    assert (REPO / "launch" / "auto_train.bat").read_bytes() == SHIPPED["auto_train.bat"].read_bytes()
    assert (REPO / "launch" / "slurm" / "train.sbatch").resolve() == SHIPPED["train.sbatch"]
    for path in (REPO / "launch" / "auto_train.sh", SHIPPED["auto_train.sh"], SHIPPED["train.sbatch"]):
        assert path.stat().st_mode & stat.S_IXUSR, f"{path} must stay executable"


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The package built into a wheel by pip from a copy of the sources, then installed by pip into a folder:
    what a pip user has (``--no-build-isolation``: the setuptools of this environment, no download)."""
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "aegis_ckpt", src / "aegis_ckpt", ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    build = subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(root / "dist"), str(src)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    (wheel,) = (root / "dist").glob("aegis_ckpt-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        for name, path in SHIPPED.items():
            inside = f"aegis_ckpt/{path.parent.name}/{name}"
            assert zf.read(inside) == path.read_bytes(), f"{inside} in the wheel differs from {path}"
    target = root / "site"
    install = subprocess.run(
        [*pip, "install", "--no-deps", "--no-index", "--target", str(target), str(wheel)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    return target


def aegis(installed: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The ``aegis-ckpt`` console script pip wrote, importing the installed package only."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AEGIS_")}
    env["PYTHONPATH"] = str(installed)
    return subprocess.run(
        [str(installed / "bin" / "aegis-ckpt"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow
def test_launcher_write_from_a_pip_install(installed, tmp_path):
    where = aegis(installed, "launcher", "--log-dir", str(REPO / "configs" / "tiny.yaml"), cwd=tmp_path)
    assert where.stdout.strip() == str(REPO / "runs" / "tiny" / "logs"), where.stderr
    probe = subprocess.run(
        [sys.executable, "-c", "import aegis_ckpt; print(aegis_ckpt.__file__)"],
        env={**os.environ, "PYTHONPATH": str(installed)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert probe.stdout.strip().startswith(str(installed)), "the test must run the installed copy"

    for args in ([], ["--list"]):
        listing = aegis(installed, "launcher", *args, cwd=tmp_path)
        assert listing.returncode == 0 and all(name in listing.stdout for name in SHIPPED), listing

    project = tmp_path / "my project"
    project.mkdir()
    wrote = aegis(installed, "launcher", "--write", "launch", cwd=project)
    assert wrote.returncode == 0, wrote.stderr
    launch = project / "launch"
    for name, path in SHIPPED.items():
        assert (launch / name).read_bytes() == path.read_bytes(), name
        assert f"wrote {launch / name}" in wrote.stdout
    assert f"{launch / 'auto_train.sh'} CONFIG.yaml" in wrote.stdout  # the next command to run
    assert f"treat {project} as the project folder" in wrote.stdout
    for name in ("auto_train.sh", "train.sbatch"):
        assert (launch / name).stat().st_mode & stat.S_IXUSR, name
    assert b"\r\n" in (launch / "auto_train.bat").read_bytes()

    (launch / "auto_train.sh").write_text("edited by the user\n")
    again = aegis(installed, "launcher", "--write", "launch", cwd=project)
    assert again.returncode == 2 and again.stdout == ""
    assert again.stderr.count("\n") == 1 and "pass --force to overwrite" in again.stderr
    assert (launch / "auto_train.sh").read_text() == "edited by the user\n"
    forced = aegis(installed, "launcher", "--write", "launch", "--force", cwd=project)
    assert (
        forced.returncode == 0
        and (launch / "auto_train.sh").read_bytes() == SHIPPED["auto_train.sh"].read_bytes()
    )

    _written_sh_runs(installed, project)


def _written_sh_runs(installed: Path, project: Path) -> None:
    """The written auto_train.sh with the project's venv (the installed package): a finished run's preflight says
    so, and the launcher logs it to logs/ of the run's output dir."""
    out = project / "run"
    (out / ".aegis").mkdir(parents=True)
    (out / ".aegis" / "completed.json").write_text(json.dumps({"step": 5, "checkpoint": None}))
    config = project / "my_run.yaml"
    config.write_text(
        f"model: {{arch: gpt2}}\ndata: {{train_file: {REPO / 'data' / 'tiny_corpus.txt'}}}\n"
        "training: {output_dir: run, max_steps: 5}\n"
    )
    venv_bin = project / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "activate").write_text(
        f'export VIRTUAL_ENV="{project / ".venv"}"\nexport PATH="{Path(sys.executable).parent}:$PATH"\n'
        f'export PYTHONPATH="{installed}"\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AEGIS_", "VIRTUAL_ENV", "PYTHONPATH"))}
    proc = subprocess.run(
        ["bash", str(project / "launch" / "auto_train.sh"), "my_run.yaml"],
        cwd=project,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
    )
    logs = sorted((out / "logs").glob("auto_training_*.log"))
    assert proc.returncode == 0 and len(logs) == 1, (proc.stdout, proc.stderr, logs)
    text = logs[0].read_text()
    assert f"[auto_train] project: {project}" in text and "activated .venv/" in text
    assert "[auto_train] already finished: nothing to do" in text
    assert not (project / "logs").exists()
