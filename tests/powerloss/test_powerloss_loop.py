"""Power cuts during the saves of a custom training loop, during retention and during quarantine (guarantees 1, 5
and 9), checked crash state by crash state (see ``crashcheck``)."""

from __future__ import annotations

import json
import shutil

from crashcheck import Expect, check_recording
from recorder import Recorder
from scenarios import check_all, record_loop_saves

from aegis_ckpt.resume import find_resume_checkpoint
from aegis_ckpt.storage.layout import AEGIS_DIR, QUARANTINE_DIR


def test_power_cut_during_custom_loop_saves_run_state_and_pruning(tmp_path, scratch):
    """The first save of a run (run lease and run.json, store marker, a new audit log, the staging folder) and
    the next one, which prunes the first (max_keep=1)."""
    recordings = record_loop_saves(tmp_path / "out")
    first, second = (rec for rec, _ in recordings)
    assert any(op.dst == f"{AEGIS_DIR}/run.json" for op in first.ops if op.kind == "rename")
    assert any(op.kind == "create" and op.path == f"{AEGIS_DIR}/audit.jsonl" for op in first.ops)
    assert any(op.kind == "rename" and op.path == "checkpoint-1" for op in second.ops), "pruned"
    reports = check_all(recordings, scratch)
    for report in reports:
        print(report.summary())
        assert not report.problems, report.summary()
    assert sum(r.distinct for r in reports) >= 100


def test_power_cut_while_the_resume_scan_quarantines(tmp_path, scratch):
    """The resume scan moves an uncommitted and a damaged folder aside (rename, flush, record, audit line): a cut
    at any point leaves the committed checkpoint as the resume point, with its bytes."""
    out = tmp_path / "out"
    record_loop_saves(out)  # checkpoint-2 committed (checkpoint-1 pruned)
    (out / "checkpoint-3").mkdir()
    (out / "checkpoint-3" / "model.safetensors").write_bytes(b"half a save")
    shutil.copytree(out / "checkpoint-2", out / "checkpoint-4")
    weights = out / "checkpoint-4" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with Recorder(out) as rec:
        assert find_resume_checkpoint(out, verify="full") == str(out / "checkpoint-2")
        rec.mark("done")
    moved = sorted(p.name for p in (out / AEGIS_DIR / QUARANTINE_DIR).iterdir())
    assert len(moved) == 2, moved
    report = check_recording(rec, Expect(new_step=None, audit_commit=False), scratch)
    print(report.summary())
    assert not report.problems, report.summary()
    records = [
        json.loads((out / AEGIS_DIR / QUARANTINE_DIR / m / "aegis_quarantine.json").read_text())
        for m in moved
    ]
    assert all(r["reason"] for r in records)
