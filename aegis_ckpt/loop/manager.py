"""The seed API for custom training loops: ``RollingCheckpointManager``, ``EmergencyCheckpointManager`` and
``EnhancedAutoCheckpointManager``, imported from here (or from ``aegis_ckpt``).

All three are thin facades over one ``engine.LoopCheckpointer`` (which itself uses the same commit, store,
resume, policy and run-state parts as the Trainer callback), one module each (``rolling``, ``emergency``,
``enhanced``); an Emergency or Enhanced manager built on a Rolling one shares its instance, so there is one
lease, one lock and one save path per directory. See ``docs/custom-loops.md``.
"""

from .emergency import EmergencyCheckpointManager
from .enhanced import EnhancedAutoCheckpointManager
from .rolling import RollingCheckpointManager

__all__ = ["EmergencyCheckpointManager", "EnhancedAutoCheckpointManager", "RollingCheckpointManager"]
