"""aegis-ckpt under a multi-process launcher (torchrun or ``accelerate launch``): DDP with the plain Trainer.

    torchrun --standalone --nproc_per_node 2 examples/ddp_trainer.py --output-dir runs/examples/ddp
    accelerate launch --config_file examples/accelerate_2proc_cpu.yaml examples/ddp_trainer.py --output-dir runs/examples/ddp

The script is the same as a single-process one: every rank builds the Trainer, the callback agrees on each save
across ranks, every rank writes its part (``rng_state_<rank>.pth``), the main process commits one manifest for
all of them. ``kill`` of the launcher (or of any one worker) makes every rank commit the same step and exit 143.
Relaunch with the same number of processes to continue. Without GPUs the processes train on CPU over gloo.
"""

from __future__ import annotations

import argparse
import logging
import os

import torch
from tiny_setup import build_model, build_tokenizer, lm_dataset, load_texts
from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

from aegis_ckpt import AegisCheckpointCallback, find_resume_checkpoint


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output-dir", default="runs/examples/ddp")
    p.add_argument("--max-steps", type=int, default=200)
    p.add_argument("--save-interval", type=float, default=30.0, help="seconds between rolling checkpoints")
    a = p.parse_args()
    rank = os.environ.get("RANK", "0")
    logging.basicConfig(
        level=logging.INFO, format=f"[rank{rank}] %(asctime)s %(name)s %(levelname)s %(message)s"
    )

    on_cpu = not torch.cuda.is_available()
    args = TrainingArguments(  # sets up torch.distributed from the launcher's environment
        output_dir=a.output_dir,
        max_steps=a.max_steps,
        per_device_train_batch_size=8,
        learning_rate=1e-3,
        logging_steps=20,
        save_strategy="no",
        report_to="none",
        use_cpu=on_cpu,
        ddp_backend="gloo" if on_cpu else None,
        ddp_find_unused_parameters=False,
    )
    texts = load_texts()
    tokenizer = build_tokenizer(texts)
    trainer = Trainer(
        model=build_model(tokenizer),
        args=args,
        train_dataset=lm_dataset(texts, tokenizer),
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
        processing_class=tokenizer,
        callbacks=[AegisCheckpointCallback(save_interval_sec=a.save_interval, max_keep=3)],
    )
    # Rank 0 picks the checkpoint and broadcasts it: every rank resumes from the same one.
    trainer.train(resume_from_checkpoint=find_resume_checkpoint(a.output_dir))
    if args.process_index == 0:
        print(f"done: step {trainer.state.global_step}, world size {args.world_size}", flush=True)


if __name__ == "__main__":
    main()
