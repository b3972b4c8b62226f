"""Old module paths of the flat layout, kept importable for one release.

Until 0.2 the package was one folder of modules (``aegis_ckpt.commit``, ``aegis_ckpt.callback``, ...). Users'
scripts and notebooks may import those paths, so each one stays an alias of the module that now owns its code:
``import aegis_ckpt.commit`` returns the very module object ``aegis_ckpt.storage.commit`` (patching through the
old name patches the real module) and emits one ``DeprecationWarning`` naming the new path. An import hook is used
instead of one re-export file per old name so that ``ls aegis_ckpt`` shows only the real layout.

An old module whose code now lives in several modules (``MOVED_NAMES``) cannot be one module object: its old path
gives a thin stand-in that hands out each old name from the module that now owns it (patch those in their new
module).

The old paths that are now packages (``runstate``, ``policy``, ``loop``, ``train``, ``cli``) keep their names
through :func:`lazy_exports` in the package's ``__init__``.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
import warnings
from collections.abc import Callable
from typing import Any

MOVED_MODULES: dict[str, str] = {
    "aegis_ckpt.asyncsave": "aegis_ckpt.trainer.asyncsave.saver",
    "aegis_ckpt.audit": "aegis_ckpt.storage.audit",
    "aegis_ckpt.autostart": "aegis_ckpt.unattended.autostart",
    "aegis_ckpt.builders": "aegis_ckpt.train.builders",
    "aegis_ckpt.callback": "aegis_ckpt.trainer.callback",
    "aegis_ckpt.commit": "aegis_ckpt.storage.commit",
    "aegis_ckpt.compat": "aegis_ckpt.trainer.compat",
    "aegis_ckpt.config": "aegis_ckpt.train.config",
    "aegis_ckpt.directwrite": "aegis_ckpt.storage.directwrite",
    "aegis_ckpt.emergency": "aegis_ckpt.trainer.emergency",
    "aegis_ckpt.hfsnapshot": "aegis_ckpt.trainer.asyncsave.snapshot",
    "aegis_ckpt.inject": "aegis_ckpt.unattended.inject",
    "aegis_ckpt.loopstate": "aegis_ckpt.loop.loopstate",
    "aegis_ckpt.manager": "aegis_ckpt.loop.manager",
    "aegis_ckpt.notify": "aegis_ckpt.unattended.notify",
    "aegis_ckpt.plaincheck": "aegis_ckpt.storage.plaincheck",
    "aegis_ckpt.preflight": "aegis_ckpt.train.preflight",
    "aegis_ckpt.recorder": "aegis_ckpt.runstate.recorder",
    "aegis_ckpt.signals": "aegis_ckpt.system.signals",
    "aegis_ckpt.stats": "aegis_ckpt.runstate.stats",
    "aegis_ckpt.status": "aegis_ckpt.cli.status",
    "aegis_ckpt.store": "aegis_ckpt.storage.store",
    "aegis_ckpt.supervise": "aegis_ckpt.unattended.supervise",
    "aegis_ckpt.writerproc": "aegis_ckpt.trainer.asyncsave.writerproc",
}
"""Old module path -> the module that holds most of its code (all of it, unless ``MOVED_NAMES`` says more)."""

_SNAPSHOT = "aegis_ckpt.trainer.asyncsave."
MOVED_NAMES: dict[str, dict[str, str]] = {
    "aegis_ckpt.hfsnapshot": {
        **dict.fromkeys(
            ("PAGE_ALIGNED_MIN_BYTES", "PageArena", "ShmRef", "SnapshotBuffers"), _SNAPSHOT + "buffers"
        ),
        **dict.fromkeys(
            ("LargeFile", "write_rng_file", "write_snapshot", "write_snapshot_files"), _SNAPSHOT + "hflayout"
        ),
        **dict.fromkeys(("overridden_save_method", "unsupported_reason"), "aegis_ckpt.trainer.compat"),
        **dict.fromkeys(
            ("OPTIMIZER_NAME", "SCALER_NAME", "SCHEDULER_NAME", "TRAINER_STATE_NAME", "TRAINING_ARGS_NAME"),
            "aegis_ckpt.storage.layout",
        ),
    },
    "aegis_ckpt.signals": dict.fromkeys(
        ("CTRL_BREAK_EVENT", "CTRL_CLOSE_EVENT", "CTRL_C_EVENT", "CTRL_LOGOFF_EVENT", "CTRL_SHUTDOWN_EVENT"),
        "aegis_ckpt.system.console",
    ),
    "aegis_ckpt.supervise": {
        "WindowsProcessControl": "aegis_ckpt.system.process",
        "DUPLICATE_SIGNAL_WINDOW_SEC": "aegis_ckpt.unattended.stoprequests",
    },
    "aegis_ckpt.audit": {"EVENTS": "aegis_ckpt.storage.audit:AUDIT_EVENTS"},
    "aegis_ckpt.notify": {"EVENTS": "aegis_ckpt.unattended.notify:RUN_END_EVENTS"},
    "aegis_ckpt.manager": {"DEFAULT_SIGNALS": "aegis_ckpt.loop.emergency:LOOP_STOP_SIGNALS"},
    "aegis_ckpt.loopstate": {
        "RNG_NAME": "aegis_ckpt.storage.layout:RNG_STATE_NAME",
        "capture_rng_state": "aegis_ckpt.rngstate:capture_plain_rng_state",
        "restore_rng_state": "aegis_ckpt.rngstate:restore_plain_rng_state",
    },
}
"""Names of a split old module that left the module its path points to, and where each one lives now
(``module:new_name`` where the name changed too)."""


def _warn(old: str, new: str) -> None:
    warnings.warn(
        f"{old} moved to {new}; the old path goes away in aegis-ckpt 0.3", DeprecationWarning, stacklevel=3
    )


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> Any:
        _warn(spec.name, self.target)
        if spec.name in MOVED_NAMES:
            return _SplitModule(spec.name, self.target, MOVED_NAMES[spec.name])
        return importlib.import_module(self.target)

    def exec_module(self, module: Any) -> None:
        """The target module ran its own code when it was imported."""


class _SplitModule(types.ModuleType):
    """The old path of a module that was split: each name comes from the module that owns it now."""

    def __init__(self, name: str, primary: str, elsewhere: dict[str, str]) -> None:
        super().__init__(name, f"Moved: see {primary}")
        self._primary = primary
        self._elsewhere = elsewhere

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        home, _, new_name = self._elsewhere.get(name, self._primary).partition(":")
        return getattr(importlib.import_module(home), new_name or name)


class _MovedFinder(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: Any, target: Any = None
    ) -> importlib.machinery.ModuleSpec | None:
        new = MOVED_MODULES.get(fullname)
        if new is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, _AliasLoader(new))


def install() -> None:
    """Put the alias finder on ``sys.meta_path`` once (the package's ``__init__`` calls it)."""
    if not any(isinstance(f, _MovedFinder) for f in sys.meta_path):
        sys.meta_path.append(_MovedFinder())


def lazy_exports(package: str, exports: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for a package that replaced an old module of the same name.

    ``exports`` maps each name the old module had to the submodule (relative to ``package``) that now holds it;
    the submodule is imported on first use, so ``import aegis_ckpt.train.config`` does not pull in transformers
    through the package's ``__init__``. Each such use emits a ``DeprecationWarning`` naming the new home.
    """

    def __getattr__(name: str) -> Any:
        where = exports.get(name)
        if where is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        home = importlib.util.resolve_name(where if where.startswith(".") else f".{where}", package)
        _warn(f"{package}.{name}", f"{home}.{name}")
        return getattr(importlib.import_module(home), name)

    return __getattr__
