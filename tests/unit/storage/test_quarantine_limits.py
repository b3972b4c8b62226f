"""Bounded quarantine: the pure selection (age limit, size cap, newest always kept), the trim at train begin,
and ``aegis-ckpt clean`` through the real entry point."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from testenv import subprocess_env

from aegis_ckpt import AegisCheckpointCallback
from aegis_ckpt.storage.layout import QUARANTINE_RECORD
from aegis_ckpt.storage.quarantine import DAY_SEC, QuarantinedFolder, select_expired


def folder(name: str, age_days: float, size: int, now: float = 1e9) -> QuarantinedFolder:
    return QuarantinedFolder(Path(name), now - age_days * DAY_SEC, size)


def names(selected) -> list[str]:
    return [f.path.name for f in selected]


def test_age_limit_and_size_cap_delete_oldest_first_and_keep_the_newest():
    folders = [folder("a", 40, 10), folder("b", 20, 10), folder("c", 5, 10), folder("d", 1, 50)]
    assert names(select_expired(folders, now=1e9, max_age_sec=30 * DAY_SEC, max_bytes=None)) == ["a"]
    assert names(select_expired(folders, now=1e9, max_age_sec=None, max_bytes=65)) == ["a", "b"]
    assert names(select_expired(folders, now=1e9, max_age_sec=None, max_bytes=1)) == ["a", "b", "c"]
    assert names(select_expired(folders[-1:], now=1e9, max_age_sec=0.0, max_bytes=0)) == []  # newest kept
    assert select_expired(folders, now=1e9, max_age_sec=None, max_bytes=None) == []


def quarantined(output_dir: Path, name: str, age_days: float) -> Path:
    path = output_dir / ".aegis" / "quarantine" / name
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(b"x" * 1000)
    moved = time.time() - age_days * DAY_SEC
    (path / QUARANTINE_RECORD).write_text(
        json.dumps({"moved_unix": moved, "reason": "test"}), encoding="utf-8"
    )
    return path


def test_train_begin_deletes_expired_quarantine(tmp_path, make_trainer):
    old = quarantined(tmp_path, "20250101T000000Z-checkpoint-5", age_days=45)
    recent = quarantined(tmp_path, "20260101T000000Z-checkpoint-7", age_days=2)
    make_trainer(tmp_path, callbacks=[AegisCheckpointCallback(save_on_train_end=False)], max_steps=1).train()
    assert not old.exists() and recent.exists()


def test_clean_command_empties_the_quarantine(tmp_path):
    kept = quarantined(tmp_path, "a-checkpoint-1", age_days=1)

    def clean(*flags: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "aegis_ckpt", "clean", str(tmp_path), *flags],
            env=subprocess_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )

    dry = clean("--dry-run")
    assert dry.returncode == 0 and "would delete 1 quarantined folder(s)" in dry.stdout and kept.exists()
    done = clean()
    assert done.returncode == 0 and "deleted 1 quarantined folder(s)" in done.stdout, done.stderr
    assert not kept.exists()
