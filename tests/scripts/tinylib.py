"""Tiny, deterministic training setup shared by the in-process tests and the subprocess scripts.

Both sides must build exactly the same model, data and arguments, or "bit-identical to an uninterrupted run"
would compare two different runs. Everything here is CPU-only and needs no Hugging Face Hub.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

# A tiny GPT-2 keeps a save (weights + AdamW state + RNG) well under a megabyte.
GPT2_KW = dict(n_layer=2, n_head=2, n_embd=32, vocab_size=128, n_positions=64, bos_token_id=0, eos_token_id=0)
SEQ_LEN = 16
NUM_SAMPLES = 40  # with batch size 4: 10 optimizer steps per epoch
MODEL_SEED = 1234
DATA_SEED = 4321


class FakeClock:
    """A settable monotonic clock to inject as ``AegisCheckpointCallback(clock=...)``."""

    def __init__(self, start: float = 1000.0):
        self.now = float(start)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a monotonic clock does not go back")
        self.now += seconds

    def set(self, now: float) -> None:
        self.now = float(now)


def quiet_and_single_threaded() -> None:
    """One intra-op thread: the same reduction order in every process, and no oversubscription on 2 cores.
    Also silence the per-save progress bars."""
    torch.set_num_threads(1)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def build_model(seed: int = MODEL_SEED):
    """A freshly initialised tiny GPT-2 (dropout left on, so resume must restore the RNG to match)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(**GPT2_KW))


class TinyLMDataset(torch.utils.data.Dataset):
    """Fixed random token sequences; labels equal inputs (causal LM)."""

    def __init__(self, num_samples: int = NUM_SAMPLES, seq_len: int = SEQ_LEN, seed: int = DATA_SEED):
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(0, GPT2_KW["vocab_size"], (num_samples, seq_len), generator=g)

    def __len__(self) -> int:
        return self.ids.shape[0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def training_args(output_dir: str | os.PathLike, **overrides):
    """TrainingArguments for a quiet, deterministic CPU run; ``overrides`` win."""
    from transformers import TrainingArguments

    kw = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=4,
        learning_rate=5e-3,
        max_steps=20,
        seed=42,
        save_strategy="no",
        logging_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
        dataloader_num_workers=0,
    )
    kw.update(overrides)
    return TrainingArguments(**kw)


def make_trainer(output_dir, callbacks=None, *, model=None, train_dataset=None, **args):
    from transformers import Trainer

    return Trainer(
        model=model if model is not None else build_model(),
        args=training_args(output_dir, **args),
        train_dataset=train_dataset if train_dataset is not None else TinyLMDataset(),
        callbacks=list(callbacks or []),
    )


def weights(model) -> dict[str, torch.Tensor]:
    """Detached CPU copies of every tensor of the model's state dict."""
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def save_weights(model, path: str | os.PathLike) -> None:
    """Write the final weights atomically (a kill while writing must not leave a half file)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(weights(model), tmp)
    os.replace(tmp, path)


def load_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


def weight_mismatches(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[str]:
    """Names of tensors that are not bit-identical (``torch.equal``), plus keys missing on either side."""
    bad = sorted(set(a) ^ set(b))
    bad += [k for k in sorted(set(a) & set(b)) if not torch.equal(a[k], b[k])]
    return bad


class SleepPerStep(TrainerCallback):
    """Sleep at every optimizer step begin: makes steps slow in wall-clock terms without changing the math."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def on_step_begin(self, args, state, control, **kwargs):
        if self.seconds > 0:
            time.sleep(self.seconds)


class StopAfterSave(TrainerCallback):
    """Stop training right after the save at ``step`` (place it after the aegis callback: it then runs after
    the commit). Simulates an interruption at a known, committed point."""

    def __init__(self, step: int):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


class StopAtStep(TrainerCallback):
    """Stop training at the end of ``step`` (place it after the aegis callback). A save our callback decided at
    that step still happens: the Trainer's synchronous save runs before the loop checks the stop flag, and an
    asynchronous one is published when training ends."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


class SaveRecorder(TrainerCallback):
    """Records, at every ``on_save``, the step and the ``checkpoint-*`` folders present (committed or not).

    Its position in the callback list matters: before the aegis callback it sees the output directory right
    after the Trainer wrote the folder (and ran its own rotation); after it, the state after commit + prune.
    """

    def __init__(self):
        self.saves: list[dict] = []

    def on_save(self, args, state, control, **kwargs):
        from aegis_ckpt.storage.commit import is_committed

        out = Path(args.output_dir)
        folders = sorted(p for p in out.iterdir() if p.name.startswith("checkpoint-")) if out.is_dir() else []
        self.saves.append(
            {
                "step": state.global_step,
                "present": [p.name for p in folders],
                "committed": [p.name for p in folders if is_committed(p)],
            }
        )

    @property
    def steps(self) -> list[int]:
        return [s["step"] for s in self.saves]


class ClockTicker(TrainerCallback):
    """Advances an injected fake clock at each optimizer step begin: ``seconds_per_step`` is a number or a
    function of the step about to run (1-based). Lets a test say exactly how much "wall-clock" time each step
    takes without sleeping."""

    def __init__(self, clock, seconds_per_step):
        self.clock = clock
        self.seconds_per_step = seconds_per_step

    def on_step_begin(self, args, state, control, **kwargs):
        dt = self.seconds_per_step
        self.clock.advance(dt(state.global_step + 1) if callable(dt) else dt)


class EventRecorder(TrainerCallback):
    """Records every callback event with the global step (like transformers' test EventRecorderCallback)."""

    EVENTS = (
        "on_init_end",
        "on_train_begin",
        "on_epoch_begin",
        "on_step_begin",
        "on_substep_end",
        "on_pre_optimizer_step",
        "on_optimizer_step",
        "on_step_end",
        "on_epoch_end",
        "on_evaluate",
        "on_predict",
        "on_save",
        "on_log",
        "on_prediction_step",
        "on_train_end",
    )

    def __init__(self):
        self.events: list[tuple[str, int]] = []
        for name in self.EVENTS:
            setattr(self, name, self._recorder(name))

    def _recorder(self, name):
        def record(args, state, control, **kwargs):
            self.events.append((name, state.global_step))

        return record
