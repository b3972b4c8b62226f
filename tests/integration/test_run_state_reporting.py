"""Run state end to end: power loss reported on resume and by `aegis-ckpt status`, a second process refused,
and the Trainer callback writing the same lease, audit log and statistics as the custom-loop managers."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from aegis_ckpt import (
    AegisCheckpointCallback,
    EnhancedAutoCheckpointManager,
    RollingCheckpointManager,
    RunLockedError,
    find_resume_checkpoint,
)
from aegis_ckpt.cli import main as cli_main
from aegis_ckpt.policy import AdaptivePolicy
from aegis_ckpt.runstate.lease import read_run_record, run_record_path
from aegis_ckpt.runstate.start import RESUME_CLEAN, RESUME_POWER_LOSS
from aegis_ckpt.storage.audit import read_audit

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "tests" / "scripts"
if str(SCRIPTS) not in sys.path:
    sys.path.insert(0, str(SCRIPTS))

import custom_loop  # noqa: E402

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


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def short_run(out: Path, steps: int) -> None:
    model, tokenizer, data = custom_loop.build()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    with RollingCheckpointManager(out, save_interval_sec=3600) as ckpt:
        ckpt.register_model(model, tokenizer, optimizer=optimizer)
        for i in range(steps):
            batch = data[i * 4 : i * 4 + 4]
            model(input_ids=batch, labels=batch).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            ckpt.step(epoch=0)
            if i % 2:
                ckpt.save_checkpoint("roll", keep=False)


def test_power_loss_is_detected_reported_and_feeds_the_adaptive_policy(tmp_path, aegis_logs, capsys):
    out = tmp_path / "run"
    short_run(out, 4)
    # Turn the clean record into what a power cut leaves: still "running", written in an earlier boot by a process
    # that no longer exists, with its last heartbeat 40 s after the last commit, ten minutes ago.
    record = json.loads(run_record_path(out).read_text())
    s = record["session"]
    s.update(state="running", exit=None, boot_id="boot-before-the-power-cut", pid=dead_pid())
    s["started_unix"] -= 640
    s["last_commit_unix"] = time.time() - 640
    s["heartbeat_unix"] = s["last_commit_unix"] + 40
    s["step"] = s["last_commit_step"] + 25
    run_record_path(out).write_text(json.dumps(record))

    model, tokenizer, _ = custom_loop.build()
    with EnhancedAutoCheckpointManager(out, adaptive=True) as ckpt:
        assert ckpt.run_start.kind == RESUME_POWER_LOSS
        state = ckpt.start(model, tokenizer)
        assert state["step"] == 4
        policy = ckpt._engine.policy
        assert isinstance(policy, AdaptivePolicy) and policy.mtbf_sec is not None
    assert "POWER LOSS OR REBOOT detected" in aegis_logs.text
    assert "40 s to 70 s of training (at least 25 steps)" in aegis_logs.text

    events = read_audit(out / ".aegis" / "audit.jsonl").events
    (loss,) = [e for e in events if e["event"] == "power_loss"]
    assert loss["lost_sec"] == pytest.approx(40.0) and loss["lost_steps"] == 25
    assert loss["downtime_sec"] == pytest.approx(600, abs=30)
    assert [e["step"] for e in events if e["event"] == "resume"] == [4]

    capsys.readouterr()
    assert cli_main(["status", str(out)]) == 0
    text = capsys.readouterr().out
    assert "Power loss:" in text and "about 40 s (25 steps) lost, down 10.0 min" in text
    assert "1 power loss(es)" in text and "checkpoint-4" in text
    assert cli_main(["status", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["run"]["last_power_loss"]["lost_sec"] == pytest.approx(40.0)
    assert report["run"]["state"].startswith("stopped cleanly")
    assert report["resume_from"] == "checkpoint-4" and report["save_stats"]["saves"] == 2


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    e.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    return e


class TinyLM(torch.utils.data.Dataset):
    def __init__(self):
        self.ids = custom_loop.build()[2]

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def make_trainer(out: Path, callback, max_steps: int):
    from transformers import Trainer, TrainingArguments

    args = TrainingArguments(
        output_dir=str(out),
        max_steps=max_steps,
        per_device_train_batch_size=4,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        logging_strategy="no",
        disable_tqdm=True,
    )
    return Trainer(model=custom_loop.build()[0], args=args, train_dataset=TinyLM(), callbacks=[callback])


def test_a_second_process_on_a_live_directory_is_refused_and_changes_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        str(SCRIPTS / "custom_loop.py"),
        str(out),
        "--steps",
        "100000",
        "--interval",
        "0.2",
        "--step-sleep",
        "0.01",
    ]
    live = subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert "LOOP: starting at step 0" in live.stdout.readline()
        deadline = time.monotonic() + 60
        while not list(out.glob("checkpoint-*/aegis_manifest.json")) and time.monotonic() < deadline:
            time.sleep(0.05)

        with pytest.raises(RunLockedError) as err:
            RollingCheckpointManager(out)
        message = str(err.value)
        assert (
            f"pid {live.pid} on {socket.gethostname()}" in message
            and "in use by another training run" in message
        )
        with pytest.raises(RunLockedError):
            find_resume_checkpoint(out)
        trainer = make_trainer(out, AegisCheckpointCallback(save_interval_sec=0.01), max_steps=3)
        with pytest.raises(RunLockedError):
            trainer.train()

        capsys.readouterr()
        assert cli_main(["status", str(out)]) == 0
        assert f"running: pid {live.pid}" in capsys.readouterr().out
        assert live.poll() is None  # undisturbed
    finally:
        live.kill()
        live.wait()
    assert not (out / ".aegis" / "quarantine").exists()
    mine = [e for e in read_audit(out / ".aegis" / "audit.jsonl").events if e["pid"] == os.getpid()]
    assert mine == []  # the refused attempts wrote nothing


class StopAt(__import__("transformers").TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True


def test_trainer_callback_keeps_the_same_run_record(tmp_path):
    from aegis_ckpt.options import CheckpointOptions

    out = tmp_path / "trainer"
    options = CheckpointOptions(save_interval_sec=0.01, max_keep=2, adaptive=True, min_interval_sec=0.001)
    callback = AegisCheckpointCallback(options=options)
    assert isinstance(callback.policy, AdaptivePolicy)
    trainer = make_trainer(out, callback, max_steps=12)
    trainer.add_callback(StopAt(6))
    trainer.train()
    session = read_run_record(out)["session"]
    assert session["state"] == "exited" and session["exit"]["kind"] == "trainer_end" and session["step"] == 6
    assert json.loads((out / ".aegis" / "stats.json").read_text())["count"] >= 1
    # the measured save cost moved the 0.01 s interval up (5 % cap), and the change is in the audit log
    assert callback.policy.interval_sec > 0.01

    newest = max(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*"))

    callback2 = AegisCheckpointCallback(save_interval_sec=0.01, max_keep=2)
    trainer2 = make_trainer(out, callback2, max_steps=12)
    trainer2.train(resume_from_checkpoint=find_resume_checkpoint(out))
    assert trainer2.state.global_step == 12
    events = read_audit(out / ".aegis" / "audit.jsonl").events
    kinds = [e["event"] for e in events]
    assert {"start", "save", "commit", "prune", "resume", "interval", "finish", "exit"} <= set(kinds)
    starts = [e["reason"] for e in events if e["event"] == "start"]
    assert starts == ["fresh", RESUME_CLEAN]
    commit = next(e for e in events if e["event"] == "commit")
    assert commit["digest"] == "xxh3_128" and commit["bytes"] > 0  # the default: the manifest's own digest
    assert len(commit["xxh3_128"]["model.safetensors"]) == 32
    assert [e["step"] for e in events if e["event"] == "resume"] == [newest]
    assert cli_main(["verify", str(out)]) == 0
