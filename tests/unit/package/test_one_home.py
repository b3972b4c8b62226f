"""Every helper, class and constant has one home: no module-level function, class or UPPER_CASE constant of the
package is defined in two modules (the old module paths in ``_moved.py`` hand out the same objects, and a
``TypeVar`` is a typing device, not a helper)."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import aegis_ckpt

PACKAGE = Path(aegis_ckpt.__file__).resolve().parent
# Names every module may define for itself: the module protocol and typing devices.
PER_MODULE = {"__all__", "__getattr__", "__dir__", "logger", "main"}


def _is_typevar(node: ast.Assign) -> bool:
    call = node.value
    return isinstance(call, ast.Call) and getattr(call.func, "id", None) in {"TypeVar", "ParamSpec"}


def module_level_names(source: str) -> set[str]:
    names = set()
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign) and not _is_typevar(node):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name) and t.id.isupper())
        elif (
            isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id.isupper()
        ):
            names.add(node.target.id)
    return names - PER_MODULE


def homes(package: Path) -> dict[str, list[str]]:
    found: dict[str, list[str]] = defaultdict(list)
    for path in sorted(package.rglob("*.py")):
        if path.name == "_moved.py":
            continue
        for name in module_level_names(path.read_text(encoding="utf-8")):
            found[name].append(str(path.relative_to(package)))
    return found


def test_no_name_is_defined_in_two_modules():
    twice = {name: where for name, where in homes(PACKAGE).items() if len(where) > 1}
    assert not twice, f"defined in more than one module: {twice}"


def test_the_check_finds_a_helper_written_twice(tmp_path):
    (tmp_path / "a.py").write_text("def format_bytes(n):\n    return str(n)\nLIMIT = 3\n")
    (tmp_path / "b.py").write_text(
        "from typing import TypeVar\nT = TypeVar('T')\ndef format_bytes(n):\n    pass\n"
    )
    (tmp_path / "c.py").write_text("from typing import TypeVar\nT = TypeVar('T')\nLIMIT: int = 4\n")
    found = homes(tmp_path)
    assert found["format_bytes"] == ["a.py", "b.py"]
    assert found["LIMIT"] == ["a.py", "c.py"]
    assert "T" not in found
