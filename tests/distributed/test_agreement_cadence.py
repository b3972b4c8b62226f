"""The pipelined rank agreement is spaced out by a stride derived from the step time (starting an all-reduce costs
0.1-0.5 ms, several percent of a short step), and every rank must still agree at exactly the same step ends.

Two real processes on gloo drive ``StepAgreement`` with a fake clock (10 ms steps): agreement steps are the same on
both ranks, about ``AGREE_EVERY_SEC`` apart, and a flag raised on one rank reaches both at the same step within
two strides."""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys

import pytest
from testenv import SCRIPTS_DIR, subprocess_env

from aegis_ckpt.distributed import AGREE_EVERY_SEC

pytestmark = [pytest.mark.distributed]

CALLS, SIGNAL_AT, STEP_SEC = 200, 57, 0.01


def test_ranks_agree_at_the_same_spaced_steps_and_see_a_signal_together(tmp_path):
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        str(SCRIPTS_DIR / "agreement_cadence.py"), "--out", str(tmp_path), "--calls", str(CALLS),
        "--signal-at", str(SIGNAL_AT), "--step-sec", str(STEP_SEC),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(), timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1]  # same agreement steps, same flags, same stride, at every call
    calls = ranks[0]

    expected_stride = math.ceil(AGREE_EVERY_SEC / STEP_SEC)
    assert calls[-1]["stride"] == expected_stride
    agreement_calls = [c["call"] for c in calls if c["agreement"]]
    gaps = {b - a for a, b in itertools.pairwise(agreement_calls[5:-1])}
    assert gaps == {expected_stride}, agreement_calls
    assert len(agreement_calls) < CALLS / expected_stride + 6  # not one collective per step

    first_seen = next(c["call"] for c in calls if c["signal"])
    assert SIGNAL_AT < first_seen <= SIGNAL_AT + 2 * expected_stride, (first_seen, agreement_calls)
    assert calls[-1]["agreement"] and calls[-1]["signal"] == 15  # the last call is agreed synchronously
