"""One directory lives through every kind of event (saves, retention, an exception, a power loss, a damaged
folder, a signal, a crash, an interrupted save, the finish); its audit log must record each kind, parse as JSON
lines, and hold nothing but event metadata."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from aegis_ckpt import EnhancedAutoCheckpointManager
from aegis_ckpt.options import CheckpointOptions
from aegis_ckpt.runstate.lease import run_record_path
from aegis_ckpt.runstate.start import RESUME_CRASH, RESUME_POWER_LOSS
from aegis_ckpt.storage.audit import AUDIT_EVENTS, read_audit
from aegis_ckpt.system.boot import current_boot_id

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
if str(SCRIPTS) not in sys.path:
    sys.path.insert(0, str(SCRIPTS))

import custom_loop  # noqa: E402

pytestmark = pytest.mark.slow

ALLOWED_FIELDS = {
    "event", "time_unix", "time", "pid", "step", "reason", "lost_sec", "lost_steps", "downtime_sec", "path",
    "verify_sec", "write_sec", "files", "bytes", "tag", "commit_sec", "duration_sec", "digest", "xxh3_128", "sha256", "error",
    "moved_to", "old_interval_sec", "new_interval_sec", "signum", "checkpoint_saved", "detail",
}  # fmt: skip


@pytest.fixture(autouse=True)
def quiet_aegis_logger():
    pkg = logging.getLogger("aegis_ckpt")
    saved = (pkg.handlers[:], pkg.propagate, pkg.level)
    pkg.handlers[:], pkg.propagate = [], True
    yield
    pkg.handlers[:], pkg.propagate, pkg.level = saved


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def previous_process_died(out: Path, *, boot_id: str) -> None:
    """Rewrite the last session as one that never wrote its exit record."""
    record = json.loads(run_record_path(out).read_text())
    record["session"].update(state="running", exit=None, pid=dead_pid(), boot_id=boot_id)
    run_record_path(out).write_text(json.dumps(record))


def train_steps(ckpt, model, data, optimizer, n: int) -> None:
    for _ in range(n):
        i = ckpt.global_step % 12
        batch = data[i * 4 : i * 4 + 4]
        model(input_ids=batch, labels=batch).loss.backward()
        with ckpt.unsafe():
            optimizer.step()
            optimizer.zero_grad()
            ckpt.step(ckpt.global_step + 1, epoch=0)


def test_every_event_kind_is_recorded_and_nothing_else(tmp_path):
    out = tmp_path / "run"
    model, tokenizer, data = custom_loop.build()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    # every step is due, and the measured save cost pushes the adaptive interval up: "interval" events
    options = CheckpointOptions(save_interval_sec=0.001, min_interval_sec=0.0005, max_keep=2, adaptive=True)

    with pytest.raises(ZeroDivisionError), EnhancedAutoCheckpointManager(out, options=options) as ckpt:
        ckpt.start(model, tokenizer, optimizer=optimizer)
        train_steps(ckpt, model, data, optimizer, 5)
        raise ZeroDivisionError("loss scale")  # between steps: saved, then re-raised

    previous_process_died(out, boot_id="an-earlier-boot")
    (
        out / "checkpoint-999"
    ).mkdir()  # an interrupted save of the dead process: quarantined by the resume scan
    (out / "checkpoint-999" / "optimizer.pt").write_bytes(b"partial")
    ckpt = EnhancedAutoCheckpointManager(out, options=options)
    assert ckpt.run_start.kind == RESUME_POWER_LOSS
    assert ckpt.start(model, tokenizer, optimizer=optimizer)["step"] == 5
    os.kill(os.getpid(), signal.SIGTERM)  # the handler only sets a flag ...
    with pytest.raises(SystemExit) as stop:
        train_steps(ckpt, model, data, optimizer, 1)  # ... the next safe point saves and exits
    assert stop.value.code == 128 + signal.SIGTERM

    previous_process_died(out, boot_id=current_boot_id())
    interrupted = out / ".aegis" / "staging" / "step-7"
    interrupted.mkdir(parents=True)
    (interrupted / "model.safetensors").write_bytes(b"half")
    with EnhancedAutoCheckpointManager(out, options=options) as ckpt:
        assert ckpt.run_start.kind == RESUME_CRASH
        assert ckpt.start(model, tokenizer, optimizer=optimizer)["step"] == 6
        train_steps(ckpt, model, data, optimizer, 2)
        ckpt.finish()

    log_path = out / ".aegis" / "audit.jsonl"
    result = read_audit(log_path)
    assert result.problems == []
    assert {e["event"] for e in result.events} == set(AUDIT_EVENTS)
    for event in result.events:
        assert set(event) <= ALLOWED_FIELDS, event
    text = log_path.read_text(encoding="utf-8")
    assert all(json.loads(line) for line in text.splitlines())
    assert text.isascii()
    assert "tiny corpus" not in text and "loss scale" not in text  # no data text, no exception messages
    assert "dropped" not in text  # nothing unsuitable was even offered to the log
    commits = [e for e in result.events if e["event"] == "commit"]
    assert all(
        c["digest"] == "xxh3_128" and c["xxh3_128"] for c in commits
    )  # the default: the manifest's hash
    assert all(len(h) == 32 for c in commits for h in c["xxh3_128"].values())
