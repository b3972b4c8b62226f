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


def test_the_checker_sees_every_module_and_counts_right(tmp_path):
    """A 60-line function passes, 61 lines fail, a docstring does not count, a real reason excuses, a placeholder
    reason does not, a 401-line module fails."""
    modules = list(PACKAGE_DIR.rglob("*.py"))
    assert len(modules) > 60
    body = "\n".join(f"    x{i} = {i}" for i in range(59))
    short = tmp_path / "short.py"
    short.write_text(f"def f():\n{body}\n")
    assert oversized(short, tmp_path) == []
    longer = tmp_path / "longer.py"
    longer.write_text(f"def f():\n{body}\n    x = 0\n")
    assert len(oversized(longer, tmp_path)) == 1
    excused = tmp_path / "excused.py"
    excused.write_text(
        f'def f():\n    """Do it.\n\n    Long because: one protocol read in order.\n    """\n{body}\n    x = 0\n'
    )
    assert oversized(excused, tmp_path) == []
    documented = tmp_path / "documented.py"
    args_doc = "\n".join(f"        x{i}: the {i}th value." for i in range(20))
    documented.write_text(f'def f():\n    """Do it.\n\n    Args:\n{args_doc}\n    """\n{body}\n')
    assert oversized(documented, tmp_path) == []
    placeholder = tmp_path / "placeholder.py"
    placeholder.write_text(f'def f():\n    """Do it.\n\n    Long because: yes\n    """\n{body}\n    x = 0\n')
    assert len(oversized(placeholder, tmp_path)) == 1
    big = tmp_path / "big.py"
    big.write_text("x = 0\n" * (MAX_MODULE_LINES + 1))
    assert len(oversized(big, tmp_path)) == 1
