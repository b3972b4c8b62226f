"""`aegis-ckpt train` as a user runs it: real processes, the shipped config (shrunk with --set), real kills."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from aegis_ckpt.cli import main as cli_main
from aegis_ckpt.storage import commit
from aegis_ckpt.storage.commit import is_committed
from aegis_ckpt.train import runner

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "tiny.yaml"
SMALL = [
    "--set",
    "model.config={n_layer: 2, n_head: 2, n_embd: 32}",
    "--set",
    "tokenizer.vocab_size=300",
    "--set",
    "data.block_size=32",
    "--set",
    "data.max_samples=400",
    "--set",
    "training.per_device_train_batch_size=4",
    "--set",
    "training.logging_steps=5",
    "--set",
    "training.warmup_steps=2",
]

pytestmark = pytest.mark.slow


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    env["HF_HUB_OFFLINE"] = "1"
    env["HF_DATASETS_OFFLINE"] = "1"
    return env


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "aegis_ckpt", *args],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=timeout,
    )


def final_weights(output_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(output_dir / "final_model" / "model.safetensors"))


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), f"tensor {name} differs"


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "does/not/exist.yaml"], "config file not found"),
        (["train", str(TINY), "--set", "checkpoint.max_keep=0"], "max_keep must be an integer >= 1"),
        (
            ["train", str(TINY), "--set", "checkpoint.save_interval_sec=0"],
            "save_interval_sec must be a number > 0",
        ),
        (["train", str(TINY), "--set", "training.max_stepz=3"], "unknown key(s) in training"),
        (["train", str(TINY), "--set", "oops"], "--set expects key=value"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, message, capsys):
    assert cli_main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("aegis-ckpt: error:") and message in err[0], err


def test_bad_output_dirs_and_malformed_yaml(tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    assert cli_main(["train", str(TINY), "--set", f"training.output_dir={a_file}"]) == 2
    assert "is a file, not a directory" in capsys.readouterr().err
    # /proc refuses new directories even for root, so this works where chmod-based tests do not.
    assert cli_main(["train", str(TINY), "--set", "training.output_dir=/proc/aegis-ckpt-test/run"]) == 2
    assert "cannot create output_dir" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {arch: gpt2\ntraining:\n  - x: [\n")
    assert cli_main(["train", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "not valid YAML at line" in err and "Traceback" not in err


def test_console_script_error_has_no_traceback(tmp_path):
    proc = run_cli("train", str(tmp_path / "missing.yaml"))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip() == f"aegis-ckpt: error: config file not found: {tmp_path / 'missing.yaml'}"


def test_train_finishes_then_says_already_finished(tmp_path):
    out = tmp_path / "run"
    proc = run_cli(
        "train",
        str(TINY),
        *SMALL,
        "--set",
        f"training.output_dir={out}",
        "--set",
        "training.max_steps=12",
        "--set",
        "checkpoint.save_interval_sec=0.5",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "training finished at step 12" in proc.stdout
    assert "Committed" in proc.stderr and "checkpoint-12" in proc.stderr
    assert (out / "final_model" / "model.safetensors").is_file()
    assert (out / "final_model" / "aegis_manifest.json").is_file()
    assert json.loads((out / ".aegis" / "completed.json").read_text())["step"] == 12
    again = run_cli(
        "train", str(TINY), *SMALL, "--set", f"training.output_dir={out}", "--set", "training.max_steps=12"
    )
    assert again.returncode == 0
    assert "already finished at step 12" in again.stdout
    assert "Starting a new run" not in again.stderr and "Continuing from" not in again.stderr


def test_killed_run_continues_to_identical_weights(tmp_path):
    common = [*SMALL, "--set", "training.max_steps=300", "--set", "checkpoint.save_interval_sec=0.3"]
    ref = tmp_path / "ref"
    proc = run_cli("train", str(TINY), *common, "--set", f"training.output_dir={ref}")
    assert proc.returncode == 0, proc.stderr[-3000:]

    out = tmp_path / "killed"
    cmd = [
        sys.executable,
        "-m",
        "aegis_ckpt",
        "train",
        str(TINY),
        *common,
        "--set",
        f"training.output_dir={out}",
    ]
    child = subprocess.Popen(cmd, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            committed = [p for p in out.glob("checkpoint-*") if (p / "aegis_manifest.json").exists()]
            if len(committed) >= 2:
                break
            if child.poll() is not None:
                pytest.fail("the run ended before it could be killed")
            time.sleep(0.05)
        else:
            pytest.fail("no committed checkpoint appeared")
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(30)
    assert not (out / ".aegis" / "completed.json").exists()

    resumed = run_cli("train", str(TINY), *common, "--set", f"training.output_dir={out}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Continuing from" in resumed.stderr
    assert_same_weights(final_weights(ref), final_weights(out))


def _make_local_hub_model(root: Path) -> Path:
    """A tiny Qwen2 model and tokenizer saved with save_pretrained: what a Hub download leaves on disk."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from aegis_ckpt.train.builders import train_bpe_tokenizer

    tokenizer = train_bpe_tokenizer(["local hub model text " * 50, "another line of words"], 300)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=128,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    torch.manual_seed(0)
    model_dir = root / "local-qwen2"
    Qwen2ForCausalLM(config).save_pretrained(str(model_dir))
    tokenizer.save_pretrained(str(model_dir))
    return model_dir


