"""Where the ``aegis_ckpt`` logger's lines go when the application did not say, following transformers' habits.

transformers attaches a stderr handler to its own library logger on first use, so its warnings show without any
``logging.basicConfig``. We do the same for ``aegis_ckpt`` (at import), at INFO, so the one line per commit and
per resume is visible by default, formatted like the CLI's lines. Two differences, both to avoid surprises:

- The handler stands down while the root logger has handlers (the application called ``basicConfig`` or set up
  its own logging): our records propagate there instead, in the application's format, and never appear twice.
- On a replica process (``LOCAL_RANK`` > 0, as set by torchrun and accelerate) it passes warnings and errors only,
  like the Trainer's default ``log_level_replica="warning"``.

The level follows transformers' settings: ``TrainingArguments.log_level`` / ``log_level_replica`` at train
begin (``apply_training_log_level``, as the Trainer applies ``args.get_process_log_level()`` to its loggers), and
``transformers.logging.set_verbosity_*`` whenever it was moved away from transformers' own default
(``follow_transformers_verbosity``).
"""

from __future__ import annotations

import logging
import os
import sys

PACKAGE_LOGGER = "aegis_ckpt"
DEFAULT_FORMAT = "[aegis-ckpt] %(levelname)s %(message)s"
_TRANSFORMERS_DEFAULT_LEVEL = logging.WARNING  # transformers' verbosity when nobody set it
_TRANSFORMERS_VERBOSITY_ENV = "TRANSFORMERS_VERBOSITY"


def is_local_main_process() -> bool:
    """True unless this is a replica under torchrun/accelerate (the Trainer's ``should_log`` by default)."""
    try:
        return int(os.environ.get("LOCAL_RANK", "0") or 0) == 0
    except ValueError:
        return True


class DefaultHandler(logging.StreamHandler):
    """stderr output of the ``aegis_ckpt`` logger for applications that configured no logging themselves."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter(DEFAULT_FORMAT))

    @property
    def stream(self):
        # Resolved at each write (like logging.lastResort), so a redirected sys.stderr is honoured.
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it; we always use the current stderr
        pass

    def filter(self, record: logging.LogRecord) -> bool:
        if _reaches_application_handler():
            return False
        if record.levelno < logging.WARNING and not is_local_main_process():
            return False
        return bool(super().filter(record))


def _reaches_application_handler() -> bool:
    """Whether a record of our logger also reaches a handler the application installed (root or a parent)."""
    logger = logging.getLogger(PACKAGE_LOGGER)
    while logger.propagate and logger.parent is not None:
        logger = logger.parent
        if logger.handlers:
            return True
    return False


def install_default_handler() -> None:
    """Give the ``aegis_ckpt`` logger its default handler once, and INFO unless the application chose a level."""
    logger = logging.getLogger(PACKAGE_LOGGER)
    if any(isinstance(h, DefaultHandler) for h in logger.handlers):
        return
    logger.addHandler(DefaultHandler())
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)


def remove_default_handler() -> None:
    """For code that installs its own handler on the package logger (the CLI, the injected hook)."""
    logger = logging.getLogger(PACKAGE_LOGGER)
    logger.handlers[:] = [h for h in logger.handlers if not isinstance(h, DefaultHandler)]


def transformers_verbosity() -> int | None:
    """transformers' verbosity if the application set one (``set_verbosity_*`` or ``TRANSFORMERS_VERBOSITY``),
    else None. transformers is only consulted when already imported: this never imports it."""
    hf_logging = sys.modules.get("transformers.utils.logging")
    if hf_logging is None:
        return None
    level = hf_logging.get_verbosity()
    if level == _TRANSFORMERS_DEFAULT_LEVEL and _TRANSFORMERS_VERBOSITY_ENV not in os.environ:
        return None
    return level


def follow_transformers_verbosity() -> None:
    """Apply transformers' verbosity to our logger when the application set one."""
    level = transformers_verbosity()
    if level is not None:
        logging.getLogger(PACKAGE_LOGGER).setLevel(level)


def apply_training_log_level(args) -> None:
    """At train begin, like the Trainer: replicas get ``log_level_replica``; the main process gets ``log_level``
    when it is set, else transformers' verbosity when the application set one, else keeps our level (so an
    application that configured the ``aegis_ckpt`` logger keeps its choice)."""
    logger = logging.getLogger(PACKAGE_LOGGER)
    if not args.should_log or getattr(args, "log_level", "passive") != "passive":
        logger.setLevel(args.get_process_log_level())
    else:
        follow_transformers_verbosity()
