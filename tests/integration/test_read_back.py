"""Verified before it can cost an older checkpoint: a background save whose files on disk differ from what was
written (here: one byte of ``model.safetensors`` flipped after the write, the size unchanged, as a bad disk or
controller could do) is read back, refused and deleted before it is published, so retention never deletes the
older good checkpoint for it."""

from __future__ import annotations

import logging

from tinylib import ClockTicker

from aegis_ckpt import AegisCheckpointCallback, AsyncOptions, find_resume_checkpoint
from aegis_ckpt.storage.commit import is_committed
from aegis_ckpt.storage.directwrite import AlignedBuffer
from aegis_ckpt.trainer.asyncsave.hflayout import write_snapshot_files
from aegis_ckpt.trainer.asyncsave.saver import AsyncCheckpointWriter


def _writer_that_damages_step(step: int) -> AsyncCheckpointWriter:
    buffer = AlignedBuffer()

    def write(snapshot, folder, *, sha256):
        digests = write_snapshot_files(snapshot, folder, sha256=sha256, buffer=buffer)
        if folder.name.endswith(f"-{step}"):
            weights = folder / "model.safetensors"
            with open(weights, "r+b") as f:
                f.seek(weights.stat().st_size // 2)
                byte = f.read(1)
                f.seek(-1, 1)
                f.write(bytes([byte[0] ^ 0xFF]))
        return digests

    return AsyncCheckpointWriter(write=write)


def test_a_save_that_reads_back_wrong_never_costs_the_older_checkpoint(
    tmp_path, make_trainer, fake_clock, caplog
):
    cb = AegisCheckpointCallback(
        save_interval_sec=2.5,
        max_keep=1,
        save_on_train_end=False,
        clock=fake_clock,
        async_options=AsyncOptions(when_busy="wait"),  # step 6 saves even if step 3 is still being written
    )
    cb._async.writer = _writer_that_damages_step(
        6
    )  # async saves at steps 3 and 6; the one of step 6 is damaged
    trainer = make_trainer(tmp_path, callbacks=[ClockTicker(fake_clock, 1.0), cb], max_steps=7)
    with caplog.at_level(logging.ERROR, logger="aegis_ckpt"):
        trainer.train()
    assert any("does not match its manifest" in r.getMessage() for r in caplog.records)
    assert is_committed(tmp_path / "checkpoint-3")  # max_keep=1, yet kept: nothing newer counts
    assert not (tmp_path / "checkpoint-6").exists()
    assert not list((tmp_path / ".aegis" / "staging").iterdir())  # the damaged copy is deleted
    assert find_resume_checkpoint(tmp_path) == str(tmp_path / "checkpoint-3")
