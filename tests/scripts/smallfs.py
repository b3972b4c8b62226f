"""Real small file systems for full-disk tests: a tmpfs of a given size, or a loop-mounted ext4 image (which,
unlike tmpfs, takes ``O_DIRECT`` writes and has a journal). Mounting needs root: CI runs as root and must run
these tests (``CI=true``: a failure to mount fails the test); elsewhere they are skipped without root."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest


def _cannot_mount(why: str):
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"full-disk tests must run in CI: {why}")
    pytest.skip(why)


def _run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


@contextlib.contextmanager
def small_fs(where: Path, size_mib: int, *, kind: str = "tmpfs"):
    """Mount a ``size_mib`` MiB file system of ``kind`` (``tmpfs`` or ``ext4``) at ``where``; unmount after.
    ``ext4`` falls back to tmpfs where loop devices are not available (some containers)."""
    if os.name != "posix" or os.geteuid() != 0:
        _cannot_mount("mounting a small file system needs root")
    where.mkdir(parents=True, exist_ok=True)
    image = where.with_name(where.name + ".img")
    mounted = False
    if kind == "ext4" and shutil.which("mkfs.ext4"):
        with open(image, "wb") as f:
            f.truncate(size_mib * 2**20)
        made = _run("mkfs.ext4", "-q", "-F", "-m", "0", str(image))
        mounted = made.returncode == 0 and _run("mount", "-o", "loop", str(image), str(where)).returncode == 0
    if not mounted:
        result = _run("mount", "-t", "tmpfs", "-o", f"size={size_mib}m", "tmpfs", str(where))
        if result.returncode != 0:
            _cannot_mount(f"mount failed: {result.stderr.strip()}")
    try:
        yield where
    finally:
        _run("umount", "-l", str(where))
        image.unlink(missing_ok=True)


def fill(where: Path, leave_bytes: int) -> Path:
    """Write a ballast file so that about ``leave_bytes`` stay free on ``where``'s file system."""
    ballast = where / "ballast"
    free = shutil.disk_usage(where).free
    with open(ballast, "ab") as f:
        f.write(b"\0" * max(0, free - leave_bytes))
    return ballast
