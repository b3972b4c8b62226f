"""`aegis-ckpt preflight`: one clear line per check, exit 2 on refusal, 3 when the run already finished.

The nearly-full drive comes from the `disk_usage` seam (and, where this machine lets root mount one, from a real
2 MiB tmpfs in a real subprocess); the GPU from the `probe_gpus` seam, since this machine has none.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections import namedtuple
from pathlib import Path

import pytest

from aegis_ckpt.cli import main as cli_main
from aegis_ckpt.errors import ConfigError
from aegis_ckpt.runstate.completion import mark_completed
from aegis_ckpt.storage.commit import commit_checkpoint
from aegis_ckpt.train import preflight
from aegis_ckpt.train.config import load_config

REPO = Path(__file__).resolve().parents[3]
TINY = REPO / "configs" / "tiny.yaml"
Usage = namedtuple("Usage", "total used free")
MIB = 1024**2


def args(tmp_path: Path, *more: str) -> list[str]:
    return [
        str(TINY),
        "--set",
        f"training.output_dir={tmp_path / 'run'}",
        *(x for m in more for x in ("--set", m)),
    ]


def preflight_cli(tmp_path: Path, capsys, *more: str) -> tuple[int, list[str]]:
    code = cli_main(["preflight", *args(tmp_path, *more)])
    return code, capsys.readouterr().out.splitlines()


def line_of(lines: list[str], name: str) -> str:
    (line,) = [x for x in lines if x.startswith("[preflight]") and f" {name} " in x]
    return line


def test_nearly_full_disk_is_refused_with_one_clear_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(
        preflight, "disk_usage", lambda path: Usage(10 * 1024**3, 10 * 1024**3 - 100 * MIB, 100 * MIB)
    )
    code, lines = preflight_cli(tmp_path, capsys)
    assert code == 2
    disk = line_of(lines, "disk")
    assert disk.startswith("[preflight] REFUSED  disk ")
    assert "only 100.00 MiB free" in disk and "need ~1." in disk and "x 6 (max_keep + 1)" in disk
    assert "lower checkpoint.max_keep" in disk
    assert lines[-1] == "[preflight] REFUSED (disk): training was not started"
    # the other checks are still reported
    assert line_of(lines, "output dir").startswith("[preflight] OK")
    # the need scales with max_keep: with a huge drive and max_keep 1 it passes
    monkeypatch.setattr(preflight, "disk_usage", lambda path: Usage(1, 0, 2 * 1024**3))
    code, lines = preflight_cli(tmp_path, capsys, "checkpoint.max_keep=1")
    assert code == 0 and "x 2 (max_keep + 1)" in line_of(lines, "disk")


def test_estimate_is_conservative_and_replaced_by_the_measured_size(tmp_path):
    """Estimated from the config before the first checkpoint (never below the real size), then measured from
    the newest committed checkpoint's manifest."""
    from aegis_ckpt.train.runner import run_training

    overrides = [
        f"training.output_dir={tmp_path / 'run'}",
        "training.max_steps=1",
        "training.logging_steps=1",
        "data.max_samples=20",
    ]
    cfg = load_config(TINY, overrides)
    estimate = preflight.estimate_sizes(cfg)
    assert estimate.source.startswith("estimated from the model config: 3.")
    run_training(cfg)
    measured = preflight.estimate_sizes(cfg)
    assert measured.source.startswith("measured: committed checkpoint-1 holds")
    assert measured.checkpoint_bytes <= estimate.checkpoint_bytes < 1.5 * measured.checkpoint_bytes
    assert (
        measured.final_model_bytes == (tmp_path / "run" / "checkpoint-1" / "model.safetensors").stat().st_size
    )


def test_committed_checkpoints_count_as_available_space(tmp_path, monkeypatch):
    out = tmp_path / "run"
    ckpt = out / "checkpoint-5"
    ckpt.mkdir(parents=True)
    (ckpt / "model.safetensors").write_bytes(b"x" * MIB)
    (ckpt / "optimizer.pt").write_bytes(b"y" * 2 * MIB)
    commit_checkpoint(ckpt, step=5)
    cfg = load_config(
        TINY, [f"training.output_dir={out}", "checkpoint.max_keep=2", "preflight.disk_margin_gb=0"]
    )
    # projected: 3 MiB x 3 + 1 MiB final = 10 MiB; 3 MiB are already on the disk -> 7 MiB needed
    monkeypatch.setattr(preflight, "disk_usage", lambda path: Usage(1, 0, 7 * MIB))
    result = preflight.check_disk(cfg)
    assert result.status == "OK" and "need ~7.00 MiB" in result.message and "already used" in result.message
    monkeypatch.setattr(preflight, "disk_usage", lambda path: Usage(1, 0, 7 * MIB - 1))
    assert preflight.check_disk(cfg).status == "REFUSED"


