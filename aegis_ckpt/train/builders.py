"""Build the tokenizer, dataset and model that a run config describes.

Two paths, both real: load from ``name_or_path`` (the Hugging Face Hub or a local folder, as users do) or build
from scratch in code (a GPT-2-style model from a config and a byte-level BPE trained on the training text), which
is what the shipped default config and the tests use, since they must run without network access.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..storage import fsio
from .config import DataConfig, ModelConfig, TokenizerConfig
from .config import LoraConfig as LoraOptions

logger = logging.getLogger(__name__)

TOKENIZER_CACHE_DIR = "tokenizer"
_SPECIAL_TOKEN = "<|endoftext|>"


TRAIN_EXTRA_MODULES = ("datasets", "tokenizers")


def require_train_extra() -> None:
    """``aegis-ckpt train`` needs ``datasets`` and ``tokenizers`` (the ``train`` extra); the plugin does not."""
    import importlib.util

    missing = [m for m in TRAIN_EXTRA_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(
            f"aegis-ckpt train needs {' and '.join(missing)}: pip install 'aegis-ckpt[train]' (the callback and "
            "the custom-loop managers work without them)"
        )


# ---- text ------------------------------------------------------------------------------------------------------
def read_texts(data: DataConfig) -> list[str]:
    """The training documents as a list of strings."""
    if data.train_file is not None:
        path = Path(data.train_file)
        if not path.is_file():
            raise ConfigError(f"data.train_file not found: {path}")
        if path.suffix in (".jsonl", ".json"):
            texts = []
            with open(path, encoding="utf-8") as f:
                for n, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        texts.append(str(json.loads(line)[data.text_column]))
                    except (ValueError, KeyError, TypeError) as e:
                        raise ConfigError(
                            f"{path}:{n}: expected a JSON object with '{data.text_column}': {e}"
                        ) from e
            return texts
        content = path.read_text(encoding="utf-8")
        return [p.strip() for p in content.split("\n\n") if p.strip()]
    spec = dict(data.hf_dataset or {})
    text_column = spec.pop("text_column", data.text_column)
    split = spec.pop("split", "train")
    if "path" not in spec:
        raise ConfigError("data.hf_dataset needs a 'path' (a Hub dataset id or a local folder/file type)")
    import datasets

    ds = datasets.load_dataset(**spec, split=split)
    if text_column not in ds.column_names:
        raise ConfigError(f"dataset has no column {text_column!r} (columns: {', '.join(ds.column_names)})")
    return [t for t in ds[text_column] if isinstance(t, str) and t.strip()]


# ---- tokenizer -------------------------------------------------------------------------------------------------
def train_bpe_tokenizer(texts: list[str], vocab_size: int):
    """A byte-level BPE tokenizer trained on ``texts``: deterministic for the same input."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[_SPECIAL_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=_SPECIAL_TOKEN, eos_token=_SPECIAL_TOKEN, pad_token=_SPECIAL_TOKEN
    )


def build_tokenizer(cfg: TokenizerConfig, model: ModelConfig, texts: list[str], output_dir: Path):
    """Load the configured tokenizer, or train one in code and keep it in ``output_dir/tokenizer`` so that a
    resumed run tokenizes exactly as the first one did."""
    from transformers import AutoTokenizer

    source = cfg.name_or_path or model.name_or_path
    if source:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=model.trust_remote_code)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        return tokenizer
    cache = output_dir / TOKENIZER_CACHE_DIR
    cached = load_cached_tokenizer(cache)
    if cached is not None:
        return cached
    # The ranks of one run start together on a fresh output dir: one of them builds the cache while the others
    # wait and then load it, so that no rank deletes or replaces a folder another rank is writing.
    from filelock import FileLock

    output_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(output_dir / f".{TOKENIZER_CACHE_DIR}.lock")):
        cached = load_cached_tokenizer(cache)
        if cached is not None:
            return cached
        tokenizer = train_bpe_tokenizer(texts, cfg.vocab_size)
        save_tokenizer_cache(tokenizer, cache)
    return tokenizer


def load_cached_tokenizer(cache: Path):
    """The tokenizer kept in ``cache``, or None when there is none or it does not load. A cache that does not load
    (a file cut short by a crash of an older version, a disk error) is rebuilt from the text rather than stopping
    every restart: training the tokenizer again is deterministic and gives the same one."""
    if not (cache / "tokenizer.json").is_file():
        return None
    from transformers import PreTrainedTokenizerFast

    try:
        return PreTrainedTokenizerFast.from_pretrained(str(cache))
    except Exception as e:  # noqa: BLE001 - JSON, tokenizers (Rust) and OS errors alike mean: build it again
        logger.warning("The tokenizer cache %s does not load (%s); building the tokenizer again", cache, e)
        return None


