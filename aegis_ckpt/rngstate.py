"""Random number generator states, in one place and in the two formats a checkpoint may hold them.

* The Trainer's format (``capture_rng_state``, ``trainer_rng_file_state``): the dict ``Trainer._save_rng_state``
  writes to ``rng_state[_<rank>].pth`` (``python``, ``numpy``, ``cpu``, ``cuda``), with numpy's state as its
  ndarray tuple. A plain Trainer resumes from it; reading it needs ``torch.load(weights_only=False)``, as the
  Trainer does.
* The plain format of custom-loop checkpoints (``capture_plain_rng_state``, ``restore_plain_rng_state``): the
  same generators, numpy's state spelled as lists and numbers, so ``torch.load(weights_only=True)`` reads it back
  and a checkpoint cannot run code when it is loaded.

The two formats are not interchangeable, so their functions have different names.
"""

from __future__ import annotations

import random
from typing import Any


def _host_generators(*, include_numpy: bool) -> dict[str, Any]:
    """Python's, numpy's (as its own tuple) and torch's CPU generator: the part both Trainer captures share."""
    import torch

    state: dict[str, Any] = {"python": random.getstate()}
    if include_numpy:
        import numpy as np

        state["numpy"] = np.random.get_state()
    state["cpu"] = torch.random.get_rng_state()
    return state


# ---- the Trainer's format -------------------------------------------------------------------------------------
def capture_rng_state(*, include_numpy: bool = True) -> dict[str, Any]:
    """The current state of every global generator, in the Trainer's format. ``include_numpy=False`` skips
    numpy's legacy generator, the one slow part (~30 us against ~8 us for the rest), for per-step snapshots.
    CUDA generators only once CUDA is initialised (all devices)."""
    import torch

    state = _host_generators(include_numpy=include_numpy)
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.random.get_rng_state_all()
    return state


def trainer_rng_file_state(args) -> dict[str, Any]:
    """Exactly the dict ``Trainer._save_rng_state`` writes for ``args`` (CUDA: every device when distributed,
    else the current one), so an asynchronous save's ``rng_state.pth`` matches the Trainer's own."""
    import torch
    from transformers.training_args import ParallelMode

    state = _host_generators(include_numpy=True)
    if torch.cuda.is_available():
        if args.parallel_mode == ParallelMode.DISTRIBUTED:
            state["cuda"] = torch.cuda.random.get_rng_state_all()
        else:
            state["cuda"] = torch.cuda.random.get_rng_state()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Set every generator present in a Trainer-format ``state`` back to it."""
    import torch

    if "python" in state:
        random.setstate(state["python"])
    if "numpy" in state:
        import numpy as np

        np.random.set_state(state["numpy"])
    if "cpu" in state:
        torch.random.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if isinstance(cuda, (list, tuple)):
            torch.cuda.random.set_rng_state_all(cuda)
        else:
            torch.cuda.random.set_rng_state(cuda)


# ---- the plain format of custom-loop checkpoints -------------------------------------------------------------
def capture_plain_rng_state() -> dict[str, Any]:
    """Every global generator as plain values (lists, numbers, tensors) that ``weights_only=True`` loads."""
    import numpy as np
    import torch

    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "cpu": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_plain_rng_state(state: dict[str, Any]) -> None:
    """Set every generator back to a state written by ``capture_plain_rng_state`` (and read back from disk,
    where tuples became lists)."""
    import numpy as np
    import torch

    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
