"""A training stand-in for the supervisor tests: starts in milliseconds and misbehaves on cue.

    python supervised_child.py MODE STATE_DIR

Every start appends its pid to ``STATE_DIR/attempts`` (so the attempt number is known) and writes heartbeats the
way ``AegisCheckpointCallback`` does, through ``aegis_ckpt.runstate.lease.write_heartbeat`` to ``AEGIS_HEARTBEAT_FILE``.

Modes:
  crash-twice     exit 1 on attempts 1 and 2, exit 0 on attempt 3
  fail-always     exit 1
  bad-input       exit 2
  hang-once       attempt 1: one heartbeat, then hang ignoring SIGTERM (needs SIGKILL); later attempts: exit 0
  silent-once     attempt 1: never writes a heartbeat and sleeps; later attempts: exit 0
  progress-fail   write heartbeats at a step higher than any attempt before, exit 1; attempt 5 exits 0
  wait            write heartbeats until killed (for SIGKILL-from-outside tests); attempt 2 exits 0
  trap            like the real callback: on SIGINT/SIGTERM/SIGHUP record the signal in STATE_DIR/signals,
                  "save" and exit 128 + signum
"""

import os
import signal
import sys
import time
from pathlib import Path

from aegis_ckpt.runstate.heartbeat import heartbeat_path_from_env, write_heartbeat


def beat(step: int, phase: str = "train") -> None:
    path = heartbeat_path_from_env()
    if path is not None:
        write_heartbeat(path, step=step, phase=phase)


def main() -> int:
    mode, state = sys.argv[1], Path(sys.argv[2])
    state.mkdir(parents=True, exist_ok=True)
    with open(state / "attempts", "a") as f:
        f.write(f"{os.getpid()}\n")
    attempt = len((state / "attempts").read_text().split())
    print(f"child attempt {attempt} pid {os.getpid()} mode {mode}", flush=True)

    if mode == "crash-twice":
        beat(0, "train_begin")
        return 0 if attempt >= 3 else 1
    if mode == "fail-always":
        return 1
    if mode == "bad-input":
        return 2
    if mode == "hang-once":
        if attempt > 1:
            return 0
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        beat(5)
        while True:
            time.sleep(1)
    if mode == "silent-once":
        if attempt > 1:
            return 0
        while True:
            time.sleep(1)
    if mode == "progress-fail":
        beat(attempt * 10 - 10, "train_begin")
        time.sleep(0.5)  # the real callback beats every 5 s; give the supervisor's poll a chance to see both
        beat(attempt * 10)
        return 0 if attempt >= 5 else 1
    if mode == "wait":
        if attempt > 1:
            return 0
        step = 0
        while True:
            beat(step)
            step += 1
            time.sleep(0.2)
    if mode == "trap":
        got: list[int] = []

        def handler(signum, frame):
            got.append(signum)
            with open(state / "signals", "a") as f:
                f.write(f"{signal.Signals(signum).name}\n")

        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, handler)
        beat(0, "train_begin")
        (state / "ready").write_text("ready")
        while not got:
            time.sleep(0.05)
        time.sleep(0.5)  # the "emergency checkpoint"; a duplicate signal would arrive meanwhile
        return 128 + got[0]
    raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    sys.exit(main())
