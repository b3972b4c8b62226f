"""AdaptivePolicy driven by a fake clock and fake save costs: the overhead cap, Young/Daly, the user's bounds."""

from __future__ import annotations

import math
import random

import pytest

from aegis_ckpt.errors import ConfigError
from aegis_ckpt.options import CheckpointOptions
from aegis_ckpt.policy import AdaptivePolicy, IntervalPolicy, make_policy

TICK = 0.5  # seconds of training between two safe points


def simulate(policy, cost, *, seconds: float) -> tuple[float, float]:
    """Run a loop for ``seconds`` of fake wall time; a save costs ``cost()`` seconds. Returns the share of the
    second half of the run spent saving, and the interval at the end."""
    now = 0.0
    policy.start(now)
    saving_second_half = 0.0
    while now < seconds:
        now += TICK
        if policy.is_due(now):
            c = cost()
            policy.record_save(started=now, finished=now + c, size_bytes=1)
            if now > seconds / 2:
                saving_second_half += c
            now += c
    return saving_second_half / (now - seconds / 2), policy.interval_sec


def make(**kw) -> AdaptivePolicy:
    args = dict(base_interval_sec=10.0, min_interval_sec=1.0, max_interval_sec=10_000.0, max_overhead=0.05)
    args.update(kw)
    return AdaptivePolicy(**args)


def test_converges_to_the_overhead_cap():
    policy = make()
    share, interval = simulate(policy, lambda: 2.0, seconds=20_000)
    # 2 s per save may take at most 5 %: 2 / (T + 2) = 0.05  ->  T = 38 s.
    assert interval == pytest.approx(38.0, rel=1e-6)
    assert share == pytest.approx(0.05, abs=0.002)


def test_noisy_save_costs_stay_near_the_cap():
    rng = random.Random(5)
    share, interval = simulate(make(), lambda: rng.uniform(1.0, 3.0), seconds=200_000)
    assert 25 < interval < 60
    assert share < 0.056


def test_cheap_saves_keep_the_configured_interval():
    policy = make(base_interval_sec=30.0)
    _, interval = simulate(policy, lambda: 0.01, seconds=3_000)
    assert interval == 30.0


def test_moves_toward_young_daly_with_a_failure_history():
    policy = make()
    policy.set_failure_history(failures=4, running_sec=40_000)  # MTBF 10 000 s
    changes = []
    policy.on_change = lambda old, new, reason: changes.append((old, new, reason))
    share, interval = simulate(policy, lambda: 2.0, seconds=40_000)
    assert interval == pytest.approx(math.sqrt(2 * 2.0 * 10_000), rel=1e-6)  # 200 s
    assert share < 0.05
    # one save moves the interval by at most x2, and every change says why
    assert changes[0][1] == pytest.approx(20.0)
    assert all(new <= 2 * old + 1e-9 for old, new, _ in changes)
    assert "Young/Daly" in changes[-1][2]


def test_young_daly_shorter_than_configured_when_failures_are_frequent():
    policy = make(base_interval_sec=600.0)
    policy.set_failure_history(failures=10, running_sec=1_000)  # MTBF 100 s
    _, interval = simulate(policy, lambda: 0.5, seconds=5_000)
    assert interval == pytest.approx(10.0, rel=1e-6)  # sqrt(2 x 0.5 x 100), above the cap floor of 9.5 s


def test_bounds_win_over_both_rules(caplog):
    capped = make(max_interval_sec=100.0)
    capped.set_failure_history(failures=1, running_sec=10_000)
    _, interval = simulate(capped, lambda: 2.0, seconds=20_000)
    assert interval == 100.0  # Young/Daly asks for 200 s

    floored = make(min_interval_sec=5.0, base_interval_sec=6.0)
    floored.set_failure_history(failures=100, running_sec=10_000)
    _, interval = simulate(floored, lambda: 0.001, seconds=2_000)
    assert interval == 5.0  # Young/Daly asks for 0.45 s

    slow = make(max_interval_sec=100.0)
    with caplog.at_level("WARNING", logger="aegis_ckpt.policy"):
        share, interval = simulate(slow, lambda: 20.0, seconds=20_000)
    assert interval == 100.0  # the cap would need 380 s
    assert share > 0.05
    assert any("even at max_interval_sec=100" in r.getMessage() for r in caplog.records)


def test_seeded_cost_applies_before_the_first_save():
    policy = make()
    policy.seed_cost(2.0)
    assert policy.interval_sec == pytest.approx(20.0)  # first move, limited to x2


def test_make_policy_follows_the_options():
    assert isinstance(make_policy(CheckpointOptions(save_interval_sec=60)), IntervalPolicy)
    policy = make_policy(CheckpointOptions(save_interval_sec=60, adaptive=True))
    assert isinstance(policy, AdaptivePolicy)
    assert (policy.min_interval_sec, policy.max_interval_sec, policy.max_overhead) == (15.0, 240.0, 0.05)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"min_interval_sec": 100, "max_interval_sec": 10}, "must not exceed max_interval_sec"),
        ({"max_save_overhead": 1.5}, "max_save_overhead must be below 1"),
        ({"max_save_overhead": 0}, "max_save_overhead must be a number > 0"),
        ({"heartbeat_every_sec": -1}, "heartbeat_every_sec must be a number > 0"),
    ],
)
def test_adaptive_options_are_validated(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        CheckpointOptions(**kwargs)
