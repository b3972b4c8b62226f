"""aegis-ckpt: crash-safe, time-based rolling checkpoints for Hugging Face Trainer and custom loops.

Public API only; everything else lives in the module that owns its concern (see the package tree).
"""

from .callback import AegisCheckpointCallback
from .errors import AegisError, CommitError, ConfigError, PreflightError, RunLockedError, VerificationError
from .manager import EmergencyCheckpointManager, EnhancedAutoCheckpointManager, RollingCheckpointManager
from .options import CheckpointOptions
from .resume import find_resume_checkpoint

__version__ = "0.1.0"

__all__ = [
    "AegisCheckpointCallback",
    "AegisError",
    "CheckpointOptions",
    "CommitError",
    "ConfigError",
    "EmergencyCheckpointManager",
    "EnhancedAutoCheckpointManager",
    "PreflightError",
    "RollingCheckpointManager",
    "RunLockedError",
    "VerificationError",
    "find_resume_checkpoint",
    "__version__",
]
