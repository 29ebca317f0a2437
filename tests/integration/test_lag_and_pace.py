"""Lag in seconds measured against the source's present, throttled pokes that keep their window, and caps that hold
over five-second windows: against real servers under a steady write load from a thread."""

from __future__ import annotations

import threading
import time
from datetime import datetime

import psycopg
import pytest

from airflow_pgmigrate.engine.incremental import SyncResult, run_incremental
from tests.hardening.test_operability_watchdog import _alerts, _context
from tests.integration.test_incremental import assert_equal, catch_up, start_migration

pytestmark = pytest.mark.integration

TABLE = "CREATE TABLE public.t (id bigint PRIMARY KEY, v text NOT NULL)"
#: Bytes of one row's INSERT message as the sync counts them (pgoutput, text values): tag, relation, tuple kind,
#: column count, then per column its kind and length.
ROW_BYTES_SQL = "sum(18 + length(id::text) + octet_length(v))"


class SteadyWriter:
    """Inserts ``rate`` single-row transactions per second on the source, on schedule, from a thread."""

    def __init__(self, env, rate: float, *, first_id: int = 1_000_000, payload: int = 100) -> None:
        self.env, self.rate, self.next_id, self.payload = env, rate, first_id, payload
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> SteadyWriter:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(30)

    def _run(self) -> None:
        with psycopg.connect(**self.env.source_info().connect_kwargs(), autocommit=True) as conn:
            started = time.monotonic()
            done = 0
            while not self.stop.is_set():
                conn.execute("INSERT INTO public.t VALUES (%s, repeat('w', %s))", (self.next_id, self.payload))
                self.next_id += 1
                done += 1
                ahead = started + done / self.rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)


def poke(env, config, window: float, **kwargs) -> tuple[SyncResult, float]:
    """One run of the sync as a sensor poke runs it; returns the result and its wall-clock seconds."""
    started = time.monotonic()
    result = run_incremental(config, env.source_info(), env.destination_info(), window_seconds=window, **kwargs)
    return result, time.monotonic() - started


@pytest.mark.slow
def test_lag_seconds_grows_while_paused_or_throttled_and_returns_to_zero(migration_env):
    env = migration_env
    env.src(TABLE)
    config = start_migration(env)
    throttled = env.config(throttling={"incremental": {"rows_per_second": 5}})
    with SteadyWriter(env, rate=40):
        time.sleep(1)
        first, _ = poke(env, config, 10)
        assert first.caught_up and first.lag_seconds < 2, first
        caught_up_at = time.monotonic()

        # Paused: no poke for 5 s. A poke with a 0 s window applies nothing and sees the oldest unapplied commit.
        time.sleep(5)
        paused, _ = poke(env, config, 0)
        waited = time.monotonic() - caught_up_at
        assert paused.transactions == 0 and paused.lag_basis == "oldest_unapplied_commit", paused
        assert waited - 2 <= paused.lag_seconds <= waited + first.lag_seconds + 1, (paused, waited)
        oldest = datetime.fromisoformat(paused.oldest_unapplied_commit_time or "")
        assert oldest >= datetime.fromisoformat(first.last_commit_time or ""), "it follows the last applied commit"

        # Throttled below the write rate: each poke applies, and the lag still grows.
        lags = []
        for _ in range(3):
            result, _ = poke(env, throttled, 2)
            assert result.transactions > 0 and result.lag_seconds > 0, result
            lags.append(result.lag_seconds)
        assert lags[0] < lags[1] < lags[2] and lags[2] - lags[0] > 1.5, lags
        assert lags[0] > paused.lag_seconds - 1, (lags, paused)

        # Unthrottled, the sync catches up with the writes: about 0 (only commits of the last moment are pending).
        for _ in range(10):
            result, _ = poke(env, config, 10)
            if result.caught_up:
                break
        assert result.caught_up and result.lag_seconds < 2, result
    quiet = catch_up(env, config)
    # Bytes count every WAL record of the (shared) test server, other databases' included; seconds only what is ours.
    assert quiet.lag_seconds == 0 and quiet.lag_basis == "nothing_unapplied", quiet
    assert quiet.lag_bytes < 256 * 1024, quiet
    assert_equal(env, ["public.t"])


