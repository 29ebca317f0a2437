"""Incremental sync against real servers: every common type under a concurrent workload, exactly once, edges."""

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
from psycopg import sql

from airflow_pgmigrate.engine.full_load import run_full_load
from airflow_pgmigrate.engine.incremental import SyncError, release, run_incremental
from airflow_pgmigrate.engine.schema import migrate_schema
from airflow_pgmigrate.engine.state import MigrationState

pytestmark = pytest.mark.integration

TYPES = """
CREATE TYPE public.mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN public.positive AS integer CHECK (VALUE > 0);
CREATE TABLE public.everything (
    id bigint PRIMARY KEY,
    n numeric(20, 6), f double precision, t text, b bytea, j jsonb, arr int[], nested text[][],
    m public.mood, d public.positive, ts timestamptz, iv interval, u uuid, big text, flag boolean
);
CREATE TABLE public.counters (k text PRIMARY KEY, v bigint NOT NULL);
CREATE TABLE public.nokey (a int, b text);
ALTER TABLE public.nokey REPLICA IDENTITY FULL;
INSERT INTO public.everything
SELECT g, g / 7.0, g * 0.1, 'text ' || g, decode(md5(g::text), 'hex'), jsonb_build_object('g', g, 'a', ARRAY[g]),
       ARRAY[g, g + 1], ARRAY[['a', 'b'], ['c', 'd']], 'ok', 1 + g % 10, now() - g * interval '1 hour',
       make_interval(days => g), gen_random_uuid(), CASE WHEN g % 10 = 0 THEN repeat(md5(g::text), 400) END,
       g % 2 = 0
  FROM generate_series(1, 2000) g;
INSERT INTO public.counters SELECT 'k' || g, 0 FROM generate_series(1, 50) g;
INSERT INTO public.nokey SELECT g, 'row ' || g FROM generate_series(1, 20) g;
"""


def digest(conn: psycopg.Connection, table: str, key: str) -> tuple[int, str]:
    schema, name = table.split(".")
    row = conn.execute(sql.SQL("SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) "
                               "FROM {} t").format(sql.Identifier(schema, name))).fetchone()
    return int(row[0]), str(row[1])


def start_migration(env, **overrides):
    """Schema, full load (slot and publication included): the state incremental sync starts from."""
    config = env.config(**overrides)
    state = MigrationState(env.destination_info(), config.state_schema, config.name)
    migrate_schema(config, env.source_info(), env.destination_info(), "pre_data", state=state)
    run_full_load(config, env.source_info(), env.destination_info())
    migrate_schema(config, env.source_info(), env.destination_info(), "post_data", state=state)
    return config


def catch_up(env, config, rounds: int = 20):
    for _ in range(rounds):
        result = run_incremental(config, env.source_info(), env.destination_info(), window_seconds=20)
        if result.caught_up:
            return result
    raise AssertionError("incremental sync did not catch up")


def assert_equal(env, tables: list[str]) -> None:
    with psycopg.connect(**env.source_info().connect_kwargs()) as src, \
            psycopg.connect(**env.destination_info().connect_kwargs()) as dst:
        for table in tables:
            assert digest(src, table, "") == digest(dst, table, ""), f"{table} differs"


WORKLOAD = [
    "UPDATE public.everything SET n = n + 1, t = t || 'x', j = j || '{\"u\": 1}' WHERE id = %(a)s",
    "UPDATE public.everything SET flag = NOT flag WHERE id = %(b)s",  # leaves the TOASTed big column untouched
    "INSERT INTO public.everything (id, t, arr, m, u) VALUES (%(new)s, 'new', '{}', 'happy', gen_random_uuid())",
    "DELETE FROM public.everything WHERE id = %(c)s",
    "UPDATE public.counters SET v = v + 1 WHERE k = %(k)s",
    "UPDATE public.nokey SET b = b || '!' WHERE a = %(small)s",
]


