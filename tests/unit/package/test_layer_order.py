"""The package's layer order: a module never imports one of a higher layer (DEVELOPERS.md, "Where things are").

Every ``import`` and ``from ... import`` of every module counts, also those inside functions (a lazy import is
still a dependency). The package's own ``__init__`` is the public face above everything and is not checked.
"""

from __future__ import annotations

import ast
from pathlib import Path

import aegis_ckpt

PACKAGE_DIR = Path(aegis_ckpt.__file__).resolve().parent

LAYERS: list[tuple[str, ...]] = [
    ("errors", "system.platform", "_moved", "__version__", "logsetup", "fielddocs"),
    ("exitcodes", "configcheck", "shardsize"),
    ("system", "rngstate", "distributed", "options", "progress"),
    ("policy",),
    ("storage",),
    ("remote",),
    ("runstate",),
    ("resume", "cluster"),
    ("trainer", "loop", "arguments"),
    ("train", "unattended"),
    ("cli", "__main__"),
]
"""Lowest first. A dotted entry (``system.platform``) ranks that module apart from the rest of its folder."""


def layer_of(module: str) -> int:
    """The layer of ``aegis_ckpt.<module>``, by its longest listed prefix."""
    best: tuple[int, int] | None = None
    for rank, entries in enumerate(LAYERS):
        for entry in entries:
            if module == entry or module.startswith(entry + "."):
                if best is None or len(entry) > best[1]:
                    best = (rank, len(entry))
    assert best is not None, f"aegis_ckpt.{module} is in no layer: add it to LAYERS"
    return best[0]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_DIR).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imported_modules(path: Path) -> set[str]:
    """The ``aegis_ckpt`` modules (and names, for ``from package import name``) that ``path`` imports, relative
    to the package."""
    own = module_name(path)
    package = own.split(".") if path.name == "__init__.py" else own.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            elif node.module == "aegis_ckpt" or (node.module or "").startswith("aegis_ckpt."):
                target = node.module.removeprefix("aegis_ckpt").lstrip(".")
            else:
                continue
            if node.module:
                found.add(target)
            # ``from package import name``: the name may be a submodule (its own layer) or a name in the package.
            found.update(f"{target}.{a.name}".lstrip(".") for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(
                a.name.removeprefix("aegis_ckpt").lstrip(".")
                for a in node.names
                if a.name == "aegis_ckpt" or a.name.startswith("aegis_ckpt.")
            )
    return {m for m in found if m}


def violations() -> list[str]:
    out = []
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        if path == PACKAGE_DIR / "__init__.py":
            continue
        own = module_name(path)
        for target in sorted(imported_modules(path)):
            if layer_of(target) > layer_of(own):
                out.append(
                    f"aegis_ckpt.{own} (layer {layer_of(own)}) imports aegis_ckpt.{target} "
                    f"(layer {layer_of(target)})"
                )
    return out


def test_no_module_imports_a_higher_layer():
    assert violations() == []


def test_every_module_has_a_layer_and_is_seen():
    modules = [module_name(p) for p in PACKAGE_DIR.rglob("*.py") if p != PACKAGE_DIR / "__init__.py"]
    assert len(modules) > 60
    for module in modules:
        layer_of(module)
    # The checker sees imports at every level: the CLI imports the autostart package inside a function.
    assert any(
        m.startswith("unattended.autostart") for m in imported_modules(PACKAGE_DIR / "cli" / "unattended.py")
    )
