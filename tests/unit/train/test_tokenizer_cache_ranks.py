"""The ranks of one run start together on a fresh output dir and all build the tokenizer: none of them may delete
or replace the cache folder another one is writing (a ``FileNotFoundError`` or a failed rename killed one rank
before), and all of them end with the same tokenizer. Writing the cache is made slow, and the second rank starts
while the first is still writing, so that a rank that does not wait for the other fails every time."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from testenv import REPO_ROOT, subprocess_env

BUILD = """
import hashlib, sys, time
from pathlib import Path
from aegis_ckpt.train.builders import build_tokenizer
from aegis_ckpt.train.config import ModelConfig, TokenizerConfig
from transformers import PreTrainedTokenizerFast
out, start = Path(sys.argv[1]), float(sys.argv[2])
save = PreTrainedTokenizerFast.save_pretrained
def slow_save(self, *args, **kwargs):
    result = save(self, *args, **kwargs)
    time.sleep(2.0)  # the cache is being written: a slow disk
    return result
PreTrainedTokenizerFast.save_pretrained = slow_save
texts = [f"document {i} " + "the quick brown fox jumps over the lazy dog " * (i % 7 + 1) for i in range(400)]
time.sleep(max(0.0, start - time.time()))
tok = build_tokenizer(TokenizerConfig(vocab_size=600), ModelConfig(), texts, out)
print(hashlib.sha256(tok.backend_tokenizer.to_str().encode()).hexdigest())
"""


@pytest.mark.slow
def test_ranks_building_the_tokenizer_cache_at_once_all_succeed_with_one_tokenizer(tmp_path):
    out = tmp_path / "run"
    start = time.time() + 8.0  # after the interpreters have imported transformers
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", BUILD, str(out), str(start + 1.0 * rank)],
            env=subprocess_env(),
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(2)
    ]
    results = [p.communicate(timeout=240) for p in procs]
    for proc, (_, stderr) in zip(procs, results, strict=True):
        assert proc.returncode == 0, stderr[-3000:]
    assert len({stdout.strip() for stdout, _ in results}) == 1
    assert (out / "tokenizer" / "tokenizer.json").is_file()
    assert not list(out.glob(".tokenizer.tmp-*"))