def test_wal_with_nothing_for_the_migration_is_no_lag_and_an_unread_backlog_never_claims_zero(migration_env,
                                                                                               monkeypatch):
    from airflow_pgmigrate.engine import incremental

    env = migration_env
    env.src(TABLE + "; CREATE TABLE public.other (id bigint PRIMARY KEY, v text)")
    config = start_migration(env, objects={"exclude": ["public.other"]})
    stop = threading.Event()

    def other_writes() -> None:  # WAL and commits the migration has nothing to apply for
        with psycopg.connect(**env.source_info().connect_kwargs(), autocommit=True) as conn:
            n = 0
            while not stop.is_set():
                n += 1
                conn.execute("INSERT INTO public.other VALUES (%s, repeat('o', 500))", (n,))
                time.sleep(0.005)

    writer = threading.Thread(target=other_writes, daemon=True)
    writer.start()
    try:
        time.sleep(0.5)
        results = [poke(env, config, 2)[0] for _ in range(3)]
    finally:
        stop.set()
        writer.join(10)
    for result in results:
        assert result.caught_up and result.lag_seconds == 0 and result.lag_basis == "nothing_unapplied", result
    assert any(result.lag_bytes > 0 for result in results), "WAL was left unread: the read-ahead decided"

    # A backlog the stream does not reach in time (no read-ahead at all here): the unread WAL's age, never 0.
    env.src("DO $$ BEGIN FOR i IN 1..300 LOOP INSERT INTO public.t VALUES (i, 'x'); COMMIT; END LOOP; END $$")
    time.sleep(1)
    monkeypatch.setattr(incremental, "READ_AHEAD_SECONDS", 0.0)
    result, took = poke(env, config, 0)
    assert result.lag_bytes > 0 and result.lag_basis == "unread_wal_age" and 0 < result.lag_seconds <= took + 0.5, \
        (took, result)


def test_not_delayed_flips_on_seconds_and_the_alert_fires_once_per_crossing(migration_env, tmp_path):
    from airflow_pgmigrate.sensors.incremental import IncrementalSyncSensor

    env = migration_env
    alerts = tmp_path / "alerts.jsonl"
    config = env.config_dict(
        migration_types=["full", "incremental"],
        incremental={"max_lag_seconds": 3, "max_lag_bytes": "1GB"},
        alerts={"notifiers": [{"notifier": "file", "kwargs": {"path": str(alerts)}}], "lag_seconds": 3,
                "lag_bytes": None},
        report={"directory": str(tmp_path / "reports")})
    env.src(TABLE)
    start_migration(env, **{k: v for k, v in config.items() if k != "name"})

    sensor = IncrementalSyncSensor(task_id="incremental_sync", config=config, window_seconds=10)
    with SteadyWriter(env, rate=40):
        time.sleep(1)
        assert sensor.poke(_context()).is_done
        assert _alerts(alerts) == []
        time.sleep(5)  # the sync is paused: the destination falls behind by seconds, not by many bytes
        sensor.window_seconds = 0
        for _ in range(2):
            answer = sensor.poke(_context())
            assert not answer.is_done and answer.xcom_value["not_delayed"] is False
            assert answer.xcom_value["lag_seconds"] > 3 and answer.xcom_value["lag_bytes"] < 1024 ** 3
        assert _alerts(alerts) == ["lag_high"], "once per crossing, not at every poke"
        sensor.window_seconds = 10
        answer = sensor.poke(_context())
        assert answer.is_done and answer.xcom_value["lag_seconds"] <= 3, answer.xcom_value
        assert _alerts(alerts) == ["lag_high", "lag_recovered"]