def test_aegis_v2_config_runs_with_local_model_lora_and_local_dataset(tmp_path):
    """The Hub-loading path of configs/aegis_v2.yaml (from_pretrained + LoRA + datasets.load_dataset), fed from
    local paths because this machine has no Hub access."""
    model_dir = _make_local_hub_model(tmp_path)
    text_file = tmp_path / "train.txt"
    text_file.write_text("\n".join(f"line {i} of the local corpus with a few words" for i in range(400)))
    out = tmp_path / "v2"
    proc = run_cli(
        "train",
        str(REPO / "configs" / "aegis_v2.yaml"),
        "--set",
        f"model.name_or_path={model_dir}",
        "--set",
        "model.dtype=float32",
        "--set",
        f"data.hf_dataset={{path: text, data_files: '{text_file}', split: train}}",
        "--set",
        "data.block_size=32",
        "--set",
        f"training.output_dir={out}",
        "--set",
        "training.max_steps=6",
        "--set",
        "training.gradient_accumulation_steps=1",
        "--set",
        "training.warmup_steps=1",
        "--set",
        "training.use_cpu=true",
        "--set",
        "checkpoint.save_interval_sec=0.5",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = out / "checkpoint-6"
    assert (ckpt / "adapter_model.safetensors").is_file(), sorted(p.name for p in ckpt.iterdir())
    manifest = json.loads((ckpt / "aegis_manifest.json").read_text())
    assert "adapter_model.safetensors" in manifest["files"] and "optimizer.pt" in manifest["files"]
    assert (out / "final_model" / "adapter_config.json").is_file()


def test_final_model_is_durable_before_the_run_is_recorded_complete(tmp_path, monkeypatch):
    """A power cut must never leave completed.json without a durable final_model/: the rename that puts
    final_model/ in place is followed by an fsync of the output directory, and only then is completion written."""
    out = tmp_path / "run"
    events: list[tuple[str, bool]] = []
    real_fsync_dir = commit.fsync_dir
    real_mark_completed = runner.mark_completed

    def fsync_dir(path):
        if Path(path) == out:
            events.append(("fsync output_dir", is_committed(out / "final_model")))
        return real_fsync_dir(path)

    def mark_completed(output_dir, **kw):
        events.append(("completed", is_committed(out / "final_model")))
        return real_mark_completed(output_dir, **kw)

    monkeypatch.setattr(commit, "fsync_dir", fsync_dir)
    monkeypatch.setattr(runner, "mark_completed", mark_completed)
    (out / "final_model").mkdir(parents=True)  # an older export of an interrupted finish is replaced
    (out / "final_model" / "stale.txt").write_text("old")

    code = cli_main(
        ["train", str(TINY), *SMALL, "--set", f"training.output_dir={out}", "--set", "training.max_steps=2"]
    )

    assert code == 0
    assert events[-1] == ("completed", True)
    durable = [i for i, event in enumerate(events) if event == ("fsync output_dir", True)]
    assert durable and durable[0] < len(events) - 1, events
    assert not (out / "final_model" / "stale.txt").exists()
    assert not (out / ".aegis" / "staging-final").exists()
    assert json.loads((out / ".aegis" / "completed.json").read_text())["step"] == 2
