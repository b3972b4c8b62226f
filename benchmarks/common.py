"""Shared pieces of the benchmarks: model sizes, a Trainer factory, timing and memory probes, the machine.

Everything is measured side by side in the same process or run, so each result is a ratio or difference of
numbers taken under the same (shared, noisy) conditions. No benchmark is a test: nothing here asserts a time.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class ModelSize:
    name: str
    n_layer: int
    n_embd: int
    vocab: int

    def build(self, seed: int = 0):
        from transformers import GPT2Config, GPT2LMHeadModel

        torch.manual_seed(seed)
        config = GPT2Config(
            n_layer=self.n_layer,
            n_embd=self.n_embd,
            n_head=max(1, self.n_embd // 64),
            vocab_size=self.vocab,
            n_positions=128,
            bos_token_id=0,
            eos_token_id=0,
        )
        return GPT2LMHeadModel(config)


SIZES = {
    "10M": ModelSize("10M", 4, 256, 32000),
    "50M": ModelSize("50M", 8, 512, 50257),
    "125M": ModelSize("125M", 12, 768, 50257),
}


class RandomTokens(torch.utils.data.Dataset):
    def __init__(self, vocab: int, n: int = 4096, seq: int = 64, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(0, vocab, (n, seq), generator=g)

    def __len__(self) -> int:
        return self.ids.shape[0]

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def training_args(output_dir, **overrides):
    from transformers import TrainingArguments

    kw = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=1,
        learning_rate=1e-4,
        save_strategy="no",
        logging_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
        dataloader_num_workers=0,
        seed=0,
    )
    kw.update(overrides)
    return TrainingArguments(**kw)


def quiet() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


class PeakRSS:
    """Samples the memory this process and its children hold, on a thread; ``peak`` is the highest total seen.

    Total = this process's resident set (which includes the shared-memory snapshot buffers it filled) + the
    unique set of each child (a writer process: its own heap and imports, not the pages it shares with us)."""

    def __init__(self, every_sec: float = 0.01):
        import psutil

        self._proc = psutil.Process()
        self.every_sec = every_sec
        self.peak = self._total()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _total(self) -> int:
        import psutil

        total = self._proc.memory_info().rss
        for child in self._proc.children(recursive=True):
            try:
                total += child.memory_full_info().uss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._total())
            time.sleep(self.every_sec)

    def __enter__(self) -> PeakRSS:
        self.baseline = self._total()
        self.peak = self.baseline
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._total())


def state_bytes(model, optimizer) -> int:
    from aegis_ckpt.trainer.asyncsave.saver import estimate_snapshot_bytes

    return estimate_snapshot_bytes(model, optimizer)


def write_fsync_bandwidth(folder: Path, size_bytes: int = 512 * 2**20) -> float:
    """Sequential write + fsync of one file, bytes per second (what a durable save is bound by)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "bandwidth.bin"
    chunk = os.urandom(16 * 2**20)
    started = time.perf_counter()
    with open(path, "wb") as f:
        written = 0
        while written < size_bytes:
            f.write(chunk)
            written += len(chunk)
        f.flush()
        os.fsync(f.fileno())
    seconds = time.perf_counter() - started
    path.unlink()
    return written / seconds


def direct_write_fsync_bandwidth(folder: Path, size_bytes: int = 512 * 2**20) -> float | None:
    """The same with ``O_DIRECT`` from a page-aligned buffer (no page cache), bytes per second; None where the
    platform or file system does not take ``O_DIRECT``. The asynchronous writer writes this way, so the disk's
    bandwidth for it is the better of the two."""
    import mmap

    if not hasattr(os, "O_DIRECT"):
        return None
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "bandwidth-direct.bin"
    chunk = mmap.mmap(-1, 16 * 2**20)
    chunk.write(os.urandom(len(chunk)))
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o644)
    except OSError:
        return None
    try:
        started = time.perf_counter()
        written = 0
        while written < size_bytes:
            written += os.write(fd, chunk)
        os.fsync(fd)
        seconds = time.perf_counter() - started
    except OSError:
        return None
    finally:
        os.close(fd)
        path.unlink()
        chunk.close()
    return written / seconds


def evict_from_page_cache(path: Path) -> None:
    """Drop a file's pages from the page cache (after it is on disk), so the next read is cold."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def evict_tree(folder: Path) -> None:
    for p in folder.rglob("*"):
        if p.is_file():
            evict_from_page_cache(p)


def cold_read_bandwidth(folder: Path) -> float:
    """Read every file of ``folder`` after evicting it from the page cache; bytes per second."""
    evict_tree(folder)
    total = 0
    buf = bytearray(16 * 2**20)
    started = time.perf_counter()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            with open(p, "rb", buffering=0) as f:
                while n := f.readinto(buf):
                    total += n
    return total / (time.perf_counter() - started)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def machine_description() -> str:
    import psutil

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        fs = (
            subprocess.run(["df", "-T", str(REPO)], capture_output=True, text=True)
            .stdout.splitlines()[-1]
            .split()[1]
        )
    except (OSError, IndexError):
        fs = "?"
    import transformers

    return (
        f"{os.cpu_count()} vCPU ({cpu}), {psutil.virtual_memory().total / 2**30:.0f} GiB RAM, {fs} filesystem, "
        f"no GPU; Python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}"
    )


def fsync_tree(folder: Path) -> None:
    """Flush every file of a checkpoint folder, then the folder and its parent: the Trainer's save made durable
    the plain way, the baseline the durable saves are compared with."""
    for p in folder.rglob("*"):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    for d in (folder, folder.parent):
        fd = os.open(d, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
