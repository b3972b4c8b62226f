"""A hand-written training loop on the seed API, run as a real process by the tests.

Tiny GPT-2 (dropout on), AdamW, a linear warmup/decay scheduler, and a per-batch token corruption drawn from the
numpy and python RNGs, so an exact resume needs every piece of state the manager saves: weights, optimizer,
scheduler, all three RNGs and the loop position. The data order is a seeded permutation per epoch, so the loop
position (step) alone says which batch comes next.

    python custom_loop.py OUT --steps 200 --interval 0.2 [--api rolling|enhanced] [--slow-fsync SEC]

At the end the final weights are written to OUT/final_weights.safetensors (outside the checkpoint machinery).
``--slow-fsync`` wraps the commit seam ``aegis_ckpt.storage.fsio.fsync_file`` with a delay, so that saves take long
enough for random kills to land inside them.
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
import time

import numpy as np
import torch

VOCAB = 128
SEQ = 16
BATCH = 4
SAMPLES = 48  # 12 steps per epoch


def build():
    from transformers import GPT2Config, GPT2LMHeadModel

    from aegis_ckpt.train.builders import train_bpe_tokenizer

    tokenizer = train_bpe_tokenizer(["a tiny corpus for a tiny tokenizer"] * 4, 260)
    torch.manual_seed(0)
    np.random.seed(1)
    random.seed(2)
    model = GPT2LMHeadModel(
        GPT2Config(
            n_layer=2, n_head=2, n_embd=32, vocab_size=VOCAB, n_positions=SEQ, bos_token_id=0, eos_token_id=0
        )
    )
    data = torch.randint(0, VOCAB, (SAMPLES, SEQ), generator=torch.Generator().manual_seed(7))
    return model, tokenizer, data


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--interval", type=float, default=0.2)
    p.add_argument("--api", choices=("rolling", "enhanced"), default="rolling")
    p.add_argument("--slow-fsync", type=float, default=0.0)
    p.add_argument("--step-sleep", type=float, default=0.0, help="extra seconds per step (a slower 'GPU')")
    ns = p.parse_args()

    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if ns.slow_fsync:
        import aegis_ckpt.storage.fsio as fsio

        real_fsync = fsio.fsync_file

        def slow_fsync(path):
            time.sleep(ns.slow_fsync)
            real_fsync(path)

        fsio.fsync_file = slow_fsync

    from safetensors.torch import save_model
    from transformers import get_linear_schedule_with_warmup

    from aegis_ckpt import EnhancedAutoCheckpointManager, RollingCheckpointManager

    model, tokenizer, data = build()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    scheduler = get_linear_schedule_with_warmup(optimizer, 10, ns.steps)
    steps_per_epoch = SAMPLES // BATCH

    if ns.api == "rolling":
        ckpt = RollingCheckpointManager(ns.out, max_keep=3, save_interval_sec=ns.interval)
        ckpt.register_model(model, tokenizer, optimizer=optimizer, scheduler=scheduler)
        state = ckpt.resume()
        ckpt.start_auto_save(model, tokenizer, "epoch")
    else:
        ckpt = EnhancedAutoCheckpointManager(ns.out, max_keep=3, save_interval_sec=ns.interval)
        state = ckpt.start(model, tokenizer, optimizer=optimizer, scheduler=scheduler, tag="epoch")
        if ckpt.is_finished:
            print("LOOP: already finished, nothing to do", flush=True)
    step = state["step"] if state else 0
    print(f"LOOP: starting at step {step}", flush=True)
    model.train()
    while step < ns.steps:
        epoch, pos = divmod(step, steps_per_epoch)
        order = torch.randperm(SAMPLES, generator=torch.Generator().manual_seed(1000 + epoch))
        labels = data[order[pos * BATCH : (pos + 1) * BATCH]]
        ids = labels.clone()
        corrupt = torch.from_numpy(np.random.rand(*ids.shape) < 0.1)
        ids[corrupt] = random.randrange(VOCAB)
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        with ckpt.unsafe():
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            step += 1
            ckpt.step(step, epoch=epoch)  # counted here, acted on (saved) at the end of the block
        if ns.step_sleep:
            time.sleep(ns.step_sleep)
    ckpt.finish()
    save_model(model, f"{ns.out}/final_weights.safetensors")
    print(f"LOOP: finished at step {step}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
