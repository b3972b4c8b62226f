"""Fixtures of the power-loss tests."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest


@pytest.fixture
def scratch(tmp_path) -> Path:
    """Where crash states are materialised and checked, one after another: in memory (``/dev/shm``) where it
    exists, because the resume scan flushes what it moves aside and a disk would make each state cost an fsync."""
    shm = Path("/dev/shm")
    base = Path(tempfile.mkdtemp(prefix="aegis-powercut-", dir=shm)) if shm.is_dir() else tmp_path / "scratch"
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(autouse=True, scope="session")
def _mutation_from_env():
    """``AEGIS_POWERCUT_MUTATION=<name>`` runs these tests with one durability step broken (see ``mutations``):
    the test that guards that step must then fail. Session-wide, so that recordings made by module fixtures run
    under the mutation too."""
    import os

    name = os.environ.get("AEGIS_POWERCUT_MUTATION")
    if not name:
        yield
        return
    from mutations import install

    with pytest.MonkeyPatch.context() as patch:
        install(name, patch)
        yield