def test_gpu_checks(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(preflight, "probe_gpus", lambda: [])
    code, lines = preflight_cli(tmp_path, capsys, "training.use_cpu=false")
    assert code == 0
    assert line_of(lines, "gpu").startswith(
        "[preflight] WARNING  gpu         no CUDA GPU visible: training runs on the CPU"
    )
    assert lines[-1] == "[preflight] passed with 1 warning(s): training can start"

    code, lines = preflight_cli(tmp_path, capsys, "training.use_cpu=false", "preflight.require_gpu=true")
    assert code == 2 and line_of(lines, "gpu").startswith(
        "[preflight] REFUSED  gpu         no CUDA GPU visible"
    )

    code, lines = preflight_cli(tmp_path, capsys, "preflight.require_gpu=true")  # tiny.yaml has use_cpu: true
    assert code == 2 and "training.use_cpu is true" in line_of(lines, "gpu")

    gpus = [
        preflight.GpuInfo(0, "NVIDIA H100", 70 * 1024**3, 80 * 1024**3),
        preflight.GpuInfo(1, "NVIDIA H100", 2 * 1024**3, 80 * 1024**3),
    ]
    monkeypatch.setattr(preflight, "probe_gpus", lambda: gpus)
    code, lines = preflight_cli(tmp_path, capsys, "training.use_cpu=false", "preflight.require_gpu=true")
    assert code == 0
    assert "GPU 0 NVIDIA H100: 70.00 GiB free of 80.00 GiB; GPU 1 NVIDIA H100: 2.00 GiB free" in line_of(
        lines, "gpu"
    )
    code, lines = preflight_cli(tmp_path, capsys, "training.use_cpu=false", "preflight.min_gpu_free_gb=75")
    assert code == 2 and "preflight.min_gpu_free_gb is 75" in line_of(lines, "gpu")

    def broken():
        raise RuntimeError("CUDA driver version is insufficient")

    monkeypatch.setattr(preflight, "probe_gpus", broken)
    code, lines = preflight_cli(tmp_path, capsys, "training.use_cpu=false")
    assert code == 0 and "probe failed: RuntimeError: CUDA driver version is insufficient" in line_of(
        lines, "gpu"
    )


def test_unwritable_output_dir_is_refused(tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    code = cli_main(["preflight", str(TINY), "--set", f"training.output_dir={a_file}"])
    lines = capsys.readouterr().out.splitlines()
    assert code == 2
    assert "is a file, not a directory" in line_of(lines, "output dir")
    assert lines[-1].startswith("[preflight] REFUSED (output dir")


def test_already_finished_exits_3_and_checks_nothing_else(tmp_path, capsys, monkeypatch):
    mark_completed(tmp_path / "run", step=360, checkpoint=None)
    monkeypatch.setattr(preflight, "disk_usage", lambda path: pytest.fail("no disk check for a finished run"))
    code, lines = preflight_cli(tmp_path, capsys)
    assert code == 3
    assert "already finished at step 360" in line_of(lines, "completion")
    assert lines[-1] == "[preflight] already finished: nothing to check or train"


@pytest.mark.parametrize(
    "override, message",
    [
        ("preflight.require_gpu=maybe", "preflight.require_gpu must be true or false"),
        ("preflight.disk_margin_gb=-1", "preflight.disk_margin_gb must be a number >= 0"),
        ("preflight.min_gpu_free_gb=0", "preflight.min_gpu_free_gb must be a number > 0 or null"),
        ("preflight.gpu=1", "unknown key(s) in preflight: gpu"),
        ("notify.webhook_url=ftp://x", "notify.webhook_url must be an http:// or https:// URL"),
        ("notify.sound=loud", "notify.sound must be true or false"),
    ],
)
def test_config_sections_are_validated(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(TINY, [override])
    assert message in str(e.value)


def test_empty_webhook_from_unset_env_var_means_none(monkeypatch):
    monkeypatch.delenv("AEGIS_WEBHOOK_URL", raising=False)
    cfg = load_config(TINY, ["notify.webhook_url=${AEGIS_WEBHOOK_URL:-}"])
    assert cfg.notify.webhook_url is None
    monkeypatch.setenv("AEGIS_WEBHOOK_URL", "https://hooks.example.com/T000/secret")
    assert load_config(TINY, ["notify.webhook_url=${AEGIS_WEBHOOK_URL:-}"]).notify.webhook_url.endswith(
        "/secret"
    )


def _can_mount_tmpfs(target: Path) -> bool:
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    target.mkdir(parents=True, exist_ok=True)
    ok = (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(target)], capture_output=True
        ).returncode
        == 0
    )
    return ok


@pytest.mark.slow
def test_real_nearly_full_filesystem_is_refused_before_training(tmp_path):
    """A real 2 MiB filesystem, the real command in a real process (only where root may mount a tmpfs; the seam
    test above covers every machine)."""
    mnt = tmp_path / "small-disk"
    if not _can_mount_tmpfs(mnt):
        pytest.skip("cannot mount a tmpfs here (not root, or no CAP_SYS_ADMIN): covered by the seam test")
    try:
        env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "aegis_ckpt",
                "preflight",
                str(TINY),
                "--set",
                f"training.output_dir={mnt / 'run'}",
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert f"[preflight] REFUSED  disk        only 2.00 MiB free on {mnt / 'run'}" in proc.stdout
        assert "[preflight] REFUSED (disk): training was not started" in proc.stdout
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)
