"""The token bucket's payments with a deadline: a caller with a time window never sleeps past its end."""

from __future__ import annotations

import time

from airflow_pgmigrate.engine.throttle import Throttle


def test_a_payment_the_caps_allow_only_after_the_deadline_is_refused_at_once_and_costs_nothing():
    throttle = Throttle(rows_per_second=100)
    started = time.monotonic()
    assert throttle.pay(10, 0, deadline=started + 1)  # 0.1 s of the cap
    refused_at = time.monotonic()
    assert not throttle.pay(500, 0, deadline=refused_at + 1)  # would need 5 s
    assert time.monotonic() - refused_at < 0.05, "refused without sleeping"
    assert throttle.pay(50, 0, deadline=time.monotonic() + 1), "the refused payment took no tokens"
    assert 0.5 <= time.monotonic() - started < 1.5


def test_a_payment_to_two_caps_waits_for_the_longer_not_the_sum():
    throttle = Throttle(rows_per_second=100, mb_per_second=1)
    started = time.monotonic()
    assert throttle.pay(20, 512 * 1024)  # rows: 0.2 s, bytes: 0.5 s
    assert 0.4 <= time.monotonic() - started < 0.65
    assert throttle.rows_per_second == 100 and throttle.bytes_per_second == 1024 * 1024


def test_no_cap_no_wait():
    throttle = Throttle()
    started = time.monotonic()
    assert throttle.pay(10**9, 10**12, deadline=started)
    assert time.monotonic() - started < 0.05


def test_the_caller_does_the_waiting():
    waits: list[float] = []
    throttle = Throttle(mb_per_second=1)
    assert throttle.pay(0, 2 * 1024 * 1024, sleep=waits.append)
    assert len(waits) == 1 and 1.7 <= waits[0] <= 2.0, waits
