"""``aegis-ckpt run --inject``: crash-safe checkpoints for an unmodified Hugging Face Trainer script.

The supervisor puts ``aegis_ckpt/_inject`` (a ``sitecustomize.py``) first on the child's PYTHONPATH and sets
``AEGIS_INJECT=1``. At startup that hook calls :func:`install_import_hook`, which waits for
``transformers.trainer`` to be imported (nothing is imported early) and then patches ``Trainer``:

* ``Trainer.__init__`` gets an ``AegisCheckpointCallback`` (options from ``AEGIS_INJECT_OPTIONS``) appended to its
  ``callbacks`` argument, unless the script already passes one. The callback is then registered exactly as if the
  script had written ``Trainer(callbacks=[...])``: it sees ``on_init_end`` and reaches the Trainer, so exception
  saves and asynchronous saves work (a callback added after ``__init__`` could do neither);
* ``Trainer.train`` resumes from ``find_resume_checkpoint(args.output_dir)``, the newest *intact* checkpoint,
  when the script passes nothing, ``True``, or a ``checkpoint-N`` folder of its own output dir (what
  ``run_clm.py`` finds with ``get_last_checkpoint``, which takes the highest number without checking it). A path
  elsewhere is the script's explicit choice and is kept.

Both say what they did on stderr. Scripts that already use the callback are left alone entirely. The
environment also reaches child processes (torchrun ranks), so every rank gets the same callback.
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.util
import inspect
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..system.redact import RedactingFormatter

logger = logging.getLogger(__name__)

INJECT_ENV = "AEGIS_INJECT"
INJECT_OPTIONS_ENV = "AEGIS_INJECT_OPTIONS"
HOOK_DIR = Path(__file__).resolve().parent / "_inject"
_TARGET_MODULE = "transformers.trainer"
_PATCHED_FLAG = "_aegis_ckpt_patched"
_USER_MANAGED_FLAG = "_aegis_ckpt_user_managed"


def injection_env(env: dict[str, str], checkpoint_options: dict[str, Any]) -> dict[str, str]:
    """The variables that switch injection on in a child started with environment ``env``."""
    existing = env.get("PYTHONPATH", "")
    return {
        INJECT_ENV: "1",
        INJECT_OPTIONS_ENV: json.dumps(checkpoint_options),
        "PYTHONPATH": str(HOOK_DIR) + (os.pathsep + existing if existing else ""),
    }


def _ensure_log_handler() -> None:
    """An unmodified script has not configured our logger; without this, our INFO lines (injection, commits)
    would vanish."""
    from ..logsetup import remove_default_handler

    remove_default_handler()  # replaced by one that says the lines come from the injected hook
    pkg = logging.getLogger("aegis_ckpt")
    if pkg.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(RedactingFormatter("[aegis-ckpt inject] %(levelname)s %(message)s"))
    pkg.addHandler(handler)
    if pkg.level == logging.NOTSET:
        pkg.setLevel(logging.INFO)
    pkg.propagate = False


def _is_own_checkpoint(path: str, output_dir: Path) -> bool:
    from ..storage.layout import parse_checkpoint_step

    p = Path(path)
    try:
        same_dir = p.resolve().parent == output_dir.resolve()
    except OSError:
        return False
    return same_dir and parse_checkpoint_step(p.name) is not None


def choose_resume(
    requested: Any, output_dir: str | os.PathLike, find: Callable[[Path], str | None]
) -> tuple[Any, str]:
    """What ``Trainer.train`` should resume from, and the log line that says why."""
    output_dir = Path(output_dir)
    if isinstance(requested, (str, os.PathLike)) and not _is_own_checkpoint(os.fspath(requested), output_dir):
        return requested, f"the script resumes from {requested} (outside {output_dir}): kept"
    found = find(output_dir)
    if requested is None or requested is False:
        if found:
            return found, f"resuming from {found}, the newest intact checkpoint"
        return None, f"no committed checkpoint in {output_dir}: starting from the beginning"
    if requested is True:
        if found:
            return found, f"resume_from_checkpoint=True: resuming from {found}, the newest intact checkpoint"
        return True, f"resume_from_checkpoint=True but no committed checkpoint in {output_dir}"
    if found is None:
        return None, (
            f"the script asked for {requested}, which is not an intact committed checkpoint (none is): "
            "starting from the beginning"
        )
    if Path(found).resolve() == Path(os.fspath(requested)).resolve():
        return found, f"resuming from {found}, the newest intact checkpoint (as the script asked)"
    return (
        found,
        f"the script asked for {requested}; resuming from {found}, the newest intact checkpoint, instead",
    )


def _injected_options() -> dict[str, Any]:
    raw = os.environ.get(INJECT_OPTIONS_ENV) or "{}"
    try:
        value = json.loads(raw)
    except ValueError:
        logger.warning("%s is not JSON (%r): using the default checkpoint options", INJECT_OPTIONS_ENV, raw)
        return {}
    return value if isinstance(value, dict) else {}


def patch_trainer(trainer_cls: type) -> None:
    """Wrap ``__init__`` and ``train`` of ``transformers.Trainer`` (idempotent)."""
    if getattr(trainer_cls, _PATCHED_FLAG, False):
        return
    original_init = trainer_cls.__init__
    original_train = trainer_cls.train

    signature = inspect.signature(original_init)

    @functools.wraps(original_init)
    def __init__(self, *args, **kwargs):
        from ..options import CheckpointOptions
        from ..trainer.callback import AegisCheckpointCallback

        try:
            bound = signature.bind(self, *args, **kwargs)
        except TypeError:
            return original_init(self, *args, **kwargs)  # the Trainer's own error for the wrong arguments
        given = list(bound.arguments.get("callbacks") or [])
        if any(
            isinstance(cb, AegisCheckpointCallback)
            or (isinstance(cb, type) and issubclass(cb, AegisCheckpointCallback))
            for cb in given
        ):
            setattr(self, _USER_MANAGED_FLAG, True)
            logger.info(
                "the script already uses AegisCheckpointCallback: injection leaves this Trainer alone"
            )
            original_init(self, *args, **kwargs)
            return
        setattr(self, _USER_MANAGED_FLAG, False)
        options = CheckpointOptions(**_injected_options())
        # Passed in as the script would: the callback sees on_init_end and reaches this Trainer.
        bound.arguments["callbacks"] = [*given, AegisCheckpointCallback(options=options)]
        original_init(*bound.args, **bound.kwargs)
        logger.info(
            "injected AegisCheckpointCallback into %s (save every %g s, keep %d) for %s",
            type(self).__name__,
            options.save_interval_sec,
            options.max_keep,
            self.args.output_dir,
        )

    @functools.wraps(original_train)
    def train(self, *args, **kwargs):
        if getattr(self, _USER_MANAGED_FLAG, True):
            return original_train(self, *args, **kwargs)
        from ..resume import find_resume_checkpoint

        if args:
            requested, args = args[0], args[1:]
        else:
            requested = kwargs.pop("resume_from_checkpoint", None)
        value, message = choose_resume(requested, self.args.output_dir, find_resume_checkpoint)
        logger.info("%s", message)
        return original_train(self, value, *args, **kwargs)

    trainer_cls.__init__ = __init__
    trainer_cls.train = train
    setattr(trainer_cls, _PATCHED_FLAG, True)


class _TrainerImportHook(importlib.abc.MetaPathFinder):
    """Finds ``transformers.trainer`` through the other finders and patches ``Trainer`` right after the module
    has executed, so the patch costs nothing until (and unless) the script imports the Trainer."""

    def __init__(self) -> None:
        self._searching = False

    def find_spec(self, fullname, path=None, target=None):
        if fullname != _TARGET_MODULE or self._searching:
            return None
        self._searching = True
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self._searching = False
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return None
        original_exec = spec.loader.exec_module

        def exec_module(module):
            original_exec(module)
            try:
                patch_trainer(module.Trainer)
            except Exception as e:  # never break the user's import; say that the run is unprotected
                logger.warning(
                    "could not patch transformers.Trainer (%s: %s): NO crash-safe checkpoints",
                    type(e).__name__,
                    e,
                )

        spec.loader.exec_module = exec_module  # this loader instance belongs to this spec alone
        return spec


def install_import_hook() -> None:
    """Called by the ``sitecustomize`` hook when ``AEGIS_INJECT=1``."""
    _ensure_log_handler()
    module = sys.modules.get(_TARGET_MODULE)
    if module is not None:
        patch_trainer(module.Trainer)
        return
    if not any(isinstance(f, _TrainerImportHook) for f in sys.meta_path):
        sys.meta_path.insert(0, _TrainerImportHook())
