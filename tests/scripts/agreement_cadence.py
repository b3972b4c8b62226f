"""Drives ``StepAgreement`` under torchrun (gloo) with a fake clock: steps of 10 ms, rank 1 receives a "signal" at
call ``--signal-at``. Writes ``<out>/rank<r>.json``: for each call, whether it was an agreement step, the agreed
flags and the agreed stride."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch.distributed as dist

from aegis_ckpt.distributed import StepAgreement, StepFlags


class StepClock:
    def __init__(self, step_sec: float):
        self.now = 0.0
        self.step_sec = step_sec

    def __call__(self) -> float:
        self.now += self.step_sec
        return self.now


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--calls", type=int, default=200)
    p.add_argument("--signal-at", type=int, default=57)
    p.add_argument("--step-sec", type=float, default=0.01)
    a = p.parse_args()
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    agreement = StepAgreement(clock=StepClock(a.step_sec))
    agreement.setup()
    calls = []
    for call in range(1, a.calls + 1):
        local = StepFlags(signal=15 if rank == 1 and call >= a.signal_at else 0)
        agreed = agreement.exchange(local, step=call, sync=call == a.calls)
        calls.append(
            {
                "call": call,
                "agreement": agreement.result_step is not None,
                "signal": agreed.signal,
                "stride": agreement.stride,
            }
        )
    agreement.close()
    Path(a.out, f"rank{rank}.json").write_text(json.dumps(calls))
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