def run_workload(env, stop: threading.Event, counter: list[int], seed: int) -> None:
    import random

    rnd = random.Random(seed)
    with psycopg.connect(**env.source_info().connect_kwargs(), autocommit=True) as conn:
        while not stop.is_set():
            counter[0] += 1
            n = counter[0]
            params = {"a": rnd.randint(1, 2000), "b": rnd.randint(1, 2000), "c": rnd.randint(1, 2000),
                      "new": 100_000 * (seed + 1) + n, "k": f"k{rnd.randint(1, 50)}", "small": rnd.randint(1, 20)}
            with conn.transaction():
                for statement in rnd.sample(WORKLOAD, 3):
                    conn.execute(statement, params)


def test_workload_during_full_load_and_sync_ends_equal(migration_env):
    migration_env.src(TYPES)
    stop = threading.Event()
    counter = [0]
    writers = [threading.Thread(target=run_workload, args=(migration_env, stop, counter, i)) for i in range(2)]
    for w in writers:
        w.start()
    try:
        config = start_migration(migration_env, full_load={"parallel_jobs": 2})
        first = run_incremental(config, migration_env.source_info(), migration_env.destination_info(),
                                window_seconds=3, stop_when_caught_up=False)
        assert first.transactions > 0
    finally:
        stop.set()
        for w in writers:
            w.join()
    result = catch_up(migration_env, config)
    assert result.lag_seconds == 0 and result.caught_up
    assert_equal(migration_env, ["public.everything", "public.counters", "public.nokey"])
    assert counter[0] > 50


def test_edges_truncate_key_update_rollback_big_transaction(migration_env):
    migration_env.src(TYPES + "CREATE TABLE public.log (id bigserial PRIMARY KEY, line text);")
    config = start_migration(migration_env)
    migration_env.src("UPDATE public.everything SET id = id + 1000000 WHERE id <= 5")  # key updates move rows
    migration_env.src("TRUNCATE public.counters; INSERT INTO public.counters VALUES ('after', 1)")
    with psycopg.connect(**migration_env.source_info().connect_kwargs()) as conn:
        conn.execute("INSERT INTO public.log (line) VALUES ('rolled back')")
        conn.rollback()
    # A transaction larger than logical_decoding_work_mem (64 kB here) is streamed in pieces and spilled.
    migration_env.src("SET logical_decoding_work_mem = '64kB'")
    migration_env.source.execute("ALTER SYSTEM SET logical_decoding_work_mem = '64kB'")
    migration_env.source.execute("SELECT pg_reload_conf()")
    try:
        migration_env.src("INSERT INTO public.log (line) SELECT repeat('x', 200) || g FROM generate_series(1, 20000) g")
        with psycopg.connect(**migration_env.source_info().connect_kwargs()) as conn:
            conn.execute("INSERT INTO public.log (line) SELECT 'aborted ' || g FROM generate_series(1, 5000) g")
            conn.rollback()
        catch_up(migration_env, config)
    finally:
        migration_env.source.execute("ALTER SYSTEM RESET logical_decoding_work_mem")
        migration_env.source.execute("SELECT pg_reload_conf()")
    assert_equal(migration_env, ["public.everything", "public.counters", "public.log"])
    assert migration_env.dst("SELECT count(*) FROM public.log WHERE line LIKE 'aborted%' OR line = 'rolled back'") \
        == [(0,)]
    assert migration_env.dst("SELECT count(*) FROM public.log") == [(20000,)]


def test_renamed_filtered_and_selected_columns(migration_env):
    migration_env.src("CREATE TABLE public.orders (id int PRIMARY KEY, region text, amount numeric, secret text);"
                      "INSERT INTO public.orders SELECT g, CASE WHEN g % 2 = 0 THEN 'eu' ELSE 'us' END, g, 's' "
                      "FROM generate_series(1, 100) g")
    config = start_migration(
        migration_env,
        objects={"columns": {"public.orders": ["id", "region", "amount"]}},
        filters={"public.orders": "region = 'eu'"},
        mapping={"tables": {"public.orders": "eu_orders"}, "columns": {"public.orders": {"amount": "total"}}},
    )
    migration_env.src("UPDATE public.orders SET region = 'eu' WHERE id = 1")      # moves into the filter
    migration_env.src("UPDATE public.orders SET region = 'us' WHERE id = 2")      # moves out of it
    migration_env.src("UPDATE public.orders SET amount = amount * 10 WHERE id = 4")
    migration_env.src("INSERT INTO public.orders VALUES (1000, 'eu', 5, 's'), (1001, 'us', 6, 's')")
    migration_env.src("DELETE FROM public.orders WHERE id = 6")
    catch_up(migration_env, config)
    expected = migration_env.src("SELECT id, region, amount FROM public.orders WHERE region = 'eu' ORDER BY id")
    actual = migration_env.dst("SELECT id, region, total FROM public.eu_orders ORDER BY id")
    assert actual == expected


