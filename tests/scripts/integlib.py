"""Tiny, deterministic training setups for the integrations users train with: TRL's SFTTrainer (with LoRA) and
DPOTrainer, a PEFT LoRA model under the plain Trainer, Seq2SeqTrainer, gradient accumulation, epoch-based runs,
and evaluation with ``load_best_model_at_end``.

Shared by the in-process reference runs of ``tests/integration/test_integrations.py`` and the child processes it
kills (``train_integration.py``), so that "bit-identical to an uninterrupted run" compares the same run. Every
model is built from a config and every tokenizer in code: no Hugging Face Hub access.
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass

import tinylib
import torch
from transformers import TrainerCallback

# A word-level vocabulary: a tokenizer built in code, identical in every process.
WORDS = (
    "the a one two three cat dog bird fish cow fox owl sat ran saw ate hid sang jumped slept swam big small red "
    "blue green old new fast slow on in under over near mat log tree hill pond barn box yes no good bad"
).split()
SPECIAL = ("<pad>", "<eos>", "<unk>")
PAD_ID, EOS_ID = 0, 1
TEXT_SEED = 2024
MODEL_SEED = tinylib.MODEL_SEED


def build_tokenizer():
    """A ``PreTrainedTokenizerFast`` with a fixed word-level vocabulary (pad 0, eos 1, unk 2)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate([*SPECIAL, *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>", bos_token="<eos>"
    )


def sentences(n: int, seed: int = TEXT_SEED, lo: int = 5, hi: int = 12) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi))) for _ in range(n)]


def build_gpt2(tokenizer, seed: int = MODEL_SEED):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(
        n_layer=2,
        n_head=2,
        n_embd=32,
        n_positions=64,
        vocab_size=len(tokenizer),
        bos_token_id=EOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
    )
    return GPT2LMHeadModel(config)


def lora_config(task_type: str = "CAUSAL_LM"):
    from peft import LoraConfig

    # Dropout on the LoRA path draws from the RNG: resume must restore it to match.
    return LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, target_modules=["c_attn"], task_type=task_type)


class PeakMetric(TrainerCallback):
    """Adds ``eval_peak`` to every evaluation: highest at ``peak_step``, so with ``metric_for_best_model="peak"``
    the best checkpoint is an old one that rolling retention alone would prune."""

    def __init__(self, peak_step: int):
        self.peak_step = peak_step

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if metrics is not None:
            metrics["eval_peak"] = -abs(state.global_step - self.peak_step)


@dataclass(frozen=True)
class Scenario:
    name: str
    max_steps: int
    """Optimizer steps of a full run (for epoch-based runs: what the epochs amount to)."""
    sigterm_step: int
    """The step during which the SIGTERM test delivers the signal."""


SCENARIOS = {
    s.name: s
    for s in (
        Scenario("sft_lora", max_steps=12, sigterm_step=4),
        Scenario("dpo", max_steps=10, sigterm_step=3),
        Scenario("peft_lora", max_steps=16, sigterm_step=5),
        Scenario("seq2seq", max_steps=12, sigterm_step=4),
        # 40 samples at batch size 2 = 20 micro-batches an epoch; accumulating 3 gives 7 optimizer steps an epoch,
        # the last one from 2 micro-batches only: 12 steps cross an epoch boundary inside an accumulation.
        Scenario("grad_accum", max_steps=12, sigterm_step=5),
        # No max_steps: 3 epochs of 10 steps, with the Trainer's own save at every epoch end.
        Scenario("epochs", max_steps=30, sigterm_step=14),
        # Evaluation every 4 steps, best metric at step 8, load_best_model_at_end, max_keep=1.
        Scenario("best", max_steps=16, sigterm_step=10),
    )
}
BEST_PEAK_STEP = 8


def build_trainer(name: str, output_dir, callbacks=(), **overrides):
    """The Trainer of scenario ``name`` writing to ``output_dir``; ``overrides`` go to its arguments."""
    return _BUILDERS[name](str(output_dir), list(callbacks), overrides)


def _common(output_dir: str, scenario_args: dict, overrides: dict) -> dict:
    """Arguments shared by every scenario, then the scenario's own, then the caller's overrides."""
    args = dict(
        output_dir=output_dir,
        per_device_train_batch_size=4,
        learning_rate=5e-3,
        seed=42,
        save_strategy="no",
        logging_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
        dataloader_num_workers=0,
    )
    args.update(scenario_args)
    args.update(overrides)
    return args


def _sft_lora(output_dir, callbacks, overrides):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    tokenizer = build_tokenizer()
    # bf16=False: TRL defaults to bf16 autocast; keep the CPU runs fast and exact.
    scenario = dict(max_steps=SCENARIOS["sft_lora"].max_steps, max_length=32, bf16=False)
    args = SFTConfig(**_common(output_dir, scenario, overrides))
    return SFTTrainer(
        model=build_gpt2(tokenizer),
        args=args,
        train_dataset=Dataset.from_dict({"text": sentences(48)}),
        processing_class=tokenizer,
        peft_config=lora_config(),
        callbacks=callbacks,
    )


