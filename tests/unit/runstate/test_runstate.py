"""Run lease on real files: classification of how the previous process ended, takeover, refusal, history."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from aegis_ckpt.errors import RunLockedError
from aegis_ckpt.runstate.completion import mark_completed
from aegis_ckpt.runstate.lease import RunLease, read_run_record, run_record_path, session_is_alive
from aegis_ckpt.runstate.start import (
    FINISHED,
    FRESH,
    RESUME_CLEAN,
    RESUME_CRASH,
    RESUME_POWER_LOSS,
    RESUME_UNRECORDED,
    classify_start,
)
from aegis_ckpt.system.boot import current_boot_id, same_boot

BOOT = current_boot_id()


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def session(**kw) -> dict:
    base = {
        "state": "running",
        "pid": 999_999,
        "host": socket.gethostname(),
        "boot_id": BOOT,
        "started_unix": 1_000.0,
        "heartbeat_unix": 1_500.0,
        "heartbeat_every_sec": 30.0,
        "start_step": 0,
        "step": 90,
        "last_commit_step": 60,
        "last_commit_unix": 1_400.0,
        "exit": None,
    }
    base.update(kw)
    return base


def write_record(out: Path, sess: dict, history: dict | None = None) -> None:
    path = run_record_path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps({"format": "aegis-ckpt-run", "version": 1, "session": sess, "history": history or {}})
    )


def classify(previous, **kw):
    args = dict(completion=None, boot_id=BOOT, has_checkpoints=True, now_unix=2_000.0)
    args.update(kw)
    return classify_start(previous, **args)


def test_classification_of_every_kind_of_previous_end():
    assert classify(None, has_checkpoints=False).kind == FRESH
    assert classify(None).kind == RESUME_UNRECORDED
    assert classify(session(), completion={"step": 90}).kind == FINISHED

    clean = classify(session(state="exited", exit={"kind": "signal", "unix": 1_600.0, "step": 90}))
    assert clean.kind == RESUME_CLEAN and not clean.is_failure and "clean stop (signal)" in clean.message

    exc = classify(
        session(
            state="exited", exit={"kind": "exception", "unix": 1_600.0, "step": 90, "detail": "ValueError"}
        )
    )
    assert exc.kind == RESUME_CRASH and exc.is_failure and "ValueError" in exc.message

    crash = classify(session())
    assert crash.kind == RESUME_CRASH and crash.is_failure
    assert crash.lost_sec == 100.0 and crash.lost_steps == 30  # heartbeat 1500 - commit 1400; step 90 - 60
    assert "CRASH detected" in crash.message

    power = classify(session(boot_id="another-boot"))
    assert power.kind == RESUME_POWER_LOSS and power.is_failure
    assert (power.lost_sec, power.lost_steps, power.downtime_sec) == (100.0, 30, 500.0)
    assert "POWER LOSS OR REBOOT" in power.message and "100 s to 2.2 min of training" in power.message


def test_lost_time_counts_from_the_start_when_nothing_was_committed():
    start = classify(session(boot_id="x", last_commit_unix=None, last_commit_step=None, start_step=40))
    assert start.lost_sec == 500.0 and start.lost_steps == 50


def test_boot_time_ids_tolerate_a_second_of_wobble():
    assert same_boot("boottime:1000", "boottime:1003")
    assert not same_boot("boottime:1000", "boottime:1100")
    assert not same_boot(None, BOOT)
    if Path("/proc/sys/kernel/random/boot_id").exists():
        assert BOOT == Path("/proc/sys/kernel/random/boot_id").read_text().strip()


def test_lease_lifecycle_and_throttled_heartbeat(tmp_path):
    now = [0.0]
    lease = RunLease(tmp_path, heartbeat_every_sec=30, clock=lambda: now[0])
    assert lease.acquire(step=0).kind == FRESH
    rec = read_run_record(tmp_path)["session"]
    assert rec["pid"] == os.getpid() and rec["state"] == "running" and rec["boot_id"] == BOOT
    assert session_is_alive(rec)

    now[0] = 10.0
    lease.heartbeat(5)
    assert read_run_record(tmp_path)["session"]["step"] == 0  # throttled
    now[0] = 31.0
    lease.heartbeat(7)
    assert read_run_record(tmp_path)["session"]["step"] == 7
    lease.record_commit(8)
    rec = read_run_record(tmp_path)["session"]
    assert (rec["step"], rec["last_commit_step"]) == (8, 8)

    lease.release("closed", step=9)
    rec = read_run_record(tmp_path)["session"]
    assert rec["state"] == "exited" and rec["exit"]["kind"] == "closed" and not session_is_alive(rec)

    again = RunLease(tmp_path)
    start = again.acquire(step=9)
    assert start.kind == RESUME_CLEAN
    assert again.history["sessions"] == 2
    again.release("closed")


def test_stale_lease_after_power_loss_is_taken_over_and_counted(tmp_path):
    pid = dead_pid()  # before the clock is read: starting a process can take seconds on a loaded machine
    beat = time.time() - 3_600
    write_record(
        tmp_path,
        session(
            pid=pid,
            boot_id="boot-before-the-power-cut",
            started_unix=beat - 600,
            heartbeat_unix=beat,
            last_commit_unix=beat - 45,
        ),
        {"sessions": 3, "running_sec": 1_000.0, "failures": [{"kind": "crash"}]},
    )
    lease = RunLease(tmp_path)
    start = lease.acquire(step=60)
    try:
        assert start.kind == RESUME_POWER_LOSS
        assert start.lost_sec == pytest.approx(45.0)
        assert start.downtime_sec == pytest.approx(3_600, abs=5)
        assert lease.failures == 2
        assert lease.history["running_sec"] == pytest.approx(1_600.0)
        assert lease.history["failures"][-1]["kind"] == "power_loss"
        assert read_run_record(tmp_path)["session"]["pid"] == os.getpid()
    finally:
        lease.release("closed")


def test_fresh_heartbeat_from_another_host_is_refused(tmp_path):
    write_record(tmp_path, session(host="other-machine", heartbeat_unix=time.time(), pid=4242))
    with pytest.raises(RunLockedError, match="pid 4242 on other-machine"):
        RunLease(tmp_path).acquire()
    write_record(tmp_path, session(host="other-machine", heartbeat_unix=time.time() - 600))
    lease = RunLease(tmp_path)
    assert lease.acquire().kind == RESUME_CRASH  # stale: taken over
    lease.release("closed")


def test_completion_marker_means_already_finished(tmp_path):
    mark_completed(tmp_path, step=12, checkpoint=None)
    lease = RunLease(tmp_path)
    start = lease.acquire(step=12)
    assert start.kind == FINISHED and "already finished at step 12" in start.message
    lease.release("closed")


def test_second_process_is_refused_while_the_first_holds_the_lease(tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom aegis_ckpt.runstate.lease import RunLease\n"
            f"lease = RunLease({str(tmp_path)!r})\nlease.acquire(step=3)\nprint('held', flush=True)\ntime.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunLockedError) as err:
            RunLease(tmp_path).acquire()
        assert f"pid {holder.pid}" in str(err.value) and "in use by another training run" in str(err.value)
        assert session_is_alive(read_run_record(tmp_path)["session"])
    finally:
        holder.kill()
        holder.wait()
    lease = RunLease(tmp_path)
    assert lease.acquire().kind == RESUME_CRASH  # killed holder: the OS dropped its lock
    lease.release("closed")
