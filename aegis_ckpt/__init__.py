"""aegis-ckpt: crash-safe, time-based rolling checkpoints for Hugging Face Trainer and custom loops.

Public API only; everything else lives in the module that owns its concern (see the package tree).

The names that need ``transformers`` or ``torch`` (the callback, the resume helper, the custom-loop managers)
are imported on first use, so ``aegis-ckpt run`` (a supervisor that lives as long as the training),
``preflight`` and ``notify`` start in a fraction of a second and do not hold torch in memory.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import _moved, logsetup
from .errors import AegisError, CommitError, ConfigError, PreflightError, RunLockedError
from .options import AsyncOptions, CheckpointOptions, EmergencyOptions

if TYPE_CHECKING:
    from .arguments import AegisArguments
    from .loop.manager import (
        EmergencyCheckpointManager,
        EnhancedAutoCheckpointManager,
        RollingCheckpointManager,
    )
    from .resume import find_resume_checkpoint
    from .trainer.callback import AegisCheckpointCallback

__version__ = "0.1.0"

_moved.install()
logsetup.install_default_handler()  # visible by default, like transformers' own logger

_LAZY = {
    "AegisArguments": ".arguments",
    "AegisCheckpointCallback": ".trainer.callback",
    "find_resume_checkpoint": ".resume",
    "RollingCheckpointManager": ".loop.manager",
    "EmergencyCheckpointManager": ".loop.manager",
    "EnhancedAutoCheckpointManager": ".loop.manager",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AegisArguments",
    "AegisCheckpointCallback",
    "AegisError",
    "AsyncOptions",
    "CheckpointOptions",
    "CommitError",
    "ConfigError",
    "EmergencyCheckpointManager",
    "EmergencyOptions",
    "EnhancedAutoCheckpointManager",
    "PreflightError",
    "RollingCheckpointManager",
    "RunLockedError",
    "find_resume_checkpoint",
    "__version__",
]
