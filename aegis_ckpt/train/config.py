"""The YAML run config of ``aegis-ckpt train``: loading, ``--set`` overrides and validation.

A config has these sections; every key is checked, and unknown keys are named in the error::

    model:       how to build or load the model (from a config, or ``name_or_path`` on the Hub / a local path)
    tokenizer:   a tokenizer to load, or a byte-level BPE to train in code on the training text
    data:        a local text/JSONL file, or a Hugging Face dataset; block size
    training:    passed to ``transformers.TrainingArguments`` as is (``output_dir`` is required)
    checkpoint:  ``CheckpointOptions`` (save interval, retention)
    emergency:   ``EmergencyOptions`` (signals, grace period, exception saves)
    async_save:  ``AsyncOptions`` (two-phase saves: snapshot, then write and commit in the background)
    remote:      ``RemoteOptions`` (off-machine copies in object storage: url, max_keep, options)
    resume:      how the resume checkpoint is verified
    preflight:   what ``aegis-ckpt preflight`` refuses on (GPU required, disk margin); optional
    notify:      end-of-run sound and webhook (``aegis-ckpt notify``); optional

String values may use ``${VAR}`` and ``${VAR:-default}`` to read environment variables, so one config can point
``output_dir`` at ``D:/...`` on one machine and ``/data/...`` on another.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..configcheck import check_fields, check_known_keys
from ..errors import ConfigError
from ..options import (
    VERIFY_MODES,
    AsyncOptions,
    CheckpointOptions,
    EmergencyOptions,
    RemoteOptions,
    options_from_mapping,
)
from .overrides import apply_overrides, expand_env, yaml_problem


def _section(raw: dict[str, Any], name: str) -> dict[str, Any]:
    value = raw.get(name) or {}
    if not isinstance(value, dict):
        raise ConfigError(f"section {name} must be a mapping, got {type(value).__name__}")
    return value


@dataclass(frozen=True, kw_only=True)
class LoraConfig:
    r: int = 8
    """Rank of the LoRA update matrices."""
    alpha: int = 16
    """LoRA scaling numerator (``lora_alpha``)."""
    dropout: float = 0.05
    """Dropout on the LoRA path."""
    target_modules: list[str] | str | None = None
    """Module names to adapt; None lets PEFT choose for known architectures."""


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    name_or_path: str | None = None
    """A Hub model id or a local folder, loaded with ``AutoModelForCausalLM.from_pretrained``."""
    arch: str = "gpt2"
    """Model type to build from scratch (``AutoConfig.for_model``) when ``name_or_path`` is not set."""
    config: dict[str, Any] = field(default_factory=dict)
    """Overrides for the built config (e.g. ``n_layer``), or ``from_pretrained`` kwargs of the loaded one."""
    dtype: str | None = None
    """``float32``, ``bfloat16``, ``float16`` or ``auto``; None keeps the library default."""
    lora: LoraConfig | None = None
    """Wrap the model with PEFT LoRA adapters (``pip install aegis-ckpt[lora]``)."""
    trust_remote_code: bool = False
    """Passed to ``from_pretrained``; only for models you trust."""


@dataclass(frozen=True, kw_only=True)
class TokenizerConfig:
    name_or_path: str | None = None
    """A Hub id or local folder; defaults to the model's ``name_or_path`` when that is set."""
    vocab_size: int = 1024
    """Vocabulary of the byte-level BPE trained in code when no tokenizer is loaded."""


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    train_file: str | None = None
    """A local ``.txt`` (one document per blank-line-separated paragraph) or ``.jsonl`` file."""
    hf_dataset: dict[str, Any] | None = None
    """``{path, name, split, text_column}`` for ``datasets.load_dataset`` (Hub or local)."""
    text_column: str = "text"
    """Field holding the text in JSONL files and datasets."""
    block_size: int = 128
    """Tokens per training example; the text is concatenated and cut into blocks."""
    max_samples: int | None = None
    """Keep at most this many blocks (quick experiments)."""


@dataclass(frozen=True, kw_only=True)
class ResumeConfig:
    verify: str = "full"
    """``full`` re-hashes the resume checkpoint, ``quick`` compares sizes."""
    allow_unverified: bool = False
    """Also resume from checkpoints without a manifest (plain Trainer) after structural checks."""
    adopt_plain: bool = False
    """Take over an output dir of plain-Trainer checkpoints: each one that passes structural checks gets a
    manifest (it is then committed like ours) and training resumes from the newest; the others are quarantined.
    Same as ``aegis-ckpt train CONFIG --adopt-plain``."""


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