def test_conflict_mode_ignore_overwrites_on_insert(migration_env):
    migration_env.src("CREATE TABLE public.kv (k int PRIMARY KEY, v text)")
    config = start_migration(migration_env, conflicting_tables="ignore")
    migration_env.dst("INSERT INTO public.kv VALUES (1, 'destination only')")
    migration_env.src("INSERT INTO public.kv VALUES (1, 'from source'), (2, 'two')")
    catch_up(migration_env, config)
    assert migration_env.dst("SELECT k, v FROM public.kv ORDER BY k") == [(1, "from source"), (2, "two")]


def test_ddl_on_the_source_stops_the_sync_with_a_clear_message(migration_env):
    migration_env.src("CREATE TABLE public.items (id int PRIMARY KEY, name text)")
    config = start_migration(migration_env)
    migration_env.src("ALTER TABLE public.items ADD COLUMN price numeric; INSERT INTO public.items VALUES (1, 'a', 2)")
    with pytest.raises(SyncError) as info:
        catch_up(migration_env, config)
    assert "public.items has a column 'price'" in str(info.value)
    assert migration_env.dst("SELECT count(*) FROM public.items") == [(0,)]


def test_a_column_type_change_on_the_source_stops_the_sync_until_the_destination_has_it(migration_env):
    migration_env.src("CREATE TABLE public.prices (id int PRIMARY KEY, amount int, note varchar(10))")
    config = start_migration(migration_env)
    migration_env.src("ALTER TABLE public.prices ALTER COLUMN amount TYPE numeric(12, 2);"
                      "INSERT INTO public.prices VALUES (1, 2.5, 'x')")
    with pytest.raises(SyncError) as info:
        catch_up(migration_env, config)
    assert "'amount' from integer to numeric(12,2)" in str(info.value)
    assert migration_env.dst("SELECT count(*) FROM public.prices") == [(0,)]
    migration_env.dst("ALTER TABLE public.prices ALTER COLUMN amount TYPE numeric(12, 2)")
    catch_up(migration_env, config)
    assert migration_env.dst("SELECT amount::text FROM public.prices") == [("2.50",)]


