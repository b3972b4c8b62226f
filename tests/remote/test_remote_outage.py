"""The S3 server goes away in the middle of an upload and comes back later: training never waits for it (steps
go on while uploads are pending), the outage is reported in one clear log line, uploads resume by themselves
once the server answers, and ``aegis-ckpt status`` shows the remote side."""

from __future__ import annotations

import logging

import pytest
from remotelib import assert_no_secret, remote_steps
from tinylib import ClockTicker, SleepPerStep
from transformers import TrainerCallback

from aegis_ckpt import AegisCheckpointCallback
from aegis_ckpt.cli import main as cli_main

pytestmark = pytest.mark.slow


class Outage(TrainerCallback):
    """Stops the server once an upload of checkpoint-10 is in flight (held by the server), starts it again at
    ``back_at``; records how many uploads were pending at each step end in between."""

    def __init__(self, server, aegis: AegisCheckpointCallback, *, down_at: int, back_at: int):
        self.server, self.aegis = server, aegis
        self.down_at, self.back_at = down_at, back_at
        self.pending_while_down: list[int] = []

    def on_step_end(self, args, state, control, **kwargs):
        step = state.global_step
        if step == self.down_at:
            assert self.server.held.wait(timeout=60), "the upload of checkpoint-10 never started"
            self.server.stop()
            self.server.release()
        elif self.down_at < step < self.back_at:
            self.pending_while_down.append(self.aegis.mirror.pending)
        elif step == self.back_at:
            self.server.start()


def test_server_stopped_mid_upload_and_restarted(
    tmp_path, make_trainer, fake_clock, s3_server, bucket_url, s3, caplog, capsys
):
    caplog.set_level(logging.INFO, logger="aegis_ckpt")
    s3_server.hold_uploads(r"/checkpoint-10/")  # the upload of step 10 hangs until the server goes down
    cb = AegisCheckpointCallback(
        save_interval_sec=4.5, max_keep=3, clock=fake_clock, async_save=False, remote_url=bucket_url
    )
    outage = Outage(s3_server, cb, down_at=11, back_at=17)
    trainer = make_trainer(
        tmp_path, callbacks=[ClockTicker(fake_clock, 1.0), SleepPerStep(0.2), cb, outage], max_steps=20
    )
    try:
        trainer.train()
    finally:
        s3_server.release()
        if s3_server._server is None:
            s3_server.start()

    assert trainer.state.global_step == 20
    # The held upload was released by this test at step 11, from the training thread: had a commit waited for
    # its upload, training would never have got there and the hold would have expired instead.
    assert not s3_server.hold_expired
    # Training went on while the uploads could not: every step end during the outage saw them pending.
    assert len(outage.pending_while_down) == 5 and min(outage.pending_while_down) >= 1
    failures = [
        r for r in caplog.records if r.name == "aegis_ckpt.remote.mirror" and r.levelno == logging.WARNING
    ]
    assert len([r for r in failures if "failed" in r.getMessage()]) == 1, caplog.text
    assert len([r for r in failures if "answers again" in r.getMessage()]) == 1, caplog.text
    # Uploads resumed: the final checkpoint is there with its manifest, and no copy without one is left (step 10
    # was either completed by a retry or, cut off, replaced by a newer one and pruned).
    steps = remote_steps(s3, bucket_url)
    assert steps[20] is True and all(steps.values()), steps

    assert cli_main(["status", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "newest remote step 20, 0 upload(s) pending" in out
    assert "Remote error: checkpoint-" in out  # the outage stays visible after recovery
    assert_no_secret(caplog.text, out, folders=(tmp_path,))
