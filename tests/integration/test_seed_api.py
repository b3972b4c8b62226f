"""The seed API on a tiny model: the snippet as written, exact restore, tags, safe points, exceptions, signals."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch

import aegis_ckpt.storage.fsio as fsio_module
from aegis_ckpt import (
    EmergencyCheckpointManager,
    EnhancedAutoCheckpointManager,
    RollingCheckpointManager,
)
from aegis_ckpt.errors import CommitError, ConfigError
from aegis_ckpt.runstate.lease import read_run_record
from aegis_ckpt.runstate.start import RESUME_CLEAN
from aegis_ckpt.storage.audit import read_audit

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "tests" / "scripts"
if str(SCRIPTS) not in sys.path:
    sys.path.insert(0, str(SCRIPTS))

import custom_loop  # noqa: E402  (the same model/data as the subprocess runs)

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def aegis_logs(caplog):
    """Route aegis_ckpt records to caplog, and undo what an in-process CLI call does to the package logger (its
    handler writes to this test's captured stderr, which is closed afterwards)."""
    pkg = logging.getLogger("aegis_ckpt")
    saved = (pkg.handlers[:], pkg.propagate, pkg.level)
    pkg.handlers[:], pkg.propagate = [], True
    caplog.set_level(logging.INFO, logger="aegis_ckpt")
    yield caplog
    pkg.handlers[:], pkg.propagate, pkg.level = saved


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    e.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    return e


class Counter:
    """A registered extra state object (as a GradScaler or an EMA would be)."""

    def __init__(self):
        self.n = 0

    def state_dict(self):
        return {"n": self.n}

    def load_state_dict(self, state):
        self.n = state["n"]


def train_objects():
    from transformers import get_linear_schedule_with_warmup

    model, tokenizer, data = custom_loop.build()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = get_linear_schedule_with_warmup(optimizer, 2, 50)
    return model, tokenizer, data, optimizer, scheduler


def one_step(model, data, optimizer, scheduler, i: int) -> None:
    batch = data[(i * 4) % 48 : (i * 4) % 48 + 4]
    model(input_ids=batch, labels=batch).loss.backward()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()


def test_seed_snippet_runs_as_written_with_the_literal_windows_path(tmp_path):
    """On Linux "D:/webdataset/checkpoints/aegis_v2" is a relative path: the folder "D:" under the working dir."""
    snippet = textwrap.dedent(
        """
        from custom_loop import build  # the tiny GPT-2 and BPE tokenizer of the other tests
        model, tokenizer, _ = build()

        from aegis_ckpt import RollingCheckpointManager
        ckpt_manager = RollingCheckpointManager("D:/webdataset/checkpoints/aegis_v2")
        ckpt_manager.register_model(model, tokenizer)            # optimizer=, scheduler=, extra state optional
        ckpt_manager.start_auto_save(model, tokenizer, "epoch")
        ckpt_manager.save_checkpoint("manual_save")
        """
    )
    snippet_env = env()
    snippet_env["PYTHONPATH"] = str(SCRIPTS) + os.pathsep + snippet_env["PYTHONPATH"]
    proc = subprocess.run(
        [sys.executable, "-c", snippet],
        cwd=tmp_path,
        env=snippet_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "D:" / "webdataset" / "checkpoints" / "aegis_v2"
    ckpt = out / "checkpoint-0"
    manifest = json.loads((ckpt / "aegis_manifest.json").read_text())
    assert manifest["meta"]["tag"] == "manual_save" and manifest["meta"]["pinned"] is True
    for name in (
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "rng_state.pth",
        "aegis_loop_state.json",
    ):
        assert name in manifest["files"], name
    session = read_run_record(out)["session"]
    assert session["state"] == "exited" and session["exit"]["kind"] == "exited_without_close"


def test_resume_restores_every_registered_object(tmp_path):
    model, tokenizer, data, optimizer, scheduler = train_objects()
    counter = Counter()
    with RollingCheckpointManager(tmp_path, save_interval_sec=3600) as ckpt:
        ckpt.register_model(model, tokenizer, optimizer=optimizer, scheduler=scheduler, counter=counter)
        for i in range(3):
            one_step(model, data, optimizer, scheduler, i)
            counter.n += 1
            ckpt.step(epoch=0, position=i + 1)
        ckpt.save_checkpoint("after_three", keep=False)
        expected = {k: v.clone() for k, v in model.state_dict().items()}
        expected_lr = scheduler.get_last_lr()
        expected_random = (torch.rand(3), __import__("numpy").random.rand(), __import__("random").random())

    model2, _, _, optimizer2, scheduler2 = train_objects()
    counter2 = Counter()
    with RollingCheckpointManager(tmp_path) as ckpt2:
        assert ckpt2.run_start.kind == RESUME_CLEAN
        ckpt2.register_model(model2, optimizer=optimizer2, scheduler=scheduler2, counter=counter2)
        state = ckpt2.load_latest()
        assert state == {"step": 3, "epoch": 0, "position": 3}
        assert all(torch.equal(expected[k], v) for k, v in model2.state_dict().items())
        assert model2.lm_head.weight.data_ptr() == model2.transformer.wte.weight.data_ptr()  # still tied
        assert optimizer2.state_dict()["state"][0]["step"].item() == 3
        assert scheduler2.get_last_lr() == expected_lr and counter2.n == 3
        again = (torch.rand(3), __import__("numpy").random.rand(), __import__("random").random())
        assert torch.equal(again[0], expected_random[0]) and again[1:] == expected_random[1:]


def test_tagged_saves_are_kept_outside_the_rolling_window(tmp_path):
    model, tokenizer, data, optimizer, scheduler = train_objects()
    with RollingCheckpointManager(tmp_path, max_keep=2, save_interval_sec=3600) as ckpt:
        ckpt.register_model(model, tokenizer, optimizer=optimizer, scheduler=scheduler)
        for i in range(6):
            one_step(model, data, optimizer, scheduler, i)
            ckpt.step()
            ckpt.save_checkpoint("milestone" if i == 1 else "roll", keep=i == 1)
        # the same step again with a tag that must be kept: re-committed as pinned, not a second folder
        ckpt.save_checkpoint("end_of_epoch")
    names = sorted(p.name for p in tmp_path.glob("checkpoint-*"))
    assert names == ["checkpoint-2", "checkpoint-5", "checkpoint-6"]
    assert (
        json.loads((tmp_path / "checkpoint-6" / "aegis_manifest.json").read_text())["meta"]["tag"]
        == "end_of_epoch"
    )


def test_start_auto_save_registers_or_insists_on_the_same_model(tmp_path):
    model, tokenizer, *_ = train_objects()
    other, *_ = train_objects()
    with RollingCheckpointManager(tmp_path / "a") as ckpt:
        ckpt.start_auto_save(model, tokenizer, "epoch")  # nothing registered yet: registers them
        assert ckpt.save_checkpoint("x").is_dir()
    with RollingCheckpointManager(tmp_path / "b") as ckpt:
        ckpt.register_model(model, tokenizer)
        ckpt.start_auto_save(model, tokenizer, "epoch")
        with pytest.raises(ConfigError, match="different model than register_model"):
            ckpt.start_auto_save(other, tokenizer, "epoch")


def test_auto_save_happens_only_at_safe_points(tmp_path):
    model, tokenizer, data, optimizer, scheduler = train_objects()
    now = [0.0]
    with RollingCheckpointManager(tmp_path, save_interval_sec=10, clock=lambda: now[0]) as ckpt:
        ckpt.register_model(model, tokenizer, optimizer=optimizer, scheduler=scheduler)
        ckpt.start_auto_save(model, tokenizer, "epoch")
        for i in range(4):
            one_step(model, data, optimizer, scheduler, i)
            now[0] += 4.0
            with ckpt.unsafe():
                ckpt.step(i + 1)
                assert not (
                    tmp_path / f"checkpoint-{i + 1}"
                ).exists()  # due at t=12, but not inside the block
        assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-3"]
        with ckpt.unsafe(), pytest.raises(RuntimeError, match="save_checkpoint\\(\\) inside `with unsafe"):
            ckpt.save_checkpoint("oops")


def test_save_from_another_thread_waits_for_the_unsafe_block(tmp_path):
    model, tokenizer, *_ = train_objects()
    with RollingCheckpointManager(tmp_path) as ckpt:
        ckpt.register_model(model, tokenizer)
        saved = []
        saver = threading.Thread(target=lambda: saved.append(ckpt.save_checkpoint("from_thread")))
        with ckpt.unsafe():
            ckpt.step(7)
            saver.start()
            saver.join(0.5)
            assert saver.is_alive() and not list(tmp_path.glob("checkpoint-*"))
            ckpt.step(8)
        saver.join(30)
    assert saved == [tmp_path / "checkpoint-8"]


def test_a_loop_without_safe_points_gets_a_warning_not_a_checkpoint(tmp_path, aegis_logs):
    model, tokenizer, data, optimizer, scheduler = train_objects()
    with RollingCheckpointManager(tmp_path, save_interval_sec=0.1) as ckpt:
        ckpt.register_model(model, tokenizer, optimizer=optimizer, scheduler=scheduler)
        ckpt.start_auto_save(model, tokenizer, "epoch")
        deadline = time.monotonic() + 20
        i = 0
        while time.monotonic() < deadline and "No safe point" not in aegis_logs.text:
            one_step(model, data, optimizer, scheduler, i)  # never calls ckpt.step()
            i += 1
        assert "No safe point" in aegis_logs.text and "Call ckpt_manager.step()" in aegis_logs.text
        assert not list(tmp_path.glob("checkpoint-*"))


def test_exception_saves_when_consistent_and_always_reraises(tmp_path, aegis_logs, monkeypatch):
    model, tokenizer, data, optimizer, scheduler = train_objects()
    ckpt = RollingCheckpointManager(tmp_path / "a")
    ckpt.register_model(model, tokenizer, optimizer=optimizer, scheduler=scheduler)
    emergency = EmergencyCheckpointManager(ckpt)
    with pytest.raises(ValueError, match="bad batch"), emergency.protect():
        with ckpt.unsafe():
            one_step(model, data, optimizer, scheduler, 0)
            ckpt.step(1)
        raise ValueError("bad batch")  # between steps: the state is consistent
    assert (tmp_path / "a" / "checkpoint-1" / "aegis_manifest.json").is_file()
    events = [
        e for e in read_audit(tmp_path / "a" / ".aegis" / "audit.jsonl").events if e["event"] == "exception"
    ]
    assert events[-1]["reason"] == "ValueError" and events[-1]["checkpoint_saved"] is True
    assert "bad batch" not in (tmp_path / "a" / ".aegis" / "audit.jsonl").read_text()  # type only, no message
    assert read_run_record(tmp_path / "a")["session"]["exit"]["kind"] == "exception"

    ckpt = RollingCheckpointManager(tmp_path / "b")
    ckpt.register_model(model, tokenizer, optimizer=optimizer, scheduler=scheduler)
    with pytest.raises(RuntimeError, match="mid-update"), EmergencyCheckpointManager(ckpt).protect():
        with ckpt.unsafe():
            optimizer.step()
            raise RuntimeError("mid-update")  # the scheduler did not step: torn
    assert not list((tmp_path / "b").glob("checkpoint-*"))
    assert "not saving, because it interrupted a `with unsafe():` block" in aegis_logs.text

    def broken_fsync(path):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(fsio_module, "fsync_file", broken_fsync)
    ckpt = RollingCheckpointManager(tmp_path / "c")
    ckpt.register_model(model, tokenizer)
    with pytest.raises(KeyError, match="original"), EmergencyCheckpointManager(ckpt).protect():
        with ckpt.unsafe():
            ckpt.step(1)
        raise KeyError("original")
    assert "the emergency checkpoint failed too (CommitError" in aegis_logs.text
    assert not list((tmp_path / "c").glob("checkpoint-*"))
    monkeypatch.undo()
    with pytest.raises(CommitError):  # a manual save reports its failure to the caller
        monkeypatch.setattr(fsio_module, "fsync_file", broken_fsync)
        with RollingCheckpointManager(tmp_path / "d") as ckpt:
            ckpt.register_model(model, tokenizer)
            ckpt.save_checkpoint("manual")


def test_sigterm_saves_at_the_next_safe_point_and_exits_143(tmp_path):
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        str(SCRIPTS / "custom_loop.py"),
        str(out),
        "--api",
        "enhanced",
        "--steps",
        "100000",
        "--interval",
        "3600",
        "--step-sleep",
        "0.01",
    ]
    proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert "LOOP: starting at step 0" in proc.stdout.readline()
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "SIGTERM received: saving step" in err
    (ckpt,) = out.glob("checkpoint-*")
    assert (ckpt / "aegis_manifest.json").is_file()
    step = int(ckpt.name.split("-")[1])
    assert step > 0
    session = read_run_record(out)["session"]
    assert session["exit"]["kind"] == "signal" and session["exit"]["step"] == step
    events = read_audit(out / ".aegis" / "audit.jsonl").events
    assert [e["reason"] for e in events if e["event"] == "signal"] == ["SIGTERM"]

    with EnhancedAutoCheckpointManager(out) as again:
        assert again.run_start.kind == RESUME_CLEAN and "clean stop (signal)" in again.run_start.message
