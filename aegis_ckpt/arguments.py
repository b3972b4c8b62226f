"""``AegisArguments``: every option of the callback as one flat dataclass, for ``HfArgumentParser``.

Hugging Face users keep their run settings in dataclasses that ``HfArgumentParser`` turns into command-line
flags, JSON or YAML next to ``TrainingArguments``. ``AegisArguments`` is that dataclass for aegis-ckpt::

    parser = HfArgumentParser((TrainingArguments, AegisArguments))
    training_args, aegis_args = parser.parse_args_into_dataclasses()   # ... --save_interval_sec 180
    trainer = Trainer(..., args=training_args, callbacks=[AegisCheckpointCallback(args=aegis_args)])
    trainer.train(resume_from_checkpoint=aegis_args.find_resume_checkpoint(training_args.output_dir))

Its fields are generated from the option dataclasses (``options.py``), so the two can never drift apart: the
``CheckpointOptions`` and ``EmergencyOptions`` fields keep their names, the ``AsyncOptions`` fields get an
``async_`` prefix (``enabled`` becomes ``async_save``, the callback's keyword). None of the names collides with a
``TrainingArguments`` field. Values are validated by the option classes when the arguments are built.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from .fielddocs import field_docs
from .options import (
    VERIFY_MODES,
    WHEN_BUSY_MODES,
    WRITER_KINDS,
    AsyncOptions,
    CheckpointOptions,
    EmergencyOptions,
)

# (options class, {option field: argument name}) for the renamed fields; the others keep their names.
_SOURCES: tuple[tuple[type, str, dict[str, str]], ...] = (
    (CheckpointOptions, "", {}),
    (EmergencyOptions, "", {}),
    (AsyncOptions, "async_", {"enabled": "async_save"}),
)
# String options with a fixed set of values: typed as Literal so that --help and argparse list the choices.
_CHOICES = {
    (CheckpointOptions, "verify"): VERIFY_MODES,
    (AsyncOptions, "when_busy"): WHEN_BUSY_MODES,
    (AsyncOptions, "writer"): WRITER_KINDS,
}
_ADOPT_PLAIN_HELP = (
    "find_resume_checkpoint takes over checkpoints a plain Trainer left in output_dir: each one that passes "
    "structural checks gets a manifest and counts as committed; the others are quarantined."
)
_MAX_KEEP_HELP = (
    "Committed rolling checkpoints to keep; older ones are deleted only after a newer one commits. Defaults to "
    "the Trainer's save_total_limit when that is set, else 5."
)


def _argument_name(prefix: str, renamed: dict[str, str], option: str) -> str:
    return renamed.get(option, prefix + option)


def _argument_fields() -> list[tuple[str, Any, dataclasses.Field]]:
    out = []
    for cls, prefix, renamed in _SOURCES:
        hints = typing.get_type_hints(cls)
        docs = field_docs(cls)
        for f in dataclasses.fields(cls):
            name = _argument_name(prefix, renamed, f.name)
            help_text = (
                docs.get(f.name, "").replace("``", "").replace("%", "%%")
            )  # argparse formats help with %
            default = f.default
            annotation = hints[f.name]
            if (cls, f.name) in _CHOICES:
                annotation = typing.Literal[_CHOICES[(cls, f.name)]]
            if (cls, f.name) == (CheckpointOptions, "max_keep"):
                default, annotation, help_text = None, int | None, _MAX_KEEP_HELP
            out.append((name, annotation, dataclasses.field(default=default, metadata={"help": help_text})))
    out.append(("adopt_plain", bool, dataclasses.field(default=False, metadata={"help": _ADOPT_PLAIN_HELP})))
    return out


def _to_options(self) -> tuple[CheckpointOptions, EmergencyOptions, AsyncOptions]:
    """The option objects these arguments describe (``max_keep`` left unset falls back to its default)."""
    built = []
    for cls, prefix, renamed in _SOURCES:
        values = {
            f.name: getattr(self, _argument_name(prefix, renamed, f.name)) for f in dataclasses.fields(cls)
        }
        if cls is CheckpointOptions and values["max_keep"] is None:
            del values["max_keep"]
        built.append(cls(**values))
    return tuple(built)


def _post_init(self) -> None:
    self.to_options()  # the option classes validate; a bad value raises ConfigError naming the field


def _find_resume_checkpoint(self, output_dir) -> str | None:
    """``find_resume_checkpoint(output_dir)`` with these arguments' ``verify``, ``allow_unverified`` and
    ``adopt_plain``."""
    from .resume import find_resume_checkpoint

    return find_resume_checkpoint(
        output_dir, verify=self.verify, allow_unverified=self.allow_unverified, adopt_plain=self.adopt_plain
    )


AegisArguments = dataclasses.make_dataclass(
    "AegisArguments",
    _argument_fields(),
    namespace={
        "__doc__": "Every aegis-ckpt option as a flat dataclass field, for ``HfArgumentParser`` next to "
        "``TrainingArguments`` (``--save_interval_sec 180``), and for "
        "``AegisCheckpointCallback(args=AegisArguments(...))``.",
        "__post_init__": _post_init,
        "to_options": _to_options,
        "find_resume_checkpoint": _find_resume_checkpoint,
        "explicit_max_keep": property(lambda self: self.max_keep is not None),
    },
    kw_only=True,
)
AegisArguments.__module__ = __name__