def _dpo(output_dir, callbacks, overrides):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    tokenizer = build_tokenizer()
    prompts = sentences(32, seed=TEXT_SEED + 1, lo=3, hi=6)
    chosen = sentences(32, seed=TEXT_SEED + 2, lo=2, hi=5)
    rejected = sentences(32, seed=TEXT_SEED + 3, lo=2, hi=5)
    model = build_gpt2(tokenizer)
    # The policy is built from a config, so DPOTrainer cannot reload it by name: pass the frozen reference, a
    # copy of the initial weights (a restart rebuilds the same one; it is not part of the checkpoint).
    ref_model = copy.deepcopy(model)
    scenario = dict(max_steps=SCENARIOS["dpo"].max_steps, max_length=24, bf16=False)
    args = DPOConfig(**_common(output_dir, scenario, overrides))
    return DPOTrainer(
        model=model,
        ref_model=ref_model,
        args=args,
        train_dataset=Dataset.from_dict({"prompt": prompts, "chosen": chosen, "rejected": rejected}),
        processing_class=tokenizer,
        callbacks=callbacks,
    )


def _peft_lora(output_dir, callbacks, overrides):
    from peft import get_peft_model
    from transformers import Trainer, TrainingArguments

    model = get_peft_model(tinylib.build_model(), lora_config())
    args = TrainingArguments(
        **_common(output_dir, dict(max_steps=SCENARIOS["peft_lora"].max_steps), overrides)
    )
    return Trainer(model=model, args=args, train_dataset=tinylib.TinyLMDataset(), callbacks=callbacks)


class _Seq2SeqDataset(torch.utils.data.Dataset):
    """Copy-and-reverse pairs: the target is the source's words in reverse order."""

    def __init__(self, tokenizer, n: int, seed: int):
        self.items = []
        for text in sentences(n, seed=seed, lo=3, hi=8):
            source = tokenizer(text)["input_ids"] + [EOS_ID]
            target = tokenizer(" ".join(reversed(text.split())))["input_ids"] + [EOS_ID]
            self.items.append({"input_ids": source, "labels": target})

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


def _seq2seq(output_dir, callbacks, overrides):
    from transformers import (
        DataCollatorForSeq2Seq,
        Seq2SeqTrainer,
        Seq2SeqTrainingArguments,
        T5Config,
        T5ForConditionalGeneration,
    )

    tokenizer = build_tokenizer()
    torch.manual_seed(MODEL_SEED)
    model = T5ForConditionalGeneration(
        T5Config(
            vocab_size=len(tokenizer),
            d_model=32,
            d_kv=16,
            d_ff=64,
            num_layers=2,
            num_decoder_layers=2,
            num_heads=2,
            dropout_rate=0.1,
            pad_token_id=PAD_ID,
            eos_token_id=EOS_ID,
            decoder_start_token_id=PAD_ID,
        )
    )
    scenario = dict(
        max_steps=SCENARIOS["seq2seq"].max_steps,
        eval_strategy="steps",
        eval_steps=5,
        per_device_eval_batch_size=8,
        predict_with_generate=True,
        generation_max_length=10,
    )
    args = Seq2SeqTrainingArguments(**_common(output_dir, scenario, overrides))
    return Seq2SeqTrainer(
        model=model,
        args=args,
        train_dataset=_Seq2SeqDataset(tokenizer, 48, TEXT_SEED + 4),
        eval_dataset=_Seq2SeqDataset(tokenizer, 8, TEXT_SEED + 5),
        data_collator=DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100),
        processing_class=tokenizer,
        callbacks=callbacks,
    )


def _grad_accum(output_dir, callbacks, overrides):
    scenario = dict(
        max_steps=SCENARIOS["grad_accum"].max_steps,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=3,
    )
    return tinylib.make_trainer(output_dir, callbacks, **{**scenario, **overrides})


def _epochs(output_dir, callbacks, overrides):
    scenario = dict(max_steps=-1, num_train_epochs=3, save_strategy="epoch")
    return tinylib.make_trainer(output_dir, callbacks, **{**scenario, **overrides})


def _best(output_dir, callbacks, overrides):
    from transformers import Trainer

    scenario = dict(
        max_steps=SCENARIOS["best"].max_steps,
        eval_strategy="steps",
        eval_steps=4,
        save_strategy="steps",
        save_steps=4,
        load_best_model_at_end=True,
        metric_for_best_model="peak",
        greater_is_better=True,
        per_device_eval_batch_size=8,
    )
    args = tinylib.training_args(output_dir, **{**scenario, **overrides})
    return Trainer(
        model=tinylib.build_model(),
        args=args,
        train_dataset=tinylib.TinyLMDataset(),
        eval_dataset=tinylib.TinyLMDataset(num_samples=8, seed=99),
        callbacks=[PeakMetric(BEST_PEAK_STEP), *callbacks],
    )


_BUILDERS = {
    "sft_lora": _sft_lora,
    "dpo": _dpo,
    "peft_lora": _peft_lora,
    "seq2seq": _seq2seq,
    "grad_accum": _grad_accum,
    "epochs": _epochs,
    "best": _best,
}