@pytest.mark.parametrize("caps", [{"rows_per_second": 10}, {"mb_per_second": 0.002}, {"rows_per_second": 400}],
                         ids=["10-rows-per-s", "2-kB-per-s", "400-rows-per-s"])
def test_a_throttled_poke_ends_within_its_window(migration_env, caps):
    env = migration_env
    env.src(TABLE)
    config = start_migration(env)
    throttled = env.config(throttling={"incremental": caps})
    # A backlog of transactions of 8 rows (written in parts under the small caps).
    env.src("DO $$ BEGIN FOR i IN 1..1500 LOOP INSERT INTO public.t VALUES (i, repeat('b', 100)); "
            "INSERT INTO public.t SELECT 10000 + 7 * i + g, 'p' FROM generate_series(0, 6) g; COMMIT; END LOOP; "
            "END $$")
    applied = 0
    with SteadyWriter(env, rate=40):
        for window in (1.0, 3.0, 2.0):
            result, took = poke(env, throttled, window)
            # The window, the connections' set-up and the last statement; never a wait in the token bucket.
            assert took <= window + 2.0, (took, result)
            assert not result.caught_up and result.lag_seconds > 0, result
            applied += result.changes
        assert applied > 0
    catch_up(env, config)
    assert_equal(env, ["public.t"])


def _windows(samples: list[tuple[float, int, int]], span: float) -> list[tuple[float, float]]:
    """Rows and bytes per second over every ``span``-second window between two samples."""
    rates = []
    j = 0
    for i, (t0, rows0, bytes0) in enumerate(samples):
        j = max(j, i)
        while j < len(samples) and samples[j][0] - t0 < span:
            j += 1
        if j == len(samples):
            break
        t1, rows1, bytes1 = samples[j]
        rates.append(((rows1 - rows0) / (t1 - t0), (bytes1 - bytes0) / (t1 - t0)))
    return rates


@pytest.mark.slow
@pytest.mark.parametrize("cap", ["rows_per_second", "mb_per_second"])
def test_caps_hold_over_five_second_windows(migration_env, cap):
    env = migration_env
    env.src(TABLE)
    config = start_migration(env)
    value = 300 if cap == "rows_per_second" else 0.25
    limit = value if cap == "rows_per_second" else value * 1024 * 1024
    throttled = env.config(throttling={"incremental": {cap: value}})
    # A backlog larger than the caps let 20 s apply, in transactions of 21 rows, then a steady load on top.
    env.src("DO $$ BEGIN FOR i IN 1..500 LOOP INSERT INTO public.t VALUES (i, repeat('a', 800)); "
            "INSERT INTO public.t SELECT 1000 + 20 * i + g, repeat('c', 800) FROM generate_series(0, 19) g; COMMIT; "
            "END LOOP; END $$")
    samples: list[tuple[float, int, int]] = []
    stop = threading.Event()

    def sample() -> None:
        with psycopg.connect(**env.destination_info().connect_kwargs(), autocommit=True) as conn:
            while not stop.is_set():
                row = conn.execute(f"SELECT count(*), coalesce({ROW_BYTES_SQL}, 0) FROM public.t").fetchone()
                samples.append((time.monotonic(), int(row[0]), int(row[1])))
                time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    with SteadyWriter(env, rate=50, payload=800):
        sampler.start()
        try:
            result, took = poke(env, throttled, 21, stop_when_caught_up=False)
        finally:
            stop.set()
            sampler.join(10)
    assert took <= 23, (took, result)
    last = max(i for i, s in enumerate(samples) if s[1] > samples[i - 1][1])
    active = [s for s in samples[:last + 1] if s[1] > samples[0][1]]  # from the first commit to the last
    rates = [r[0 if cap == "rows_per_second" else 1] for r in _windows(active, 5.0)]
    assert len(rates) > 50, len(rates)
    assert max(rates) <= 1.15 * limit, (max(rates), limit)
    average = (active[-1][1 if cap == "rows_per_second" else 2] - active[0][1 if cap == "rows_per_second" else 2]) \
        / (active[-1][0] - active[0][0])
    assert average >= 0.85 * limit, (average, limit)  # the cap is used, not only respected
    assert min(rates) >= 0.6 * limit, (min(rates), limit)  # and no silence between lumps
    catch_up(env, config)
    assert_equal(env, ["public.t"])


