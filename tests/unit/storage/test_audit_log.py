"""The audit log: JSON lines, content never serialised, torn last line tolerated."""

from __future__ import annotations

import json

import pytest
import torch

from aegis_ckpt.storage.audit import AUDIT_EVENTS, MAX_STRING_CHARS, AuditLog, read_audit


def test_lines_are_json_with_time_pid_step_reason(tmp_path):
    log = AuditLog.in_dir(tmp_path)
    log.append("start", step=0, reason="fresh")
    log.append("commit", step=5, reason="interval", sha256={"model.safetensors": "ab" * 32}, bytes=123)
    lines = (tmp_path / "audit.jsonl").read_text().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["event"] == "start" and first["step"] == 0 and first["reason"] == "fresh" and "time" in first
    assert second["sha256"] == {"model.safetensors": "ab" * 32} and second["bytes"] == 123


def test_values_that_could_carry_content_are_dropped(tmp_path):
    log = AuditLog.in_dir(tmp_path)
    secret = torch.tensor([1234.5678, 8765.4321])
    log.append(
        "save",
        step=1,
        weights=secret,
        raw=b"the training text",
        nested={"array": [secret]},
        long="x" * 5000,
    )
    text = (tmp_path / "audit.jsonl").read_text()
    event = json.loads(text)
    assert event["weights"] == "<dropped Tensor>" and event["raw"] == "<dropped bytes>"
    assert event["nested"] == {"array": ["<dropped Tensor>"]}
    assert len(event["long"]) <= MAX_STRING_CHARS + 3
    assert "1234" not in text and "training text" not in text


def test_unknown_event_is_a_programming_error(tmp_path):
    with pytest.raises(ValueError, match="unknown audit event"):
        AuditLog.in_dir(tmp_path).append("saved")
    assert "power_loss" in AUDIT_EVENTS and "quarantine" in AUDIT_EVENTS


def test_torn_last_line_is_skipped_and_reported(tmp_path):
    log = AuditLog.in_dir(tmp_path)
    log.append("start", step=0)
    log.append("save", step=1)
    with open(tmp_path / "audit.jsonl", "ab") as f:
        f.write(b'{"event":"commit","st')  # the process died in the middle of a write
    result = read_audit(tmp_path / "audit.jsonl")
    assert [e["event"] for e in result.events] == ["start", "save"]
    assert result.problems == ["line 3: torn last line (crash during append)"]
    log.append("resume", step=1)  # the next process starts a new line after the fragment
    result = read_audit(tmp_path / "audit.jsonl")
    assert [e["event"] for e in result.events] == ["start", "save", "resume"]
    assert result.problems == ["line 3: unreadable (a line torn by an earlier crash)"]


def test_missing_log_reads_as_empty(tmp_path):
    result = read_audit(tmp_path / "nope.jsonl")
    assert result.events == [] and result.problems == []
