"""``install-autostart --dry-run`` prints the plan on a machine without systemd or crontab (real entry point)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from testenv import REPO_ROOT, subprocess_env

pytestmark = pytest.mark.slow  # real entry point in subprocesses


def test_dry_run_without_systemd_or_crontab_shows_the_plan(tmp_path):
    empty_path = tmp_path / "bin"
    empty_path.mkdir()
    config_home = tmp_path / "config"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "aegis_ckpt",
            "install-autostart",
            str(REPO_ROOT / "configs" / "tiny.yaml"),
            "--dry-run",
        ],
        env=subprocess_env({"PATH": str(empty_path), "XDG_CONFIG_HOME": str(config_home)}),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    assert "would install autostart" in proc.stdout and "(systemd)" in proc.stdout
    assert "ExecStart=" in proc.stdout and "neither systemd nor crontab found" in proc.stdout
    assert not config_home.exists()  # a dry run writes nothing
