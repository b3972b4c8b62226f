"""Module and function sizes: no module over 400 lines, no function over 60 lines unless it says why.

A module that grows past 400 lines usually holds two concerns, and a function past 60 lines of code (its
docstring not counted) usually does several jobs in a row; both are hard to review and to test on their own. A function may stay longer when splitting it
would hurt more than it helps (one linear protocol whose steps must be read together): its docstring then carries
a line starting ``Long because:`` followed by the reason. There is no allow-list: the reason lives next to the
code it excuses.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import aegis_ckpt

PACKAGE_DIR = Path(aegis_ckpt.__file__).resolve().parent

MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
REASON_PREFIX = "Long because:"
MIN_REASON_WORDS = 4
"""A reason is a sentence, not a placeholder: ``Long because: yes`` does not count."""


def has_reason(function: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """Whether the docstring of ``function`` has a line ``Long because: <a reason of a few words>``."""
    doc = ast.get_docstring(function) or ""
    for line in doc.splitlines():
        line = line.strip()
        if line.startswith(REASON_PREFIX) and len(line[len(REASON_PREFIX) :].split()) >= MIN_REASON_WORDS:
            return True
    return False


def function_lines(function: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines from the ``def`` (decorators not counted) to the last line of the body, less the docstring's:
    documentation (an HF-style ``Args:`` block of a public function) is never a reason to split code."""
    lines = function.end_lineno - function.lineno + 1
    first = function.body[0]
    if (
        isinstance(first, ast.Expr)
        and isinstance(first.value, ast.Constant)
        and isinstance(first.value.value, str)
    ):
        lines -= first.end_lineno - first.lineno + 1
    return lines


def oversized(path: Path, root: Path = PACKAGE_DIR.parent) -> list[str]:
    """What in ``path`` is over the limits, one line each, naming the file relative to ``root``."""
    source = path.read_text(encoding="utf-8")
    name = path.relative_to(root).as_posix()
    found = []
    lines = len(source.splitlines())
    if lines > MAX_MODULE_LINES:
        found.append(f"{name}: {lines} lines (> {MAX_MODULE_LINES})")
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = function_lines(node)
            if length > MAX_FUNCTION_LINES and not has_reason(node):
                found.append(
                    f"{name}:{node.lineno} {node.name}: {length} lines (> {MAX_FUNCTION_LINES}) "
                    f"and no '{REASON_PREFIX} ...' line in its docstring"
                )
    return found


def test_no_module_or_function_is_oversized():
    found = [line for path in sorted(PACKAGE_DIR.rglob("*.py")) for line in oversized(path)]
    assert not found, "\n" + "\n".join(found)


BODY_60 = "\n".join(f"    x{i} = {i}" for i in range(59))
"""With its ``def`` line, a function of exactly 60 lines."""
ARGS_DOC = "\n".join(f"        x{i}: the {i}th value." for i in range(20))


def _function(docstring: str = "", extra_lines: int = 0) -> str:
    doc = f'    """Do it.\n\n    {docstring}\n    """\n' if docstring else ""
    return f"def f():\n{doc}{BODY_60}\n" + "    x = 0\n" * extra_lines


@pytest.mark.parametrize(
    ("source", "findings"),
    [
        pytest.param(_function(), 0, id="60 lines pass"),
        pytest.param(_function(extra_lines=1), 1, id="61 lines fail"),
        pytest.param(_function("Long because: one protocol read in order.", 1), 0, id="a reason excuses"),
        pytest.param(_function("Long because: yes", 1), 1, id="a placeholder reason does not"),
        pytest.param(_function(f"Args:\n{ARGS_DOC}"), 0, id="a docstring does not count"),
        pytest.param("x = 0\n" * (MAX_MODULE_LINES + 1), 1, id="401-line module fails"),
    ],
)
def test_the_checker_counts_right(tmp_path, source, findings):
    path = tmp_path / "module.py"
    path.write_text(source)
    assert len(oversized(path, tmp_path)) == findings


def test_the_checker_sees_every_module():
    assert len(list(PACKAGE_DIR.rglob("*.py"))) > 60
