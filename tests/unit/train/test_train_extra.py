"""``datasets`` and ``tokenizers`` are the ``train`` extra: only ``aegis_ckpt/train/`` imports them, and
``aegis-ckpt train`` without them says which install it needs."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest

import aegis_ckpt
from aegis_ckpt.errors import ConfigError
from aegis_ckpt.train.builders import TRAIN_EXTRA_MODULES, require_train_extra

PACKAGE = Path(aegis_ckpt.__file__).resolve().parent


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_only_the_train_command_imports_the_train_extra():
    users = {
        str(p.relative_to(PACKAGE))
        for p in PACKAGE.rglob("*.py")
        if imported_modules(p) & set(TRAIN_EXTRA_MODULES)
    }
    assert users and all(u.startswith("train/") for u in users), users


def test_missing_extra_is_one_line_with_the_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "datasets" else real(name, *a)
    )
    with pytest.raises(ConfigError, match=r"needs datasets: pip install 'aegis-ckpt\[train\]'"):
        require_train_extra()