def save_tokenizer_cache(tokenizer, cache: Path) -> None:
    """Keep the trained tokenizer in ``cache``, durably and all at once: written into a temporary folder, flushed,
    renamed into place, the output folder flushed. After a power cut the cache is complete or absent. Called
    under the cache's lock (``build_tokenizer``), so a leftover temporary folder is one a crash left behind."""
    for leftover in cache.parent.glob(f".{TOKENIZER_CACHE_DIR}.tmp-*"):
        fsio.rmtree(leftover, ignore_errors=True)
    tmp = cache.parent / f".{TOKENIZER_CACHE_DIR}.tmp-{os.getpid()}"
    tokenizer.save_pretrained(str(tmp))
    if cache.exists():  # a cache that did not load
        fsio.rmtree(cache)
        fsio.fsync_dir(cache.parent)
    fsio.publish_dir(tmp, cache)


# ---- dataset ---------------------------------------------------------------------------------------------------
def build_dataset(texts: list[str], tokenizer, data: DataConfig):
    """Concatenate the tokenized documents (separated by EOS) and cut them into ``block_size`` blocks."""
    import datasets

    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for encoded in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        ids.extend(encoded)
        if eos is not None:
            ids.append(eos)
    block = data.block_size
    n_blocks = len(ids) // block
    if n_blocks == 0:
        raise ConfigError(
            f"the training text has {len(ids)} tokens, fewer than one block of {block}: add text or lower block_size"
        )
    if data.max_samples is not None:
        n_blocks = min(n_blocks, data.max_samples)
    blocks = [ids[i * block : (i + 1) * block] for i in range(n_blocks)]
    return datasets.Dataset.from_dict({"input_ids": blocks})


# ---- model -----------------------------------------------------------------------------------------------------
def _torch_dtype(name: str | None):
    if name in (None, "auto"):
        return name
    import torch

    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
    except KeyError:
        raise ConfigError(f"model.dtype must be float32, bfloat16, float16 or auto (got {name!r})") from None


def build_model(cfg: ModelConfig, tokenizer, block_size: int):
    """Load ``name_or_path`` or build ``arch`` from a config; wrap with LoRA when configured."""
    from transformers import AutoConfig, AutoModelForCausalLM

    dtype = _torch_dtype(cfg.dtype)
    if cfg.name_or_path:
        kwargs: dict[str, Any] = dict(cfg.config)
        if dtype is not None:
            kwargs["dtype"] = dtype
        model = AutoModelForCausalLM.from_pretrained(
            cfg.name_or_path, trust_remote_code=cfg.trust_remote_code, **kwargs
        )
    else:
        overrides = dict(cfg.config)
        overrides.setdefault("vocab_size", len(tokenizer))
        if cfg.arch == "gpt2":
            overrides.setdefault("n_positions", block_size)
            overrides.setdefault("bos_token_id", tokenizer.bos_token_id)
            overrides.setdefault("eos_token_id", tokenizer.eos_token_id)
            overrides.setdefault("pad_token_id", tokenizer.pad_token_id)
        try:
            model_config = AutoConfig.for_model(cfg.arch, **overrides)
        except (ValueError, TypeError) as e:
            raise ConfigError(f"model.arch={cfg.arch!r} with config {overrides}: {e}") from e
        model = AutoModelForCausalLM.from_config(model_config)
        if dtype not in (None, "auto"):
            model = model.to(dtype)
    if cfg.lora is not None:
        model = _wrap_lora(model, cfg.lora)
    return model


def _wrap_lora(model, lora_cfg: LoraOptions):
    try:
        from peft import LoraConfig, TaskType, get_peft_model
    except ImportError:
        raise ConfigError(
            "model.lora needs PEFT: pip install 'aegis-ckpt[lora]' (or pip install peft)"
        ) from None
    lora = LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=lora_cfg.r,
        lora_alpha=lora_cfg.alpha,
        lora_dropout=lora_cfg.dropout,
        target_modules=lora_cfg.target_modules,
    )
    try:
        return get_peft_model(model, lora)
    except ValueError as e:
        raise ConfigError(f"model.lora: {e}") from e


def count_parameters(model) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable
