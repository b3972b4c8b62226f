"""An unmodified Hugging Face training script, as users write them: a plain ``Trainer``, no aegis-ckpt import,
``trainer.train()`` without ``resume_from_checkpoint``. ``aegis-ckpt run --inject`` must make it crash-safe.

    python plain_hf_train.py OUTPUT_DIR MAX_STEPS
"""

import sys

import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments


class RandomTokens(torch.utils.data.Dataset):
    def __init__(self, n: int, length: int, vocab: int):
        g = torch.Generator().manual_seed(1234)
        self.data = torch.randint(0, vocab, (n, length), generator=g)

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        return {"input_ids": self.data[i], "labels": self.data[i]}


def main() -> None:
    output_dir, max_steps = sys.argv[1], int(sys.argv[2])
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=128, n_positions=32))
    args = TrainingArguments(
        output_dir=output_dir,
        max_steps=max_steps,
        per_device_train_batch_size=8,
        learning_rate=1e-3,
        logging_steps=20,
        report_to="none",
        use_cpu=True,
        seed=0,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=RandomTokens(256, 32, 128))
    trainer.train()
    print(f"plain script done at global_step {trainer.state.global_step}", flush=True)


if __name__ == "__main__":
    main()