@dataclass(frozen=True, kw_only=True)
class PreflightConfig:
    """What ``aegis-ckpt preflight`` refuses on, so an unattended run fails at once instead of hours later."""

    require_gpu: bool = False
    """Refuse to start when no CUDA GPU is visible. Off: no GPU is a warning and training runs on the CPU."""
    min_gpu_free_gb: float | None = None
    """Refuse to start unless a GPU has at least this much free memory (GiB); null only reports it."""
    disk_margin_gb: float = 1.0
    """Free space (GiB) to keep on top of the projected need of the checkpoints and the final model."""

    def __post_init__(self) -> None:
        if not isinstance(self.require_gpu, bool):
            raise ConfigError(f"preflight.require_gpu must be true or false (got {self.require_gpu!r})")
        if self.min_gpu_free_gb is not None and (
            not _is_number(self.min_gpu_free_gb) or self.min_gpu_free_gb <= 0
        ):
            raise ConfigError(
                f"preflight.min_gpu_free_gb must be a number > 0 or null (got {self.min_gpu_free_gb!r}): "
                "it is the free GPU memory in GiB below which training does not start"
            )
        if not _is_number(self.disk_margin_gb) or self.disk_margin_gb < 0:
            raise ConfigError(
                f"preflight.disk_margin_gb must be a number >= 0 (got {self.disk_margin_gb!r}): "
                "it is the free space in GiB kept on top of the checkpoints' projected need"
            )


@dataclass(frozen=True, kw_only=True)
class NotifyConfig:
    """How ``aegis-ckpt notify`` tells the user that a run finished or gave up."""

    sound: bool = True
    """Play a sound (Windows: two different system sounds; elsewhere the terminal bell). Never blocks."""
    webhook_url: str | None = None
    """POST a small JSON message here. Write ``${AEGIS_WEBHOOK_URL:-}`` to keep the secret out of the file;
    an empty value means no webhook. The URL is never logged in full."""
    webhook_timeout_sec: float = 10.0
    """Give up on the webhook after this many seconds; a failed webhook is logged, never fatal."""

    def __post_init__(self) -> None:
        if not isinstance(self.sound, bool):
            raise ConfigError(f"notify.sound must be true or false (got {self.sound!r})")
        if self.webhook_url is not None and (
            not isinstance(self.webhook_url, str) or not self.webhook_url.startswith(("http://", "https://"))
        ):
            raise ConfigError("notify.webhook_url must be an http:// or https:// URL (or empty for none)")
        if not _is_number(self.webhook_timeout_sec) or self.webhook_timeout_sec <= 0:
            raise ConfigError(
                f"notify.webhook_timeout_sec must be a number > 0 (got {self.webhook_timeout_sec!r})"
            )


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    model: ModelConfig
    tokenizer: TokenizerConfig
    data: DataConfig
    training: dict[str, Any]
    checkpoint: CheckpointOptions
    emergency: EmergencyOptions
    async_save: AsyncOptions
    resume: ResumeConfig
    remote: RemoteOptions = field(default_factory=RemoteOptions)
    preflight: PreflightConfig = field(default_factory=PreflightConfig)
    notify: NotifyConfig = field(default_factory=NotifyConfig)
    source: str = "<memory>"
    base_dir: Path = Path(".")
    """Folder relative paths in the config are resolved against (the config file's folder)."""

    @property
    def output_dir(self) -> Path:
        return Path(self.training["output_dir"])


SECTIONS = (
    "model",
    "tokenizer",
    "data",
    "training",
    "checkpoint",
    "emergency",
    "async_save",
    "remote",
    "resume",
    "preflight",
    "notify",
)


def _build_dataclass(cls, section: str, values: dict[str, Any]):
    return options_from_mapping(cls, values, section)


def _resolve(base: Path, path: str | None) -> str | None:
    if path is None:
        return None
    p = Path(path).expanduser()
    # normpath: "configs/../runs/tiny" is shown and logged as "runs/tiny"
    return os.path.normpath(p if p.is_absolute() else (base / p))


def _looks_local(value: str) -> bool:
    return value.startswith((".", "/", "~")) or "\\" in value or (len(value) > 1 and value[1] == ":")


def _check_training(values: dict[str, Any]) -> dict[str, Any]:
    """The training section, checked key by key against ``TrainingArguments``' field types (numbers written as
    ``5e-4``, which YAML 1.1 reads as strings, become floats)."""
    from transformers import TrainingArguments

    return check_fields(TrainingArguments, "training", dict(values))


