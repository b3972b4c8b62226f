"""aegis-ckpt with a plain ``transformers.Trainer``: two lines added to an ordinary training script.

    python examples/plain_trainer.py --output-dir runs/examples/plain --max-steps 300

Kill it at any time (Ctrl+C, ``kill``, ``kill -9``, a power cut) and run the same command again: it continues from
the newest intact checkpoint. Ctrl+C or ``kill`` commit a checkpoint of the current step first (exit code 130 or
143); ``kill -9`` loses at most the work since the last commit (``--save-interval`` seconds).
"""

from __future__ import annotations

import argparse
import logging

from tiny_setup import build_model, build_tokenizer, lm_dataset, load_texts
from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

from aegis_ckpt import AegisCheckpointCallback, find_resume_checkpoint


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output-dir", default="runs/examples/plain")
    p.add_argument("--max-steps", type=int, default=300)
    p.add_argument("--save-interval", type=float, default=30.0, help="seconds between rolling checkpoints")
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    texts = load_texts()
    tokenizer = build_tokenizer(texts)
    args = TrainingArguments(
        output_dir=a.output_dir,
        max_steps=a.max_steps,
        per_device_train_batch_size=8,
        learning_rate=1e-3,
        logging_steps=20,
        save_strategy="no",  # aegis-ckpt saves on wall-clock time; a steps/epoch strategy is committed too
        report_to="none",
    )
    trainer = Trainer(
        model=build_model(tokenizer),
        args=args,
        train_dataset=lm_dataset(texts, tokenizer),
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
        processing_class=tokenizer,
        # Pass the callback here, not with add_callback(): then it can also save when an exception escapes.
        callbacks=[AegisCheckpointCallback(save_interval_sec=a.save_interval, max_keep=3)],
    )
    # None on a fresh start; otherwise the newest checkpoint that matches its manifest.
    trainer.train(resume_from_checkpoint=find_resume_checkpoint(a.output_dir))
    trainer.save_model(f"{a.output_dir}/final_model")
    print(f"done: step {trainer.state.global_step}, model in {a.output_dir}/final_model")


if __name__ == "__main__":
    main()
