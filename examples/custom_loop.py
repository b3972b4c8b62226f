"""aegis-ckpt in a custom PyTorch training loop: ``RollingCheckpointManager`` (the seed API).

    python examples/custom_loop.py --output-dir runs/examples/custom_loop --max-steps 300

The manager commits a checkpoint (model, tokenizer, optimizer, scheduler, RNG, the loop's step) at the first safe
point (``ckpt_manager.step()``) after every ``--save-interval`` seconds, keeps the newest three, and
``load_latest()`` restores the newest intact one. Kill it and run the same command again to continue. The data
order is a function of the step, so the resumed loop sees exactly the batches it would have seen.
"""

from __future__ import annotations

import argparse
import logging

import torch
from tiny_setup import build_model, build_tokenizer, load_texts, token_blocks

from aegis_ckpt import RollingCheckpointManager

BATCH_SIZE = 8


def batch_for_step(blocks: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
    """The batch of optimizer step ``step`` (0-based): a fresh seeded shuffle every epoch."""
    per_epoch = len(blocks) // BATCH_SIZE
    epoch, i = divmod(step, per_epoch)
    order = torch.randperm(len(blocks), generator=torch.Generator().manual_seed(1000 + epoch))
    ids = blocks[order[i * BATCH_SIZE : (i + 1) * BATCH_SIZE]]
    return {"input_ids": ids, "labels": ids}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output-dir", default="runs/examples/custom_loop")
    p.add_argument("--max-steps", type=int, default=300)
    p.add_argument("--save-interval", type=float, default=30.0, help="seconds between rolling checkpoints")
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    texts = load_texts()
    tokenizer = build_tokenizer(texts)
    blocks = torch.tensor(token_blocks(texts, tokenizer))
    model = build_model(tokenizer)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 20))

    ckpt_manager = RollingCheckpointManager(a.output_dir, max_keep=3, save_interval_sec=a.save_interval)
    ckpt_manager.register_model(model, tokenizer, optimizer=optimizer, scheduler=scheduler)
    state = ckpt_manager.load_latest()  # None on a fresh start, else {"step": ..., ...}
    step = state["step"] if state else 0
    start = step
    print(f"resuming at step {step}" if state else "fresh start", flush=True)
    ckpt_manager.start_auto_save(model, tokenizer, "epoch")

    model.train()
    while step < a.max_steps:
        loss = model(**batch_for_step(blocks, step)).loss
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        step += 1
        ckpt_manager.step(step)  # a safe point: the state is consistent here, so a due save happens here
        if step % 50 == 0:
            print(f"step {step}: loss {loss.item():.3f}", flush=True)

    if step > start:
        ckpt_manager.save_checkpoint("manual_save")  # tagged: kept outside the rolling window
    print(f"done: step {step}, checkpoints in {a.output_dir}")


if __name__ == "__main__":
    main()
