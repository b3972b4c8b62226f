"""Stand-ins for your own model and data, so that every example runs anywhere in seconds with no download: a small
GPT-2 built from a config, a byte-level BPE tokenizer trained in code, and text from the shipped corpus
``data/tiny_corpus.txt``. Replace them with ``AutoModelForCausalLM.from_pretrained(...)``,
``AutoTokenizer.from_pretrained(...)`` and your dataset; nothing else in the examples changes.
"""

from __future__ import annotations

from pathlib import Path

CORPUS = Path(__file__).resolve().parents[1] / "data" / "tiny_corpus.txt"


def load_texts(n: int = 400) -> list[str]:
    """The first ``n`` paragraphs of the shipped corpus."""
    paragraphs = CORPUS.read_text(encoding="utf-8").split("\n\n")
    return [p.strip() for p in paragraphs if p.strip()][:n]


def build_tokenizer(texts: list[str], vocab_size: int = 512):
    from aegis_ckpt.train.builders import train_bpe_tokenizer

    return train_bpe_tokenizer(texts, vocab_size)  # deterministic: the same tokenizer after every restart


def build_model(tokenizer, n_positions: int = 128, seed: int = 0):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(
        n_layer=2,
        n_head=2,
        n_embd=64,
        n_positions=n_positions,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return GPT2LMHeadModel(config)


def token_blocks(texts: list[str], tokenizer, block_size: int = 64) -> list[list[int]]:
    """The texts tokenized, joined with EOS and cut into blocks of ``block_size`` tokens."""
    ids: list[int] = []
    for encoded in tokenizer(texts)["input_ids"]:
        ids += encoded + [tokenizer.eos_token_id]
    return [ids[i : i + block_size] for i in range(0, len(ids) - block_size + 1, block_size)]


def lm_dataset(texts: list[str], tokenizer, block_size: int = 64):
    """A ``datasets.Dataset`` of ``input_ids`` blocks for causal language modelling."""
    from datasets import Dataset

    return Dataset.from_dict({"input_ids": token_blocks(texts, tokenizer, block_size)})
