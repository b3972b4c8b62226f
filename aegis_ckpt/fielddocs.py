"""Per-field docstrings of the option dataclasses (the string literal right after each field, the torchtitan
convention), read with ``ast``: Python keeps no such docstrings at run time. Used for ``--help`` of
``AegisArguments`` and for the generated configuration reference."""

from __future__ import annotations

import ast
import functools
import inspect
from pathlib import Path


@functools.cache
def field_docs(cls) -> dict[str, str]:
    """``{field: docstring}`` for a dataclass; empty when its source is not available (a frozen app)."""
    try:
        tree = ast.parse(Path(inspect.getsourcefile(cls)).read_text(encoding="utf-8"))
    except (OSError, TypeError):
        return {}
    node = next((n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == cls.__name__), None)
    if node is None:
        return {}
    docs: dict[str, str] = {}
    body = node.body
    for stmt, following in zip(body, [*body[1:], None], strict=True):
        if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
            continue
        if (
            isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            docs[stmt.target.id] = " ".join(following.value.value.split())
    return docs
