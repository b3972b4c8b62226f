"""Real processes against the real S3 server on 127.0.0.1: a training process SIGKILLed in the middle of an
upload leaves a remote folder without a manifest, which nothing resumes from and the next upload completes;
``aegis-ckpt push`` and ``pull`` work through the real entry point. Credentials come from the environment and
appear in no output or file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from remotelib import assert_no_secret, remote_steps
from testenv import REPO_ROOT, subprocess_env

from aegis_ckpt import find_resume_checkpoint
from aegis_ckpt.cli import main as cli_main
from aegis_ckpt.remote.download import pull_newest
from aegis_ckpt.remote.location import RemoteLocation
from aegis_ckpt.storage.commit import verify_checkpoint
from aegis_ckpt.storage.store import CheckpointStore

pytestmark = pytest.mark.slow


def test_sigkill_during_upload_then_next_upload_completes_it(tmp_path, run_py, s3_server, bucket_url, s3):
    out = tmp_path / "run"
    root = bucket_url.removeprefix("s3://")
    args = ["--output-dir", out, "--max-steps", "10", "--save-interval", "1e6", "--remote-url", bucket_url]
    # Only the final checkpoint (step 10, the end of the first epoch) is saved; its optimizer.pt upload hangs on
    # the server side, so the process sits in the end-of-training wait for the upload when it is killed.
    s3_server.hold_uploads(r"/checkpoint-10/optimizer\.pt")
    try:
        first = run_py(
            "train_tiny.py",
            args,
            kill_after=lambda: (
                s3_server.held.is_set() and s3.exists(f"{root}/checkpoint-10/model.safetensors")
            ),
            poll_sec=0.2,
            timeout=180,
        )
    finally:
        s3_server.release()
    assert first.killed, first.stderr[-3000:]
    assert remote_steps(s3, bucket_url) == {10: False}  # files arrived, the manifest did not

    fresh = tmp_path / "fresh"
    folder, skipped = pull_newest(RemoteLocation(bucket_url), CheckpointStore(fresh))
    assert folder is None and skipped == [(10, "no manifest (its upload did not finish)")]
    assert find_resume_checkpoint(tmp_path / "fresh2", remote_url=bucket_url) is None

    # The same command again: the run is finished (nothing to train), but on start the mirror sees that the remote
    # lacks the newest local checkpoint and uploads it, manifest last.
    second = run_py("train_tiny.py", args, timeout=180)
    assert second.returncode == 0, second.stderr[-3000:]
    assert remote_steps(s3, bucket_url) == {10: True}  # completed: the same folder, now with its manifest
    assert find_resume_checkpoint(fresh, remote_url=bucket_url) == str(fresh / "checkpoint-10")
    assert_no_secret(first.stdout, first.stderr, second.stdout, second.stderr, folders=(out, fresh))


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "aegis_ckpt", *map(str, args)],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        cwd=REPO_ROOT,
        timeout=120,
    )


def test_push_and_pull_commands(tmp_path, committed_checkpoint, bucket_url, s3, capsys):
    local = tmp_path / "run"
    for step in (3, 6):
        committed_checkpoint(local, step)
    pushed = _cli("push", local, bucket_url, "--all")  # the real entry point, in a child process
    assert pushed.returncode == 0, pushed.stderr
    assert "checkpoint-3: uploaded" in pushed.stdout and "checkpoint-6: uploaded" in pushed.stdout
    assert remote_steps(s3, bucket_url) == {3: True, 6: True}

    elsewhere = tmp_path / "elsewhere"
    pulled = _cli("pull", bucket_url, elsewhere)
    assert pulled.returncode == 0, pulled.stderr
    assert Path(pulled.stdout.strip()) == elsewhere / "checkpoint-6"
    assert verify_checkpoint(elsewhere / "checkpoint-6").ok

    # The other cases through the same parser, in this process (quicker than a child each).
    assert cli_main(["push", str(local), bucket_url]) == 0
    assert cli_main(["pull", bucket_url, str(tmp_path / "older"), "--step", "3"]) == 0
    assert cli_main(["pull", bucket_url, str(tmp_path / "x"), "--option", "secret=abc"]) == 2  # refused
    assert cli_main(["pull", bucket_url + "-nothing-here", str(tmp_path / "y")]) != 0
    out = capsys.readouterr()
    assert "checkpoint-6: already in" in out.out and f"{tmp_path / 'older' / 'checkpoint-3'}" in out.out
    assert "credentials" in out.err
    assert_no_secret(pushed.stdout, pushed.stderr, pulled.stdout, pulled.stderr, out.out, out.err)
    assert_no_secret(folders=(local, elsewhere))
