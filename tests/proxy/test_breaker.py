"""The candidate's circuit breaker: opens on consecutive connect errors, probes, closes."""

from __future__ import annotations

from shadowproxy.proxy.breaker import MAX_COOLDOWN, Breaker


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_opens_after_consecutive_connect_errors_then_probes_and_closes() -> None:
    clock = Clock()
    b = Breaker(3, 1.0, clock)
    for _ in range(2):
        assert b.allow()
        assert b.record("connect") is False
    assert b.record(None) is False       # an answer resets the streak
    for i in range(3):
        assert b.allow()
        assert b.record("connect") is (i == 2)   # the third opens it: a turn
    assert b.open and not b.allow()
    clock.t = 1.01
    assert b.allow()                     # the probe
    assert not b.allow()                 # only one probe at a time
    assert b.record("connect") is False  # probe failed: cooldown doubles, still open
    assert b.cooldown == 2.0 and not b.allow()
    clock.t = 3.1
    assert b.allow()
    assert b.record(None) is True        # probe answered: closed again, a turn
    assert not b.open and b.allow() and b.cooldown == 1.0


def test_slow_answers_never_open_it_and_cooldown_is_capped() -> None:
    clock = Clock()
    b = Breaker(2, 1.0, clock)
    for _ in range(100):
        assert b.allow()
        b.record("timeout")
    assert not b.open
    b.record("connect")
    b.record("connect")
    for _ in range(10):
        clock.t += 100
        assert b.allow()
        b.record("connect")
    assert b.cooldown == MAX_COOLDOWN


def test_a_dropped_probe_does_not_wedge_it_and_zero_disables() -> None:
    clock = Clock()
    b = Breaker(1, 1.0, clock)
    b.record("connect")
    clock.t = 2
    assert b.allow()
    b.cancel_probe()
    assert b.allow()
    off = Breaker(0, 1.0, clock)
    for _ in range(50):
        off.record("connect")
    assert off.allow()


def test_a_probe_never_heard_of_is_given_up_after_probe_limit() -> None:
    clock = Clock()
    b = Breaker(1, 1.0, clock, probe_limit=5.0)
    b.record("connect")
    clock.t = 1.5
    assert b.allow()                     # the probe, then lost: no record, no cancel
    clock.t = 6.4
    assert not b.allow()                 # still within its limit
    clock.t = 6.6
    assert b.allow()                     # given up: the next shadow probes
    assert not b.allow()
    b.record(None)
    assert not b.open and b.allow()
