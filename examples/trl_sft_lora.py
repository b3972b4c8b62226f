"""aegis-ckpt with TRL's ``SFTTrainer`` and a LoRA adapter (PEFT).

    python examples/trl_sft_lora.py --output-dir runs/examples/sft_lora --max-steps 200

Checkpoints hold the adapter in PEFT's layout (``adapter_model.safetensors``, ``adapter_config.json``) with the
optimizer, scheduler and RNG state; a restart resumes the adapter and its optimizer exactly. With a real model,
pass its Hub id as ``model=`` (e.g. ``"Qwen/Qwen2.5-0.5B"``) and drop ``processing_class``.
Needs ``pip install trl peft`` (both in the ``dev`` extra).
"""

from __future__ import annotations

import argparse
import logging

from datasets import Dataset
from peft import LoraConfig
from tiny_setup import build_model, build_tokenizer, load_texts
from trl import SFTConfig, SFTTrainer

from aegis_ckpt import AegisCheckpointCallback, find_resume_checkpoint


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output-dir", default="runs/examples/sft_lora")
    p.add_argument("--max-steps", type=int, default=200)
    p.add_argument("--save-interval", type=float, default=30.0, help="seconds between rolling checkpoints")
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    texts = load_texts()
    tokenizer = build_tokenizer(texts)
    args = SFTConfig(
        output_dir=a.output_dir,
        max_steps=a.max_steps,
        per_device_train_batch_size=8,
        learning_rate=2e-3,
        max_length=128,
        logging_steps=20,
        save_strategy="no",
        report_to="none",
        bf16=False,  # TRL turns bf16 on by default; the tiny stand-in model trains in float32
    )
    trainer = SFTTrainer(
        model=build_model(tokenizer),
        args=args,
        train_dataset=Dataset.from_dict({"text": texts}),
        processing_class=tokenizer,
        peft_config=LoraConfig(
            r=8, lora_alpha=16, lora_dropout=0.05, target_modules=["c_attn"], task_type="CAUSAL_LM"
        ),
        callbacks=[AegisCheckpointCallback(save_interval_sec=a.save_interval, max_keep=3)],
    )
    trainer.train(resume_from_checkpoint=find_resume_checkpoint(a.output_dir))
    trainer.save_model(f"{a.output_dir}/final_adapter")  # the adapter only, as PEFT saves it
    print(f"done: step {trainer.state.global_step}, adapter in {a.output_dir}/final_adapter")


if __name__ == "__main__":
    main()
