"""Lag alerts and the retained-WAL watchdog on the real servers, with real backlogs: alerts exactly at the crossings,
the sensor's safe stop, and the full load's safe stop that drops the slot when told to."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import psycopg
import pytest
import yaml

from airflow_pgmigrate.engine.full_load import run_full_load
from airflow_pgmigrate.engine.journal import Journal
from airflow_pgmigrate.testing.local_postgres import DEFAULT_PASSWORD

pytestmark = [pytest.mark.integration, pytest.mark.hardening]

TABLE = "CREATE TABLE public.t (id bigint PRIMARY KEY, v text)"


def _alerts(path) -> list[str]:
    return [json.loads(line)["kind"] for line in path.read_text().splitlines()] if path.exists() else []


def _emit_wal(env, megabytes: int) -> None:
    """Write ``megabytes`` of WAL on the source (logical messages, which the sync has nothing to apply for)."""
    for _ in range(megabytes):
        env.src("SELECT pg_logical_emit_message(true, 'pgmigrate-test', repeat('x', 1048576))")


def _context(run_id: str = "manual__ops") -> dict:
    from types import SimpleNamespace

    # The sensor keys its retry windows by the task instance.
    ti = SimpleNamespace(dag_id="ops", task_id="incremental_sync", run_id=run_id, map_index=-1)
    return {"run_id": run_id, "ti": ti}


def test_lag_and_retained_wal_alert_at_each_crossing_and_the_sensor_stops_safely(migration_env, tmp_path):
    from airflow.sdk.exceptions import AirflowFailException

    from airflow_pgmigrate.sensors.incremental import IncrementalSyncSensor

    env = migration_env
    alerts = tmp_path / "alerts.jsonl"
    config = env.config_dict(
        migration_types=["full", "incremental"],
        alerts={"notifiers": [{"notifier": "file", "kwargs": {"path": str(alerts)}}], "lag_bytes": "64KB",
                "lag_seconds": None},
        incremental={"retained_wal_warn": "2MB", "retained_wal_stop": "6MB"},
        report={"directory": str(tmp_path / "reports")})
    env.src(TABLE)
    env.dst(TABLE)
    run_full_load(env.config(**{k: v for k, v in config.items() if k != "name"}), env.source_info(),
                  env.destination_info())
    sensor = IncrementalSyncSensor(task_id="incremental_sync", config=config, window_seconds=30)
    env.src("INSERT INTO public.t VALUES (0, 'first')")
    assert sensor.poke(_context()).is_done
    assert _alerts(alerts) == []

    # Lag: a backlog of 2,000 transactions, pokes too short to apply it, then one that catches up.
    env.src("DO $$ BEGIN FOR i IN 1..2000 LOOP INSERT INTO public.t VALUES (i, 'row ' || i); COMMIT; END LOOP; "
            "END $$")
    sensor.window_seconds = 0
    for _ in range(2):
        assert sensor.poke(_context()).xcom_value["lag_bytes"] > 65536
    assert _alerts(alerts) == ["lag_high"], "once per crossing, not every poke"
    sensor.window_seconds = 30
    assert sensor.poke(_context()).is_done
    assert _alerts(alerts) == ["lag_high", "lag_recovered"]
    assert env.dst("SELECT count(*) FROM public.t") == [(2001,)]

    # Retained WAL: a transaction left open on the source pins the slot's restart point while WAL piles up.
    with psycopg.connect(**env.source_info().connect_kwargs()) as pinned:
        pinned.execute("INSERT INTO public.t VALUES (-1, 'held open')")
        _emit_wal(env, 3)
        assert sensor.poke(_context()).is_done
        assert _alerts(alerts)[2:] == ["retained_wal_warn"]
        assert sensor.poke(_context()).is_done
        assert _alerts(alerts)[2:] == ["retained_wal_warn"], "still above the warning: no second alert"
        _emit_wal(env, 5)
        with pytest.raises(AirflowFailException) as info:
            sensor.poke(_context())
        message = str(info.value)
        assert "above incremental.retained_wal_stop (6.0 MB) and not shrinking" in message
        assert "clear this task" in message and "SELECT pg_drop_replication_slot('pgmigrate_" in message
        assert _alerts(alerts)[2:] == ["retained_wal_warn", "retained_wal_stop"]
        assert env.src("SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s",
                       (f"pgmigrate_{config['name']}",)) == [(1,)], "the slot is kept"
        pinned.commit()

    # Resume: the user raises the limit and clears the task; the sync drains and the WAL is released.
    config["incremental"]["retained_wal_stop"] = "1GB"
    resumed = IncrementalSyncSensor(task_id="incremental_sync", config=config, window_seconds=30)
    for _ in range(10):
        env.src("CHECKPOINT")  # logs the running transactions, so the slot's restart point can move on
        resumed.poke(_context())
        if "retained_wal_recovered" in _alerts(alerts):
            break
        time.sleep(0.5)
    assert _alerts(alerts) == ["lag_high", "lag_recovered", "retained_wal_warn", "retained_wal_stop",
                               "retained_wal_recovered"]
    assert env.dst("SELECT v FROM public.t WHERE id = -1") == [("held open",)]
    page = (tmp_path / "reports" / f"{config['name']}.html").read_text()
    assert ">stopped<" in page and "retained WAL on the source" in page
    with psycopg.connect(**env.destination_info().connect_kwargs(), autocommit=True) as conn:
        journal = Journal("pgmigrate", config["name"])
        every, merged = journal.poke_marks(conn), journal.poke_marks(conn, max_marks=3)
        assert len(every) >= 8 and len(merged) <= 4, "merged into time buckets"
        assert sum(m["pokes"] for m in merged) == sum(m["pokes"] for m in every)
        assert "stopped" in {m["outcome"] for m in merged}, "a merged mark keeps the worst outcome"
        samples = journal.samples(conn, max_points=3)
        assert 1 <= len(samples) <= 4 and max(s["retained_wal_bytes"] or 0 for s in samples) >= 6 * 1024 * 1024

    # On demand, outside Airflow: the destination from the same environment variable Airflow reads.
    (tmp_path / "migration.yaml").write_text(yaml.safe_dump(config))
    done = subprocess.run([sys.executable, "-m", "airflow_pgmigrate.engine.report", str(tmp_path / "migration.yaml"),
                           "--output", str(tmp_path / "cli")], capture_output=True, text=True, timeout=120,
                          env=os.environ.copy())
    assert done.returncode == 0, done.stderr
    written = tmp_path / "cli" / f"{config['name']}.html"
    assert done.stdout.strip() == str(written)
    assert ">stopped<" in written.read_text() and DEFAULT_PASSWORD not in written.read_text()


def test_the_full_load_stops_and_drops_the_slot_when_the_wal_passes_the_limit(migration_env, tmp_path):
    from airflow.sdk.exceptions import AirflowFailException

    from airflow_pgmigrate.operators.full_load import FullLoadOperator

    env = migration_env
    alerts = tmp_path / "alerts.jsonl"
    config = env.config_dict(
        migration_types=["full", "incremental"],
        throttling={"full_load": {"queries_per_second": 1}},  # about a second per table: time for the WAL to pile up
        full_load={"parallel_jobs": 1},
        alerts={"notifiers": [{"notifier": "file", "kwargs": {"path": str(alerts)}}]},
        incremental={"retained_wal_warn": None, "retained_wal_stop": "4MB", "drop_slot_on_stop": True},
        report={"directory": str(tmp_path / "reports")})
    slot = f"pgmigrate_{config['name']}"
    for i in range(3):
        env.src(f"CREATE TABLE public.t{i} (id bigint PRIMARY KEY, v text); "
                f"INSERT INTO public.t{i} SELECT g, 'v' || g FROM generate_series(1, 500) g")
        env.dst(f"CREATE TABLE public.t{i} (id bigint PRIMARY KEY, v text)")

    def burst() -> None:  # the source keeps writing while nothing consumes the new slot
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if env.src("SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s", (slot,)) == [(1,)]:
                _emit_wal(env, 6)
                return
            time.sleep(0.02)

    writer = threading.Thread(target=burst, daemon=True)
    writer.start()
    operator = FullLoadOperator(task_id="full_load", config=config, watchdog_interval=0)
    with pytest.raises(AirflowFailException) as info:
        operator.execute(_context())
    writer.join(timeout=30)
    message = str(info.value)
    assert "above incremental.retained_wal_stop (4.0 MB)" in message and "The slot was dropped" in message
    assert env.src("SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s", (slot,)) == [(0,)]
    records = [json.loads(line) for line in alerts.read_text().splitlines()]
    assert [(r["kind"], r["details"]["slot_dropped"]) for r in records] == [("retained_wal_stop", True)]
    copied = sum(env.dst(f"SELECT count(*) FROM public.t{i}")[0][0] for i in range(3))
    assert copied < 1500, "the copy stopped before the end"
