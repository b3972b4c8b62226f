"""An unmodified Hugging Face training script with a bug: a plain ``Trainer``, no aegis-ckpt import, and a
dataset that raises on a bad sample in the middle of training.

    python plain_hf_failing.py OUTPUT_DIR FAIL_AT_STEP
"""

import sys

import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

BATCH = 8


class BrokenTokens(torch.utils.data.Dataset):
    """Random tokens; the sample read at position ``fail_after`` is "corrupt" and raises."""

    def __init__(self, n: int, fail_after: int):
        g = torch.Generator().manual_seed(1234)
        self.data = torch.randint(0, 128, (n, 32), generator=g)
        self.reads = 0
        self.fail_after = fail_after

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        self.reads += 1
        if self.reads > self.fail_after:
            raise ValueError(f"corrupt sample at index {i}: cannot decode record")
        return {"input_ids": self.data[i], "labels": self.data[i]}


def main() -> None:
    output_dir, fail_at_step = sys.argv[1], int(sys.argv[2])
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=128, n_positions=32))
    args = TrainingArguments(
        output_dir=output_dir,
        max_steps=100,
        per_device_train_batch_size=BATCH,
        report_to="none",
        use_cpu=True,
        seed=0,
        dataloader_num_workers=0,
        disable_tqdm=True,
        save_strategy="no",
    )
    dataset = BrokenTokens(512, fail_after=BATCH * (fail_at_step - 1))
    trainer = Trainer(model=model, args=args, train_dataset=dataset)
    trainer.train()


if __name__ == "__main__":
    main()