def test_a_transaction_larger_than_any_window_at_the_caps_is_still_applied(migration_env):
    """At 100 rows/s a 300-row transaction needs 3 s: no 1 s window would ever carry it. The poke that starts with it
    applies it whole at the cap, later than its window, and says why; the next pokes keep their window."""
    env = migration_env
    env.src(TABLE)
    start_migration(env)
    throttled = env.config(throttling={"incremental": {"rows_per_second": 100}})
    env.src("INSERT INTO public.t SELECT g, 'big' FROM generate_series(1, 300) g")
    env.src("INSERT INTO public.t VALUES (1000, 'after')")
    lines: list[str] = []
    result, took = poke(env, throttled, 1, log=lines.append)
    assert result.transactions == 1 and result.changes == 300, result
    assert 2.5 <= took <= 6, took
    assert any("runs past its window of 1 s" in line and "rows_per_second" in line for line in lines), lines
    result, took = poke(env, throttled, 1)
    assert result.changes == 1 and result.lag_seconds == 0 and took <= 3, (took, result)
    assert_equal(env, ["public.t"])


@pytest.mark.slow
def test_a_long_payment_keeps_the_replication_connection_alive(migration_env):
    """A transaction of two 150 kB rows at 20 kB/s: 7 s to pay for each, while the source ends a replication
    connection silent for 2 s; the second row is read after the first is paid."""
    env = migration_env
    env.src(TABLE)
    start_migration(env)
    env.src(f'ALTER DATABASE "{env.source_db}" SET wal_sender_timeout = \'2s\'')
    throttled = env.config(throttling={"incremental": {"mb_per_second": 0.02}})
    env.src("INSERT INTO public.t SELECT k, string_agg(md5(g::text), '') FROM generate_series(1, 4700) g, "
            "generate_series(1, 2) k GROUP BY k")
    result, took = poke(env, throttled, 1)
    assert result.changes == 2 and took >= 12, (took, result)
    assert_equal(env, ["public.t"])


def test_a_large_transaction_behind_small_ones_waits_for_the_poke_that_starts_with_it(migration_env):
    """Five small transactions, then one of 2,000 changes (5 s at 400 changes/s: no 1 s window carries it). Pokes
    that start with small ones commit them and stop within their window, leaving the large one; the poke that starts
    with it applies it whole, alone. (The run's first commit is paid whatever the window for such a transaction only:
    not because small ones read before it were still in the batch.)"""
    env = migration_env
    env.src(TABLE)
    start_migration(env)
    throttled = env.config(throttling={"incremental": {"rows_per_second": 400}})
    for i in range(5):
        env.src(f"INSERT INTO public.t VALUES ({i}, 'small')")
    env.src("INSERT INTO public.t SELECT g, 'big' FROM generate_series(1000, 2999) g")
    pokes = []
    for _ in range(8):
        result, took = poke(env, throttled, 1)
        pokes.append((result, took))
        if result.caught_up:
            break
    large = [result for result, _ in pokes if result.changes >= 2000]
    assert len(large) == 1 and large[0].transactions == 1 and large[0].changes == 2000, pokes
    assert pokes[0][0].throttled and pokes[0][0].transactions >= 1 and pokes[0][0].lag_seconds > 0, pokes
    for result, took in pokes:
        if result is not large[0]:
            assert took <= 2.5, (took, result)
    assert_equal(env, ["public.t"])
