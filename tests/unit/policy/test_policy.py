"""IntervalPolicy: due one interval after training (re)starts, then one interval after each save ends; driven
by an injected clock (no patching of ``time``)."""

from __future__ import annotations

from aegis_ckpt.policy import IntervalPolicy


def test_first_save_is_due_one_interval_after_start(fake_clock):
    policy = IntervalPolicy(60.0)
    policy.start(fake_clock())
    fake_clock.advance(59.999)
    assert not policy.is_due(fake_clock())
    assert policy.seconds_until_due(fake_clock()) > 0
    fake_clock.advance(0.001)
    assert policy.is_due(fake_clock())
    assert policy.seconds_until_due(fake_clock()) == 0.0


def test_next_save_is_measured_from_the_end_of_the_last_save(fake_clock):
    policy = IntervalPolicy(10.0)
    policy.start(fake_clock())
    fake_clock.advance(10)
    assert policy.is_due(fake_clock())
    started = fake_clock()
    fake_clock.advance(25)  # a save slower than the interval...
    policy.record_save(started=started, finished=fake_clock(), size_bytes=123)
    assert not policy.is_due(fake_clock()), "...must not cause a back-to-back save"
    fake_clock.advance(9.5)
    assert not policy.is_due(fake_clock())
    fake_clock.advance(0.5)
    assert policy.is_due(fake_clock())


def test_due_depends_on_time_only_not_on_how_often_it_is_asked(fake_clock):
    policy = IntervalPolicy(5.0)
    policy.start(fake_clock())
    for _ in range(1000):  # many fast steps
        assert not policy.is_due(fake_clock())
        fake_clock.advance(0.004)
    fake_clock.advance(1.0)
    assert policy.is_due(fake_clock())


def test_unstarted_policy_starts_on_first_query(fake_clock):
    policy = IntervalPolicy(3.0)
    assert policy.seconds_until_due(fake_clock()) == 0.0
    assert not policy.is_due(fake_clock())
    fake_clock.advance(3.0)
    assert policy.is_due(fake_clock())
