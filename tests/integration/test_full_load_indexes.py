"""Index and key builds during the full load: each table's start as soon as its copy commits, beside the other
tables' copies; a kill -9 in the middle builds nothing twice; post_data skips what the full load built."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import psycopg
import pytest

from airflow_pgmigrate.engine.index_builds import IndexBuilder
from airflow_pgmigrate.engine.schema import actual_definitions, expected_definitions, migrate_schema
from airflow_pgmigrate.engine.state import MigrationState

from .test_full_load import KILLABLE, connections, digest

pytestmark = pytest.mark.integration

DATA = """
CREATE TABLE public.big (id bigint PRIMARY KEY, payload text NOT NULL, n int NOT NULL);
INSERT INTO public.big SELECT g, repeat(md5(g::text), 4), g % 1000 FROM generate_series(1, 150000) g;
CREATE INDEX big_n ON public.big (n);
CREATE TABLE public.small (k text PRIMARY KEY, v int UNIQUE);
INSERT INTO public.small SELECT 'k' || g, g FROM generate_series(1, 500) g;
-- An index whose build takes a few seconds (an immutable function that sleeps): the kill lands inside it.
CREATE FUNCTION public.slow_key(x int) RETURNS int LANGUAGE plpgsql IMMUTABLE AS
$$ BEGIN PERFORM pg_sleep(0.004); RETURN x; END $$;
CREATE TABLE public.slowly (id int PRIMARY KEY, v int NOT NULL REFERENCES public.small (v));
INSERT INTO public.slowly SELECT g, 1 + g % 500 FROM generate_series(1, 1500) g;
CREATE INDEX slowly_key ON public.slowly (public.slow_key(v));
"""
COLUMNS = {"public.big": ["id", "payload", "n"], "public.small": ["k", "v"], "public.slowly": ["id", "v"]}


def _killable(env, config_dict):
    info = {"config": config_dict,
            "source": {"host": "127.0.0.1", "port": env.source.port, "dbname": env.source_db,
                       "user": "postgres", "password": env.source.password},
            "destination": {"host": "127.0.0.1", "port": env.destination.port, "dbname": env.destination_db,
                            "user": "postgres", "password": env.destination.password}}
    return subprocess.Popen([sys.executable, "-c", KILLABLE, json.dumps(info)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _building(env, index_part: str) -> bool:
    rows = env.dst("SELECT count(*) FROM pg_stat_activity WHERE query ILIKE %s AND state = 'active'",
                   (f"%CREATE INDEX {index_part}%",))
    return bool(rows[0][0])


def test_index_build_overlapping_other_copies_killed_resumes_without_building_twice(migration_env):
    env = migration_env
    env.src(DATA)
    # Two jobs; the copy paced so that the big table's copy outlasts the small tables' copies and builds.
    config_dict = env.config_dict(full_load={"parallel_jobs": 2, "split_tables_larger_than": "1GB"},
                                  throttling={"full_load": {"mb_per_second": 6}})
    config = env.config(**{k: v for k, v in config_dict.items() if k in ("full_load", "throttling")})
    state = MigrationState(env.destination_info(), config.state_schema, config.name)
    migrate_schema(config, env.source_info(), env.destination_info(), "pre_data", state=state)

    proc = _killable(env, config_dict)
    deadline = time.monotonic() + 90
    while not _building(env, "slowly_key"):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()  # type: ignore[union-attr]
        time.sleep(0.05)
    # The slow index is being built while the big table is still being copied: the kill lands in both.
    plan = state.get("full_load")
    big_chunks = {c["id"] for p in plan["plan"] if p["source"] == "public.big" for c in p["chunks"]}
    done_chunks = {r[0] for r in env.dst("SELECT chunk_id FROM pgmigrate.full_load_chunks")}
    assert not big_chunks <= done_chunks, "the big table's copy was over already"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    built_before = {r[0] for r in env.dst("SELECT build_id FROM pgmigrate.full_load_index_builds")}
    assert built_before, "no build had finished before the kill"
    assert not any("slowly_key" in b for b in built_before)
    # The killed session's build ends too (its client is gone): nothing of it is left.
    deadline = time.monotonic() + 30
    while _building(env, "slowly_key"):
        assert time.monotonic() < deadline
        time.sleep(0.2)

    # The retry: builds what is left, once each.
    proc = _killable(env, config_dict)
    lines = list(proc.stdout)  # type: ignore[union-attr]
    assert proc.wait(timeout=120) == 0, "".join(lines[-20:])
    result = json.loads(next(line for line in lines if line.startswith("RESULT "))[7:])
    assert result["resumed"] is True
    built_now = set(result["indexes_built_now"])
    assert not built_now & built_before, "built twice"
    assert "index public.slowly_key" in built_now and "index public.big_n" in built_now
    builds = env.dst("SELECT build_id, count(*) FROM pgmigrate.full_load_index_builds GROUP BY 1")
    assert {b for b, _ in builds} == built_now | built_before
    assert not [line for line in lines for b in built_before if line.startswith("full_load built") and f'"{b}"' in line]
    assert any(line.startswith("full_load built") and '"index public.slowly_key"' in line for line in lines)

    # post_data builds the rest (the foreign key) and skips what the full load built, saying so.
    report = migrate_schema(config, env.source_info(), env.destination_info(), "post_data", state=state)
    skipped = {s["object"]: s["reason"] for s in report.skipped}
    for build in built_now | built_before:
        assert skipped.get(build, "").startswith("built by the full load"), (build, skipped)
    assert report.created == {"fk constraint": 1}, report.created
    assert sorted(expected_definitions(config, env.source_info())) == sorted(
        actual_definitions(config, env.destination_info(), ["public"]))
    src, dst = connections(env)
    with src, dst:
        for table, columns in COLUMNS.items():
            assert digest(src, table, columns, columns[0]) == digest(dst, table, columns, columns[0]), table
        indexes = "SELECT count(*) FROM pg_index WHERE indrelid = ANY(%s::regclass[])"
        names = list(COLUMNS)
        assert src.execute(indexes, (names,)).fetchone() == dst.execute(indexes, (names,)).fetchone()


def test_build_indexes_false_leaves_every_build_to_post_data(migration_env):
    env = migration_env
    env.src(DATA.replace("pg_sleep(0.004)", "pg_sleep(0)"))
    config = env.config(full_load={"build_indexes": False})
    state = MigrationState(env.destination_info(), config.state_schema, config.name)
    migrate_schema(config, env.source_info(), env.destination_info(), "pre_data", state=state)
    from airflow_pgmigrate.engine.full_load import run_full_load

    report = run_full_load(config, env.source_info(), env.destination_info())
    assert report["indexes_built_now"] == []
    assert env.dst("SELECT count(*) FROM pg_index WHERE indrelid = 'public.big'::regclass")[0][0] == 0
    post = migrate_schema(config, env.source_info(), env.destination_info(), "post_data", state=state)
    assert post.created["index"] == 2 and post.created["constraint"] == 4, post.created
    with psycopg.connect(**env.destination_info().connect_kwargs()) as dst:
        assert dst.execute("SELECT count(*) FROM pg_index WHERE indrelid = 'public.big'::regclass").fetchone() == (2,)


def test_parallel_maintenance_workers_take_idle_jobs_within_the_destination_limits(migration_env, monkeypatch):
    env = migration_env
    config = env.config()
    builder = IndexBuilder(env.destination_info(), MigrationState(env.destination_info(), config.state_schema,
                                                                  config.name), "", lambda message: None)
    with psycopg.connect(**env.destination_info().connect_kwargs(), autocommit=True) as conn:
        row = conn.execute("SELECT least(current_setting('max_parallel_workers')::int, "
                           "current_setting('max_worker_processes')::int - 1)").fetchone()
        assert row is not None and row[0] >= 2
        large = 1 << 30
        assert builder.parallel_workers(conn, 0, large) == 0, "no job idle: no worker"
        assert builder.parallel_workers(conn, 3, 1 << 20) == 0, "a small index: no worker"
        assert builder.parallel_workers(conn, 1, large) == 1
        assert builder.parallel_workers(conn, 1000, large) == row[0], "bounded by the destination"

    # A load of one table with two jobs: its first build starts while the other job is idle, and takes it.
    workers = _load_one_table_with_two_jobs(env, monkeypatch, lambda message: None)
    assert max(workers) == 1, workers


def _load_one_table_with_two_jobs(env, monkeypatch, log) -> list[int]:
    """Load one table with two indexes (any index gets parallel workers here), two jobs; the builds' workers."""
    from airflow_pgmigrate.engine import index_builds
    from airflow_pgmigrate.engine.full_load import run_full_load

    monkeypatch.setattr(index_builds, "PARALLEL_MIN_BYTES", 0)
    env.src("CREATE TABLE public.big (id bigint PRIMARY KEY, n int NOT NULL);"
            "INSERT INTO public.big SELECT g, g % 1000 FROM generate_series(1, 100000) g;"
            "CREATE INDEX big_n ON public.big (n)")
    config = env.config(migration_types=["schema", "full"], full_load={"parallel_jobs": 2})
    state = MigrationState(env.destination_info(), config.state_schema, config.name)
    migrate_schema(config, env.source_info(), env.destination_info(), "pre_data", state=state)
    report = run_full_load(config, env.source_info(), env.destination_info(), log=log)
    assert sorted(report["indexes_built_now"]) == ["constraint public.big big_pkey", "index public.big_n"]
    return [r[0] for r in env.dst("SELECT parallel_workers FROM pgmigrate.full_load_index_builds")]


def test_the_last_table_s_builds_count_the_job_that_just_copied_it_as_idle(migration_env, monkeypatch):
    """The job whose chunk completed a table is idle once it has recorded the chunk: the table's first build, which
    another job may take before that job gets back to the queue, must see it so (a slow log write in between made
    every build of the load's last table run without a parallel worker)."""

    planned = threading.Event()

    def slow_log(message: str) -> None:  # a log handler writing to a slow stream
        if message.startswith("full_load index_builds="):
            planned.set()
        if message.startswith("full_load table="):  # the builds wait for this chunk, not for their planning
            planned.wait(30)
            time.sleep(0.3)

    workers = _load_one_table_with_two_jobs(migration_env, monkeypatch, slow_log)
    assert 1 in workers, f"no build took the idle job: {workers}"
