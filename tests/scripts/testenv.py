"""Paths and the child-process environment shared by the tests (imported as ``testenv``; ``tests/scripts`` is on
``sys.path``). Tests import these from here rather than from ``conftest``: several directories have a
``conftest.py``, and which one ``import conftest`` finds depends on the collection order."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPTS_DIR = Path(__file__).resolve().parent


def subprocess_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for child Pythons: import ``aegis_ckpt`` from the repo under test, and stay offline."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), str(SCRIPTS_DIR)])
    env.update(
        {
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "OMP_NUM_THREADS": "1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra or {})
    return env
