"""A training run mirrors every committed checkpoint to S3 (a real S3 server on 127.0.0.1, through s3fs); a
fresh output directory on "another machine" resumes from the remote copy and finishes with weights
bit-identical to an uninterrupted run. Remote retention keeps the newest copies."""

from __future__ import annotations

import logging

import pytest
import tinylib
from remotelib import assert_no_secret, committed_steps, remote_steps
from tinylib import ClockTicker, StopAtStep

from aegis_ckpt import AegisCheckpointCallback, find_resume_checkpoint
from aegis_ckpt.remote.mirror import read_remote_status

pytestmark = pytest.mark.slow


def test_mirrored_run_resumes_on_a_fresh_machine(
    tmp_path, make_trainer, fake_clock, reference_weights, bucket_url, s3, caplog
):
    caplog.set_level(logging.INFO, logger="aegis_ckpt")
    first = tmp_path / "machine-a"
    cb = AegisCheckpointCallback(
        save_interval_sec=4.5, max_keep=5, clock=fake_clock, async_save=False, remote_url=bucket_url
    )
    trainer = make_trainer(first, callbacks=[ClockTicker(fake_clock, 1.0), cb, StopAtStep(13)], max_steps=20)
    trainer.train()  # stops after step 13: the machine is lost after its last commit

    committed = committed_steps(first)
    assert len(committed) >= 2
    # Every committed checkpoint is mirrored, each with its manifest (train end waits for the last upload).
    assert remote_steps(s3, bucket_url) == {step: True for step in committed}
    status = read_remote_status(first)
    assert status["newest_remote_step"] == committed[-1] and status["pending_steps"] == []
    assert status["last_error"] is None

    second = tmp_path / "machine-b"  # does not exist yet
    resume = find_resume_checkpoint(second, remote_url=bucket_url)
    assert resume == str(second / f"checkpoint-{committed[-1]}")
    cb = AegisCheckpointCallback(save_interval_sec=1e6, remote_url=bucket_url, remote_max_keep=2)
    trainer = make_trainer(second, callbacks=[cb], max_steps=20)
    trainer.train(resume_from_checkpoint=resume)

    assert trainer.state.global_step == 20
    assert tinylib.weight_mismatches(tinylib.weights(trainer.model), reference_weights(max_steps=20)) == []
    # The final checkpoint is mirrored too, and remote retention keeps the newest two.
    assert remote_steps(s3, bucket_url) == {committed[-1]: True, 20: True}
    assert_no_secret(caplog.text, folders=(first, second))
