"""Progress bars for large verifications and commits: shown above the size threshold on the main process,
never on a replica rank or with transformers' progress bars switched off."""

from __future__ import annotations

import pytest
from transformers.utils import logging as hf_logging

from aegis_ckpt.progress import MIN_BYTES_ENV
from aegis_ckpt.storage.commit import commit_checkpoint, verify_checkpoint


@pytest.fixture
def bars_on(monkeypatch):
    """The test session switches transformers' bars off (tinylib); switch them on, threshold 0 MB."""
    hf_logging.enable_progress_bar()
    monkeypatch.setenv(MIN_BYTES_ENV, "0")
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    yield
    hf_logging.disable_progress_bar()


def test_full_verify_and_commit_show_a_bar(tmp_path, plain_checkpoint, bars_on, capsys):
    folder = plain_checkpoint(tmp_path, 10)
    commit_checkpoint(folder, step=10, progress=True)
    assert "Committing checkpoint-10" in capsys.readouterr().err
    assert verify_checkpoint(folder, full=True).ok
    err = capsys.readouterr().err
    assert "Verifying checkpoint-10" in err and "B/s" in err


def test_no_bar_below_threshold_on_replicas_or_when_disabled(
    tmp_path, plain_checkpoint, bars_on, capsys, monkeypatch
):
    folder = plain_checkpoint(tmp_path, 10)
    commit_checkpoint(folder, step=10)  # asynchronous commits (background thread) never ask for a bar
    monkeypatch.setenv(MIN_BYTES_ENV, "512")
    assert verify_checkpoint(folder, full=True).ok
    monkeypatch.setenv(MIN_BYTES_ENV, "0")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert verify_checkpoint(folder, full=True).ok
    monkeypatch.delenv("LOCAL_RANK")
    hf_logging.disable_progress_bar()
    assert verify_checkpoint(folder, full=True).ok
    assert capsys.readouterr().err == ""
