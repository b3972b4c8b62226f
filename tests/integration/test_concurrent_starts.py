"""One run per output dir (guarantee 8): two ``aegis-ckpt train`` processes started at the same instant on one
output dir. Exactly one trains; the other is refused at once (exit 2, a message naming the holder's pid, before it
builds anything) and moves or deletes nothing of the first.

Twenty rounds between two real processes (``tests/scripts/race_worker.py``: the CLI entry point, released by a
barrier file after the heavy imports, so the race is decided at the run lease). The winner is stopped with a real
SIGINT once the loser has exited: its emergency checkpoint must commit, and every checkpoint it committed must
still be in place, with nothing in quarantine.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from testenv import REPO_ROOT, SCRIPTS_DIR, subprocess_env

from aegis_ckpt.runstate.lease import RunLease, holding_run_lock
from aegis_ckpt.storage.audit import read_audit
from aegis_ckpt.storage.layout import AEGIS_DIR, MANIFEST_NAME

TINY = REPO_ROOT / "configs" / "tiny.yaml"
SMALL = [
    *("--set", "model.config={n_layer: 1, n_head: 2, n_embd: 16}"),
    *("--set", "tokenizer.vocab_size=280"),
    *("--set", "data.block_size=16"),
    *("--set", "data.max_samples=200"),
    *("--set", "training.per_device_train_batch_size=4"),
    *("--set", "training.max_steps=100000"),
    *("--set", "training.logging_steps=1000"),
    *("--set", "checkpoint.save_interval_sec=0.2"),
]
ROUNDS = 20


def wait_until(predicate, timeout: float, what: str, procs=()) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        for p in procs:
            assert p.poll() is None, f"a worker died while waiting for {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def committed(out: Path) -> list[str]:
    return sorted(p.name for p in out.glob("checkpoint-*") if (p / MANIFEST_NAME).is_file())


@pytest.mark.slow
def test_two_trainings_started_together_twenty_times(tmp_path):
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                str(SCRIPTS_DIR / "race_worker.py"),
                str(tmp_path),
                str(ROUNDS),
                "--",
                str(TINY),
                *SMALL,
            ],
            env=subprocess_env(),
            stdout=subprocess.DEVNULL,
            stderr=open(tmp_path / f"worker-{i}.log", "w"),
        )
        for i in range(2)
    ]
    pids = {w.pid for w in workers}
    try:
        wait_until(lambda: all((tmp_path / f"ready.{p}").exists() for p in pids), 300, "imports", workers)
        for k in range(ROUNDS):
            check_round(tmp_path, k, pids, workers)
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
            w.wait(30)


def check_round(workdir: Path, k: int, pids: set[int], workers) -> None:
    out = workdir / f"round-{k}"
    (workdir / f"go-{k}").write_text("")

    def code(pid: int) -> int | None:
        path = workdir / f"round-{k}.{pid}.code"
        return int(path.read_text()) if path.exists() and path.read_text() else None

    wait_until(lambda: any(code(p) is not None for p in pids), 120, f"round {k}: the loser's exit", workers)
    loser = next(p for p in pids if code(p) is not None)
    winner = (pids - {loser}).pop()
    err = (workdir / f"round-{k}.{loser}.err").read_text()
    assert code(loser) == 2, f"round {k}: the loser exited {code(loser)}:\n{err[-2000:]}"
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "in use by another training run" in lines[0], err[-2000:]
    assert f"pid {winner} " in lines[0], f"round {k}: the message does not name the holder: {lines[0]}"
    # The winner trains: it holds the lease and commits checkpoints; then a real Ctrl+C stops it.
    # From here on only the winner must stay up: after the last round the loser's process ends on its own.
    workers = [w for w in workers if w.pid == winner]
    wait_until(lambda: len(committed(out)) >= 1, 120, f"round {k}: a commit of the winner", workers)
    kept = committed(out)
    os.kill(winner, signal.SIGINT)
    wait_until(lambda: code(winner) is not None, 120, f"round {k}: the winner's exit", workers)
    winner_err = (workdir / f"round-{k}.{winner}.err").read_text()
    assert code(winner) == 130, f"round {k}: the winner exited {code(winner)}:\n{winner_err[-3000:]}"
    assert "Starting a new run" in winner_err and "emergency checkpoint" in winner_err
    # Nothing of the winner was moved or deleted by the loser: what it committed is in place, or was pruned by the
    # winner's own retention (it keeps training until the Ctrl+C reaches a step end); quarantine is empty.
    audit = read_audit(out / AEGIS_DIR / "audit.jsonl").events
    pruned = {f"checkpoint-{e.get('step')}" for e in audit if e["event"] == "prune"}
    assert set(kept) - pruned <= set(committed(out)), (kept, committed(out), pruned)
    assert not (out / AEGIS_DIR / "quarantine").exists() or not any(
        (out / AEGIS_DIR / "quarantine").iterdir()
    )
    events = [e["event"] for e in audit]
    assert "quarantine" not in events and events.count("start") == 1, events


def test_no_process_can_take_the_lease_while_a_scan_runs(tmp_path, committed_checkpoint, plain_checkpoint):
    """The resume scan holds the run lease's lock from its first step to its last: a process trying to start a
    run meanwhile is refused, so no scan can move a folder that a run is writing."""
    from aegis_ckpt import resume as resume_mod
    from aegis_ckpt.storage.store import CheckpointStore

    out = tmp_path / "out"
    committed_checkpoint(out, 1)
    seen: dict = {}
    real = CheckpointStore.recover_staging

    def recover_staging_and_race(self):
        probe = (
            "import sys; from aegis_ckpt.runstate.lease import RunLease; from aegis_ckpt.errors import "
            "RunLockedError\ntry:\n    RunLease(sys.argv[1]).acquire()\nexcept RunLockedError as e:\n"
            "    print('refused:', e)\nelse:\n    print('acquired')"
        )
        seen["probe"] = subprocess.run(
            [sys.executable, "-c", probe, str(out)],
            capture_output=True,
            text=True,
            env=subprocess_env(),
            timeout=120,
        )
        return real(self)

    CheckpointStore.recover_staging = recover_staging_and_race
    try:
        assert resume_mod.find_resume_checkpoint(out) == str(out / "checkpoint-1")
    finally:
        CheckpointStore.recover_staging = real
    assert seen["probe"].stdout.startswith("refused:"), seen["probe"].stdout + seen["probe"].stderr
    assert f"pid {os.getpid()} " in seen["probe"].stdout
    # Once the scan is over, the lease is free again.
    lease = RunLease(out)
    lease.acquire()
    lease.release("closed")


def test_run_lock_is_reentrant_in_one_process(tmp_path):
    """``aegis-ckpt train`` holds the lock for the whole run; the callback's lease inside it takes the same lock."""
    with holding_run_lock(tmp_path):
        lease = RunLease(tmp_path)
        lease.acquire()
        lease.release("closed")
        assert json.loads((tmp_path / AEGIS_DIR / "run.owner.json").read_text())["pid"] == os.getpid()