def parse_config(raw: Any, *, source: str = "<memory>", base_dir: Path | None = None) -> TrainConfig:
    """Validate a loaded YAML document and build the typed config. One parser per section, called in the order
    of ``SECTIONS``: the first error reported is that of the first section with one."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the config must be a YAML mapping with sections {', '.join(SECTIONS)}")
    check_known_keys("", raw, SECTIONS)
    raw = expand_env(raw, "config")
    base = Path(base_dir) if base_dir is not None else Path(".")
    return TrainConfig(
        model=_parse_model(_section(raw, "model"), base),
        tokenizer=_parse_tokenizer(_section(raw, "tokenizer"), base),
        data=_parse_data(_section(raw, "data"), base),
        training=_parse_training(_section(raw, "training"), base),
        checkpoint=_parse_checkpoint(_section(raw, "checkpoint")),
        emergency=EmergencyOptions.from_mapping(_section(raw, "emergency"), where="emergency"),
        async_save=AsyncOptions.from_mapping(_section(raw, "async_save"), where="async_save"),
        remote=_parse_remote(_section(raw, "remote")),
        resume=_parse_resume(_section(raw, "resume")),
        preflight=_build_dataclass(PreflightConfig, "preflight", _section(raw, "preflight")),
        notify=_parse_notify(_section(raw, "notify")),
        source=source,
        base_dir=base,
    )


def _parse_model(values: dict[str, Any], base: Path) -> ModelConfig:
    values = dict(values)
    lora = values.pop("lora", None)
    if lora is not None and not isinstance(lora, dict):
        raise ConfigError("model.lora must be a mapping (r, alpha, dropout, target_modules) or null")
    model = _build_dataclass(ModelConfig, "model", values)
    if lora is not None:
        model = dataclasses.replace(model, lora=_build_dataclass(LoraConfig, "model.lora", lora))
    if model.name_or_path and _looks_local(model.name_or_path):
        model = dataclasses.replace(model, name_or_path=_resolve(base, model.name_or_path))
    return model


def _parse_tokenizer(values: dict[str, Any], base: Path) -> TokenizerConfig:
    tokenizer = _build_dataclass(TokenizerConfig, "tokenizer", values)
    if tokenizer.name_or_path and _looks_local(tokenizer.name_or_path):
        tokenizer = dataclasses.replace(tokenizer, name_or_path=_resolve(base, tokenizer.name_or_path))
    return tokenizer


def _parse_data(values: dict[str, Any], base: Path) -> DataConfig:
    data = _build_dataclass(DataConfig, "data", values)
    if (data.train_file is None) == (data.hf_dataset is None):
        raise ConfigError(
            "data: set exactly one of train_file (a local file) or hf_dataset (a datasets source)"
        )
    if data.train_file is not None:
        data = dataclasses.replace(data, train_file=_resolve(base, data.train_file))
    if not isinstance(data.block_size, int) or data.block_size < 2:
        raise ConfigError(f"data.block_size must be an integer >= 2 (got {data.block_size!r})")
    return data


def _parse_training(values: dict[str, Any], base: Path) -> dict[str, Any]:
    training = _check_training(values)
    if not training.get("output_dir"):
        raise ConfigError("training.output_dir is required: it is where checkpoints are written")
    training["output_dir"] = _resolve(base, str(training["output_dir"]))
    training.setdefault("report_to", "none")
    return training


def _parse_checkpoint(values: dict[str, Any]) -> CheckpointOptions:
    for key in ("verify", "allow_unverified"):
        if key in values:
            # CheckpointOptions carries these for the custom-loop managers; a config run resumes by resume:.
            raise ConfigError(f"checkpoint.{key} belongs in the resume: section of a config (resume.{key})")
    return CheckpointOptions.from_mapping(values, where="checkpoint")


def _parse_remote(values: dict[str, Any]) -> RemoteOptions:
    values = dict(values)
    if values.get("url") == "":  # ${AEGIS_REMOTE_URL:-} with the variable unset: no remote copies
        values["url"] = None
    return RemoteOptions.from_mapping(values, where="remote")


def _parse_resume(values: dict[str, Any]) -> ResumeConfig:
    resume = _build_dataclass(ResumeConfig, "resume", values)
    if resume.verify not in VERIFY_MODES:
        raise ConfigError(f"resume.verify must be one of {VERIFY_MODES} (got {resume.verify!r})")
    return resume


def _parse_notify(values: dict[str, Any]) -> NotifyConfig:
    values = dict(values)
    if values.get("webhook_url") == "":  # ${AEGIS_WEBHOOK_URL:-} with the variable unset
        values["webhook_url"] = None
    return _build_dataclass(NotifyConfig, "notify", values)


def load_config(path: str | os.PathLike, overrides: list[str] | None = None) -> TrainConfig:
    """Read, override and validate a YAML config file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"config path is a directory, not a YAML file: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config {path}: {e}") from e
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML{yaml_problem(e)}") from None
    if raw is None:
        raise ConfigError(f"{path} is empty")
    if overrides:
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: the config must be a YAML mapping")
        raw = apply_overrides(raw, overrides)
    return parse_config(raw, source=str(path), base_dir=path.resolve().parent)


def read_output_dir(path: str | os.PathLike, overrides: list[str] | None = None) -> Path:
    """``training.output_dir`` of a config file by the same rules (``${VAR}``, ``--set`` ``overrides``, relative
    to the file), without validating the rest, which imports transformers: the launchers ask for it on every
    start, right before the preflight validates the whole config. ``ConfigError`` when it cannot be read."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        if overrides:
            raw = apply_overrides(raw, overrides)
        value = expand_env(raw["training"]["output_dir"], "training.output_dir")
    except (OSError, UnicodeDecodeError, yaml.YAMLError, KeyError, TypeError) as e:
        raise ConfigError(f"cannot read training.output_dir from {path}: {type(e).__name__}") from None
    if not isinstance(value, str) or not value:
        raise ConfigError(f"training.output_dir of {path} is not a path")
    return Path(_resolve(path.resolve().parent, value))
