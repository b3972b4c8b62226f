"""Full disks, for real: each test mounts a small file system (a 3 MiB tmpfs, a 20 MiB ext4 image) and trains
the tiny GPT-2 (widened so that one checkpoint is ~4.8 MiB) into it in a child process.

Invariants: a periodic save that does not fit is skipped with one line and training goes on; a final save that
does not fit ends the run with exit code 1 and a clear ``DiskFullError``; the process never aborts natively
(SIGABRT, exit 134, from torch's zip writer after a short write); nothing of a failed save stays behind (no
``checkpoint-*`` folder, no staging folder, nothing in quarantine); the previous committed checkpoint still
resumes, and the run finishes once space is free again.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from smallfs import small_fs

from aegis_ckpt import find_resume_checkpoint
from aegis_ckpt.storage.commit import is_committed
from aegis_ckpt.storage.store import CheckpointStore

pytestmark = pytest.mark.slow

WIDE = ["--width", "128"]  # n_embd 128: ~4.8 MiB per checkpoint (weights + AdamW state)


def _leftovers(out: Path) -> dict[str, list[str]]:
    aegis = out / ".aegis"
    return {
        "uncommitted": sorted(p.name for p in out.glob("checkpoint-*") if not is_committed(p)),
        "staging": sorted(p.name for p in (aegis / "staging").glob("*"))
        if (aegis / "staging").is_dir()
        else [],
        "quarantine": [r["path"] for r in CheckpointStore(out).quarantined()],
    }


def _no_native_abort(result) -> None:
    assert result.returncode not in (134, -signal.SIGABRT), result.stderr[-3000:]
    assert "terminate called" not in result.stderr and "c10::Error" not in result.stderr, result.stderr[
        -3000:
    ]


def test_nothing_fits_on_3_mib(tmp_path, run_py):
    """A checkpoint bigger than the whole file system: the periodic save at step 3 is skipped (one line), the
    final one at step 6 is refused before a byte is written, exit code 1; the disk stays empty."""
    with small_fs(tmp_path / "fs3", 3) as fs:
        out = fs / "out"
        result = run_py("train_diskfull.py", ["--output-dir", out, *WIDE, "--max-steps", "6"])
        _no_native_abort(result)
        assert result.returncode == 1, result.stderr[-3000:]
        skipped = [line for line in result.stderr.splitlines() if "Skipped the interval checkpoint" in line]
        assert len(skipped) == 1 and "step 3" in skipped[0] and "free on" in skipped[0], result.stderr[-3000:]
        assert "DiskFullError: The final checkpoint of step 6 does not fit" in result.stderr
        assert "no emergency checkpoint" in result.stderr  # the exception path does not write it again
        assert not list(out.glob("checkpoint-*"))
        assert _leftovers(out) == {"uncommitted": [], "staging": [], "quarantine": []}
        events = [
            json.loads(line)["event"] for line in (out / ".aegis" / "audit.jsonl").read_text().splitlines()
        ]
        assert events.count("save_failed") == 2 and events[-1] == "exit"


@pytest.mark.parametrize("mode", ["sync", "thread"])
def test_disk_fills_while_saves_are_written_on_20_mib(tmp_path, run_py, mode):
    """The disk fills after checkpoint-3 committed, and the free-space checks are switched off, so the saves of
    step 6 and the final step 9 run out of space while they are written: by the Trainer's own ``torch.save``
    (sync), or by the background writer (thread or process). Training goes on past the periodic failure, the
    final one exits 1 without a native abort, nothing half-written stays, and checkpoint-3 resumes: with the
    ballast gone, a restart finishes the run."""
    flags = ["--sync"] if mode == "sync" else ["--writer", mode]
    with small_fs(tmp_path / "fs20", 20, kind="ext4") as fs:
        out = fs / "out"
        args = ["--output-dir", out, *WIDE, "--max-steps", "9", *flags]
        result = run_py(
            "train_diskfull.py",
            [*args, "--no-space-check", "--fill-at-step", "4", "--leave-free", str(1_000_000)],
        )
        _no_native_abort(result)
        assert result.returncode == 1, result.stderr[-3000:]
        assert "DiskFullError: The final checkpoint of step 9" in result.stderr, result.stderr[-3000:]
        not_committed = [line for line in result.stderr.splitlines() if "was NOT committed" in line]
        assert any("disk full" in line for line in not_committed), result.stderr[-3000:]
        assert [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-3"]
        assert _leftovers(out) == {"uncommitted": [], "staging": [], "quarantine": []}
        assert find_resume_checkpoint(out) == str(out / "checkpoint-3")

        (fs / "ballast").unlink()
        log = fs.parent / "restart.jsonl"
        again = run_py("train_diskfull.py", [*args, "--log", log])
        assert again.returncode == 0, again.stderr[-3000:]
        events = [json.loads(line) for line in log.read_text().splitlines()]
        assert events[0]["resume"] == str(out / "checkpoint-3") and events[-1] == {**events[-1], "step": 9}
        assert is_committed(out / "checkpoint-9")