def test_one_applier_at_a_time(migration_env):
    migration_env.src("CREATE TABLE public.items (id int PRIMARY KEY)")
    config = start_migration(migration_env)
    with psycopg.connect(**migration_env.destination_info().connect_kwargs(), autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(hashtext(%s))", (f"pgmigrate:{config.name}",))
        with pytest.raises(SyncError, match="another applier"):
            run_incremental(config, migration_env.source_info(), migration_env.destination_info(), window_seconds=2)


def test_lost_slot_is_explained_and_release_cleans_up(migration_env):
    migration_env.src("CREATE TABLE public.items (id int PRIMARY KEY)")
    config = start_migration(migration_env)
    assert release(config, migration_env.source_info(), log=lambda m: None) == {"slot": True, "publication": True}
    with pytest.raises(SyncError, match="does not exist on the source"):
        run_incremental(config, migration_env.source_info(), migration_env.destination_info(), window_seconds=2)
    assert release(config, migration_env.source_info(), log=lambda m: None) == {"slot": False, "publication": False}


APPLIER = """
import json, sys
from airflow_pgmigrate.config import MigrationConfig
from airflow_pgmigrate.engine.connection import ConnectionInfo
from airflow_pgmigrate.engine.incremental import run_incremental
args = json.loads(sys.argv[1])
result = run_incremental(MigrationConfig.from_dict(args["config"]), ConnectionInfo(**args["source"]),
                         ConnectionInfo(**args["destination"]), window_seconds=60, log=lambda m: print(m, flush=True))
print("RESULT " + json.dumps(result.to_dict()), flush=True)
"""


def test_kill_9_of_the_applier_mid_batch_then_a_new_poke_is_exact(migration_env):
    migration_env.src("CREATE TABLE public.acc (id int PRIMARY KEY, v bigint NOT NULL);"
                      "INSERT INTO public.acc SELECT g, 0 FROM generate_series(1, 1000) g")
    config_dict = migration_env.config_dict()
    config = start_migration(migration_env)
    # A backlog of many small transactions.
    with psycopg.connect(**migration_env.source_info().connect_kwargs(), autocommit=True) as conn:
        for i in range(3000):
            conn.execute("UPDATE public.acc SET v = v + 1 WHERE id = %s", (1 + i % 1000,))
    info = {"config": config_dict,
            "source": {"host": "127.0.0.1", "port": migration_env.source.port, "dbname": migration_env.source_db,
                       "user": "postgres", "password": migration_env.source.password},
            "destination": {"host": "127.0.0.1", "port": migration_env.destination.port,
                            "dbname": migration_env.destination_db, "user": "postgres",
                            "password": migration_env.destination.password}}
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, "-c", APPLIER, json.dumps(info)], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        time.sleep(0.4 + 0.3 * _)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    result = catch_up(migration_env, config)
    assert result.caught_up
    assert migration_env.dst("SELECT sum(v), count(*) FROM public.acc") == [(3000, 1000)]
    assert_equal(migration_env, ["public.acc"])


@pytest.mark.parametrize("side", ["source", "destination"])
def test_server_restart_mid_stream_then_resume_is_exact(migration_env, side):
    migration_env.src("CREATE TABLE public.acc (id int PRIMARY KEY, v bigint NOT NULL);"
                      "INSERT INTO public.acc SELECT g, 0 FROM generate_series(1, 500) g")
    config = start_migration(migration_env)
    with psycopg.connect(**migration_env.source_info().connect_kwargs(), autocommit=True) as conn:
        for i in range(4000):
            conn.execute("UPDATE public.acc SET v = v + 1 WHERE id = %s", (1 + i % 500,))
    errors: list[BaseException] = []

    def apply() -> None:
        try:
            run_incremental(config, migration_env.source_info(), migration_env.destination_info(), window_seconds=10)
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            errors.append(exc)

    worker = threading.Thread(target=apply)
    worker.start()
    time.sleep(0.3)
    server = migration_env.source if side == "source" else migration_env.destination
    server.stop("fast")
    server.start()
    worker.join()
    result = catch_up(migration_env, config)
    assert result.caught_up
    assert migration_env.dst("SELECT sum(v), count(*) FROM public.acc") == [(4000, 500)]
    assert_equal(migration_env, ["public.acc"])


def test_pgbench_workload_during_sync_ends_equal(migration_env):
    bindir = migration_env.source.bindir
    env = {**os.environ, "PGPASSWORD": migration_env.source.password}
    base = ["-h", "127.0.0.1", "-p", str(migration_env.source.port), "-U", "postgres", migration_env.source_db]
    subprocess.run([str(bindir / "pgbench"), "-i", "-s", "1", "-q", *base], check=True, env=env,
                   capture_output=True)
    migration_env.src("ALTER TABLE pgbench_history ADD COLUMN hid bigserial PRIMARY KEY")
    config = start_migration(migration_env)
    subprocess.run([str(bindir / "pgbench"), "-n", "-c", "2", "-T", "4", *base], check=True, env=env,
                   capture_output=True)
    result = catch_up(migration_env, config)
    assert result.transactions > 100
    assert_equal(migration_env, ["public.pgbench_accounts", "public.pgbench_branches", "public.pgbench_tellers",
                                 "public.pgbench_history"])
