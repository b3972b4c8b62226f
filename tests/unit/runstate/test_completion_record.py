"""The completion record that tells a restart (or autostart after a reboot) that the run already finished."""

from __future__ import annotations

from aegis_ckpt.runstate.completion import completion_path, mark_completed, read_completion


def test_completion_record_round_trip(tmp_path):
    assert read_completion(tmp_path) is None
    mark_completed(tmp_path, step=42, checkpoint=str(tmp_path / "checkpoint-42"))
    record = read_completion(tmp_path)
    assert record["step"] == 42 and record["checkpoint"].endswith("checkpoint-42")
    assert completion_path(tmp_path) == tmp_path / ".aegis" / "completed.json"


def test_unreadable_completion_record_counts_as_not_finished(tmp_path):
    completion_path(tmp_path).parent.mkdir(parents=True)
    completion_path(tmp_path).write_text('{"step": 4')
    assert read_completion(tmp_path) is None
    completion_path(tmp_path).write_text("[1, 2]")
    assert read_completion(tmp_path) is None
