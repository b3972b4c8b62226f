"""Random real SIGKILLs against a training process, many of them in the middle of a save.

A tiny GPT-2 trains in a child process (``tests/scripts/train_tiny.py``) with a short save interval and a small
per-step sleep, so saves are frequent. The parent watches the output directory and sends SIGKILL at moments drawn
from a seeded RNG: mostly the instant a save shows (a ``checkpoint-*`` folder without a manifest written by the
Trainer, a ``.aegis/staging/step-*`` folder of an asynchronous save being written, committed or published) or a
non-empty ``.aegis/trash`` (a prune), sometimes at an arbitrary time after the process started (import, resume
scan, training). After each kill the process is restarted with the same arguments and resumes via
``find_resume_checkpoint``, until it finishes. The test runs once with asynchronous saves (the default) and once
with synchronous ones (the Trainer writes ``checkpoint-*`` itself).

Invariants proven (each checked, not assumed):

1. After every kill, every committed checkpoint (and so the newest one) verifies fully against its manifest: a
   kill never damages committed state (guarantee 1).
2. After every kill there are at most ``MAX_KEEP + 1`` committed checkpoints (the new one committed, the oldest
   not yet pruned), and at the end at most ``MAX_KEEP`` (guarantee 5).
3. Every restart resumes from the newest committed checkpoint seen after the kill (an asynchronous save that
   committed in staging but was not yet published counts: the restart publishes it); uncommitted folders are
   quarantined (reason "uncommitted") or, in staging, removed; never resumed from; nothing committed is ever
   quarantined.
4. The final weights are bit-identical (``torch.equal`` on every tensor) to an uninterrupted run (guarantee 3).
5. At least ``MIN_KILLS_DURING_SAVE`` kills landed while a save was in progress (a ``checkpoint-*`` folder
   without a manifest, or a staging folder, was left behind), otherwise the test would not prove what it claims.

Reproduce a failure with the seed printed in the captured output: ``AEGIS_CHAOS_SEED=<seed> pytest -m chaos``.
``AEGIS_CHAOS_KILLS`` raises the number of kills for a longer soak.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections import Counter
from pathlib import Path

import pytest
import tinylib

from aegis_ckpt.runstate.completion import read_completion
from aegis_ckpt.storage.commit import verify_checkpoint
from aegis_ckpt.storage.layout import MANIFEST_NAME
from aegis_ckpt.storage.quarantine import QUARANTINE_KEEP
from aegis_ckpt.storage.store import CheckpointStore

pytestmark = [pytest.mark.chaos, pytest.mark.slow]

SEED = int(os.environ.get("AEGIS_CHAOS_SEED", "1337"))
KILLS = int(os.environ.get("AEGIS_CHAOS_KILLS", "10"))
MIN_KILLS_DURING_SAVE = 3
# Each attempt trains at most ~1.6 s (~80 steps at >= 20 ms a step); a multiple of the 10 steps per epoch.
MAX_STEPS = max(1000, 100 * KILLS) // 10 * 10
SAVE_INTERVAL_SEC = 0.4
STEP_SLEEP_SEC = 0.02
MAX_KEEP = 2


def _starts(log: Path) -> list[dict]:
    if not log.exists():
        return []
    events = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return [e for e in events if e["event"] == "start"]


def _save_in_progress(out: Path) -> bool:
    """A checkpoint folder without a manifest (being written or committed), an asynchronous save in staging, or a
    prune under way."""
    try:
        with os.scandir(out) as it:
            for entry in it:
                if entry.name.startswith("checkpoint-") and not os.path.exists(
                    os.path.join(entry.path, MANIFEST_NAME)
                ):
                    return True
        staging = out / ".aegis" / "staging"
        if staging.is_dir() and any(staging.iterdir()):
            return True
        trash = out / ".aegis" / "trash"
        return trash.is_dir() and any(trash.iterdir())
    except FileNotFoundError:
        return False


def _staged(out: Path) -> list[tuple[int, Path, bool]]:
    """Asynchronous saves left in staging: (step, path, committed)."""
    staging = out / ".aegis" / "staging"
    if not staging.is_dir():
        return []
    return sorted(
        (int(p.name.split("-")[1]), p, (p / MANIFEST_NAME).exists())
        for p in staging.iterdir()
        if p.name.startswith("step-")
    )


class KillPlan:
    """The predicate polled by ``run_py``: returns True at the moment to send SIGKILL.

    Every plan kills within about 1.6 s of training, so each attempt makes bounded progress and ``KILLS`` kills
    fit in ``MAX_STEPS`` whatever the machine's speed.
    """

    def __init__(self, rng: random.Random, out: Path, log: Path, startup_sec: float):
        self.out, self.log = out, log
        self.mode = rng.choice(["save", "save", "save", "save", "anytime"])
        # From process start: during import, the resume scan, or the first ~1.5 s of training.
        self.anytime_sec = rng.uniform(0.2, startup_sec + 1.5)
        self.wait_after_start_sec = rng.uniform(0.0, 1.2)  # let training run a little first
        self.after_detect_sec = rng.choice([0.0, 0.0, 0.001, 0.002, 0.003, 0.004, 0.006, 0.008, 0.015])
        self.starts_before = len(_starts(log))
        self.log_size = log.stat().st_size if log.exists() else 0
        self.t0 = time.monotonic()
        self.started_at: float | None = None
        self.detected_at: float | None = None

    def describe(self) -> str:
        if self.mode == "anytime":
            return f"anytime at {self.anytime_sec:.2f}s"
        return (
            f"save: {self.wait_after_start_sec:.2f}s after train begin, "
            f"{self.after_detect_sec * 1000:.0f}ms after a save shows"
        )

    def _poll_started(self, now: float) -> None:
        if self.started_at is None and self.log.exists() and self.log.stat().st_size != self.log_size:
            if len(_starts(self.log)) > self.starts_before:
                self.started_at = now

    def __call__(self) -> bool:
        now = time.monotonic()
        self._poll_started(now)
        if self.mode == "anytime":
            return now - self.t0 >= self.anytime_sec
        if self.started_at is None or now - self.started_at < self.wait_after_start_sec:
            return False
        if self.detected_at is None:
            if _save_in_progress(self.out):
                self.detected_at = now
            elif now - self.started_at > self.wait_after_start_sec + 10 * SAVE_INTERVAL_SEC:
                return True  # no save showed up in time: kill anyway
            else:
                return False
        return now - self.detected_at >= self.after_detect_sec


def _inspect(out: Path) -> dict:
    """Read-only look at the output directory after a kill."""
    store = CheckpointStore(out)
    entries = store.checkpoints()
    committed = [e for e in entries if e.is_committed]
    uncommitted = [e for e in entries if not e.is_committed]
    trash = out / ".aegis" / "trash"
    phases = []
    for e in uncommitted:
        phases.append("commit" if (e.path / "trainer_state.json").exists() else "write")
    staged = _staged(out)
    for _step, _path, is_committed in staged:
        phases.append("async-publish" if is_committed else "async-write")
    if trash.is_dir() and any(trash.iterdir()):
        phases.append("prune")
    return {"committed": committed, "uncommitted": uncommitted, "phases": phases, "staged": staged}


@pytest.mark.parametrize("mode", ["async", "sync"])
def test_sigkill_chaos(mode, tmp_path, run_py, reference_weights):
    rng = random.Random(SEED)
    out, log, result = tmp_path / "out", tmp_path / "events.jsonl", tmp_path / "final.pt"
    args = [
        "--output-dir", out, "--max-steps", MAX_STEPS, "--save-interval", SAVE_INTERVAL_SEC,
        "--max-keep", MAX_KEEP, "--step-sleep", STEP_SLEEP_SEC, "--result", result, "--log", log,
    ]  # fmt: skip
    if mode == "sync":
        args.append("--sync")
    print(f"chaos mode={mode} seed={SEED} kills={KILLS} max_steps={MAX_STEPS} interval={SAVE_INTERVAL_SEC}s")

    phase_counts: Counter[str] = Counter()
    expected_resume: str | None = None
    checked_starts = 0
    # Uncommitted folders by inode: a rename into quarantine keeps the inode, a re-created folder gets a new one,
    # and one folder may be seen after several kills if they all landed before the resume scan.
    uncommitted_seen: dict[int, str] = {}
    kills = 0
    startup_sec = 5.0  # process start -> train begin; measured on every attempt that gets there

    def check_new_starts() -> None:
        """Invariant 3: every run that got past the scan resumed from the newest committed checkpoint."""
        nonlocal checked_starts
        starts = _starts(log)
        for start in starts[checked_starts:]:
            assert start["resume"] == expected_resume, (start, expected_resume)
        checked_starts = len(starts)

    while kills < KILLS:
        plan = KillPlan(rng, out, log, startup_sec)
        r = run_py("train_tiny.py", args, kill_after=plan, timeout=240)
        if plan.started_at is not None:
            startup_sec = plan.started_at - plan.t0
        if not r.killed:
            pytest.fail(
                f"run ended by itself (rc={r.returncode}) after {kills} kills; raise MAX_STEPS\n{r.stderr[-3000:]}"
            )
        kills += 1
        check_new_starts()
        state = _inspect(out)
        phase_counts.update(state["phases"] or ["outside-save"])
        newest = state["committed"][-1].path if state["committed"] else None
        print(
            f"kill {kills}: {plan.describe()} after {r.seconds:.2f}s -> phases={state['phases'] or '-'} "
            f"committed={[e.step for e in state['committed']]} uncommitted={[e.step for e in state['uncommitted']]}"
        )
        # Invariant 1: committed means intact.
        for entry in state["committed"]:
            res = verify_checkpoint(entry.path, full=True)
            assert res.ok, f"kill {kills}: committed {entry.path.name} damaged: {res.problems}"
        # Invariant 2 (during the run).
        assert len(state["committed"]) <= MAX_KEEP + 1
        # An interrupted save is always newer than every committed checkpoint.
        newest_step = int(newest.name.split("-")[1]) if newest else -1
        for entry in state["uncommitted"]:
            assert entry.step > newest_step
            uncommitted_seen[entry.path.stat().st_ino] = entry.path.name
        # An asynchronous save committed in staging but not yet published is published by the restart.
        for step, _path, is_committed in state["staged"]:
            if is_committed and step > newest_step:
                assert verify_checkpoint(_path, full=True).ok, f"kill {kills}: staged step-{step} damaged"
                newest, newest_step = out / f"checkpoint-{step}", step
        expected_resume = str(newest) if newest else None

    # Let the last restart finish; without the per-step sleep (it only shapes timing, not the math).
    r = run_py("train_tiny.py", [*args, "--step-sleep", 0], timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    check_new_starts()
    during_save = sum(phase_counts[p] for p in ("write", "commit", "async-write", "async-publish"))
    print(f"kill phases: {dict(phase_counts)}; during a save: {during_save}")

    # Invariant 4.
    assert (
        tinylib.weight_mismatches(tinylib.load_weights(result), reference_weights(max_steps=MAX_STEPS)) == []
    )
    # Invariant 2 (at the end) and a clean directory.
    store = CheckpointStore(out)
    committed = store.committed()
    assert 1 <= len(committed) <= MAX_KEEP and committed[-1].step == MAX_STEPS
    assert [e.step for e in store.checkpoints()] == [e.step for e in committed], "no uncommitted folder left"
    assert not any((out / ".aegis" / "trash").iterdir())
    assert not _staged(out), "no staging folder left"
    assert read_completion(out)["step"] == MAX_STEPS
    # Invariant 3: uncommitted folders went to quarantine; nothing committed ever did. Quarantine keeps only its
    # newest QUARANTINE_KEEP folders (a full disk must not fill up with leftovers), so the newest uncommitted
    # folders seen are the ones it still holds.
    records = store.quarantined()
    assert all(r["reason"].startswith("uncommitted") for r in records), records
    assert len(records) <= QUARANTINE_KEEP, records
    quarantined_inodes = {Path(r["path"]).stat().st_ino for r in records}
    assert quarantined_inodes <= set(uncommitted_seen), "only folders seen uncommitted are in quarantine"
    assert len(records) == min(QUARANTINE_KEEP, len(uncommitted_seen)), (records, uncommitted_seen)
    newest_seen = list(uncommitted_seen)[-len(records) :] if records else []
    missing = {uncommitted_seen[ino] for ino in newest_seen if ino not in quarantined_inodes}
    assert not missing, (
        f"the newest uncommitted folders seen after a kill are not in quarantine: {sorted(missing)}"
    )
    # Invariant 5.
    assert during_save >= MIN_KILLS_DURING_SAVE, (
        f"only {during_save} kills landed during a save: {phase_counts}"
    )
