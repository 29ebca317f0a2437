"""The worker SIGKILLed inside each step (schema, full load, incremental sync, cutover), then the retry.

Each step runs in a child process, as in an Airflow worker. An obstacle (a lock or an uncommitted row held by the
test) holds the step at the chosen point; the test sees it waiting there on the server (pg_stat_activity) and kills
the child. The retry runs once the killed worker's sessions are gone (Airflow's heartbeat timeout and retry delay
leave minutes for that) and must end with the destination equal to the source.
"""

from __future__ import annotations

import time

import pytest

from airflow_pgmigrate.engine.cutover import run_cutover
from airflow_pgmigrate.engine.full_load import run_full_load
from airflow_pgmigrate.engine.schema import actual_definitions, expected_definitions, migrate_schema
from airflow_pgmigrate.engine.state import MigrationState
from tests.hardening.rig import (
    Child,
    applied_lsn,
    assert_same_data,
    holding,
    sessions,
    terminate_sessions,
    waiting_on_lock,
)
from tests.integration.test_incremental import catch_up, start_migration

pytestmark = [pytest.mark.integration, pytest.mark.hardening]

SHOP = """
CREATE TYPE public.mood AS ENUM ('sad', 'ok', 'happy');
CREATE TABLE public.customers (id bigserial PRIMARY KEY, name text NOT NULL, mood public.mood);
CREATE TABLE public.orders (id bigserial PRIMARY KEY, customer_id bigint REFERENCES public.customers (id),
                            amount numeric NOT NULL, note text);
CREATE INDEX orders_customer ON public.orders (customer_id);
CREATE VIEW public.big_orders AS SELECT * FROM public.orders WHERE amount > 100;
CREATE TABLE public.zz_last (id int PRIMARY KEY, note text);
INSERT INTO public.customers (name, mood) SELECT 'c' || g, 'ok' FROM generate_series(1, 200) g;
INSERT INTO public.orders (customer_id, amount, note) SELECT 1 + g % 200, g % 300, 'n' || g
  FROM generate_series(1, 5000) g;
INSERT INTO public.zz_last SELECT g, 'z' FROM generate_series(1, 100) g;
"""


def orphans_gone(env, server=None, dbname=None, timeout: float = 30.0) -> None:
    """Wait until the killed worker's sessions have ended on the server (they end once their statement does)."""
    server = server or env.destination
    dbname = dbname or env.destination_db
    deadline = time.monotonic() + timeout
    while sessions(server, dbname, "true"):
        assert time.monotonic() < deadline, sessions(server, dbname, "true")
        time.sleep(0.05)


def definitions_equal(env, config) -> None:
    assert actual_definitions(config, env.destination_info(), ["public"]) == \
        expected_definitions(config, env.source_info())


def test_kill_in_the_middle_of_pre_data_rolls_it_back_and_the_retry_creates_everything(migration_env):
    env = migration_env
    env.src(SHOP)
    config = env.config()
    # The last table of the phase is being created by someone else: pre_data waits there, inside its transaction.
    with holding(env.destination, env.destination_db, "CREATE TABLE public.zz_last (id int)"):
        child = Child(env, "pre_data", env.config_dict())
        child.kill_when(waiting_on_lock(env.destination, env.destination_db, "CREATE TABLE%zz_last%"))
    orphans_gone(env)
    assert env.dst("SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace") == [(0,)], \
        "the killed phase left nothing behind"
    state = MigrationState(env.destination_info(), config.state_schema, config.name)
    migrate_schema(config, env.source_info(), env.destination_info(), "pre_data", state=state)
    run_full_load(config, env.source_info(), env.destination_info())
    migrate_schema(config, env.source_info(), env.destination_info(), "post_data", state=state)
    definitions_equal(env, config)
    assert_same_data(env)


def test_kill_as_pre_data_records_its_end_then_the_retry_succeeds(migration_env):
    """The worker dies when the phase writes its record in the migration state: the retry must neither fail on
    "already exists" (objects it created itself) nor leave anything out."""
    env = migration_env
    env.src(SHOP)
    config = env.config()
    state = MigrationState(env.destination_info(), config.state_schema, config.name)
    with psycopg_conn(env) as conn:
        state.ensure(conn)
    lock = f"LOCK TABLE {config.state_schema}.migration_state IN EXCLUSIVE MODE"  # reads pass, writes wait
    with holding(env.destination, env.destination_db, lock):
        child = Child(env, "pre_data", env.config_dict())
        child.kill_when(waiting_on_lock(env.destination, env.destination_db, "INSERT INTO%migration_state%"))
        terminate_sessions(env.destination, env.destination_db)  # the record was never sent
    orphans_gone(env)
    report = migrate_schema(config, env.source_info(), env.destination_info(), "pre_data", state=state)
    assert not report.differing
    assert state.get("schema.pre_data")["completed"] is True
    run_full_load(config, env.source_info(), env.destination_info())
    migrate_schema(config, env.source_info(), env.destination_info(), "post_data", state=state)
    definitions_equal(env, config)
    assert_same_data(env)


def test_kill_in_the_middle_of_post_data_then_the_retry_builds_the_rest(migration_env):
    env = migration_env
    env.src(SHOP)
    # The full load leaves every index and key to post_data here (the phase this test kills).
    config = env.config(full_load={"build_indexes": False})
    state = MigrationState(env.destination_info(), config.state_schema, config.name)
    migrate_schema(config, env.source_info(), env.destination_info(), "pre_data", state=state)
    run_full_load(config, env.source_info(), env.destination_info())
    # A reader holds orders: its primary key waits, while the other constraints and indexes get built.
    with holding(env.destination, env.destination_db, "LOCK TABLE public.orders IN ACCESS SHARE MODE"):
        child = Child(env, "post_data", env.config_dict(full_load={"build_indexes": False}))
        child.kill_when(waiting_on_lock(env.destination, env.destination_db, "ALTER TABLE%orders%"))
        built = env.dst("SELECT count(*) FROM pg_constraint WHERE connamespace = 'public'::regnamespace")[0][0]
    orphans_gone(env)
    assert built < 4, "killed before the whole phase was built"
    migrate_schema(config, env.source_info(), env.destination_info(), "post_data", state=state)
    definitions_equal(env, config)
    assert_same_data(env)


def test_kill_mid_copy_without_a_slot_then_the_retry_completes(migration_env):
    """Full load without incremental sync (exported snapshot, no slot): killed while a table is being copied."""
    env = migration_env
    env.src(SHOP)
    config_dict = env.config_dict(migration_types=["schema", "full"])
    config = env.config(migration_types=["schema", "full"])
    state = MigrationState(env.destination_info(), config.state_schema, config.name)
    migrate_schema(config, env.source_info(), env.destination_info(), "pre_data", state=state)
    with holding(env.destination, env.destination_db, "LOCK TABLE public.customers IN SHARE MODE"):
        child = Child(env, "full_load", config_dict)
        # The copy's transaction waits on the table: at the TRUNCATE before COPY ... FREEZE, or at the COPY itself.
        child.kill_when(waiting_on_lock(env.destination, env.destination_db, "%customers%"))
    orphans_gone(env)
    report = run_full_load(config, env.source_info(), env.destination_info())
    assert report["completed"] and report["slot"] is None
    assert_same_data(env)


def accounts_in_sync(env, rows: int):
    """Table public.acc of ``rows`` zero balances, migrated and caught up; the config and the applied position."""
    env.src("CREATE TABLE public.acc (id int PRIMARY KEY, v bigint NOT NULL);"
            f"INSERT INTO public.acc SELECT g, 0 FROM generate_series(1, {int(rows)}) g")
    config = start_migration(env)
    catch_up(env, config)
    return config, applied_lsn(env, config.name)


def test_kill_mid_batch_of_incremental_sync_records_nothing_of_the_batch(migration_env):
    env = migration_env
    config, before = accounts_in_sync(env, 2000)
    env.src("UPDATE public.acc SET v = v + 1")  # one transaction: one batch
    env.src("INSERT INTO public.acc VALUES (5000, 5)")
    with holding(env.destination, env.destination_db, "SELECT * FROM public.acc WHERE id = 1500 FOR UPDATE"):
        child = Child(env, "incremental", env.config_dict())
        child.kill_when(lambda: bool(sessions(env.destination, env.destination_db, "wait_event_type = 'Lock'")))
    orphans_gone(env)
    assert applied_lsn(env, config.name) == before, "no part of the killed batch is recorded as applied"
    assert env.dst("SELECT sum(v), count(*) FROM public.acc") == [(0, 2000)], "and none of it is there"
    catch_up(env, config)
    assert env.dst("SELECT sum(v), count(*) FROM public.acc") == [(2005, 2001)]
    assert_same_data(env)


def _frozen(env) -> bool:
    return bool(env.source.execute(
        "SELECT 1 FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase WHERE d.datname = %s "
        "AND 'default_transaction_read_only=on' = ANY(s.setconfig)", "postgres", (env.source_db,)))


@pytest.mark.parametrize("point", ["drain", "release"])
def test_kill_during_cutover_between_freeze_and_finish_then_the_retry_completes(migration_env, point):
    """Killed while draining after the freeze, or after the slot was released but before the report: the retry
    finishes the cutover, the destination equals the source and nothing is left on the source."""
    env = migration_env
    env.src("CREATE TABLE public.acc (id int PRIMARY KEY, v bigint NOT NULL);"
            "INSERT INTO public.acc SELECT g, 0 FROM generate_series(1, 500) g")
    config_dict = env.config_dict(cutover={"approval": "automatic", "freeze_source": True})
    config = start_migration(env, cutover={"approval": "automatic", "freeze_source": True})
    catch_up(env, config)
    env.src("UPDATE public.acc SET v = v + 1 WHERE id <= 300")
    if point == "drain":
        obstacle = holding(env.destination, env.destination_db, "SELECT * FROM public.acc WHERE id = 10 FOR UPDATE")
        server, dbname = env.destination, env.destination_db

        def condition() -> bool:
            return _frozen(env) and bool(sessions(server, dbname, "wait_event_type = 'Lock'"))
    else:
        obstacle = holding(env.source, env.source_db,
                           f"COMMENT ON PUBLICATION {config.publication_name} IS 'held by the test'", walsender=True)
        server, dbname = env.source, env.source_db
        condition = waiting_on_lock(server, dbname, "DROP PUBLICATION%")
    with obstacle:
        child = Child(env, "cutover", config_dict)
        child.kill_when(condition)
    orphans_gone(env, server, dbname)
    assert _frozen(env)
    report = run_cutover(config, env.source_info(), env.destination_info())
    assert report["status"] == "completed" and report["verification"]["equal"] is True
    assert env.dst("SELECT sum(v) FROM public.acc") == [(300,)]
    assert_same_data(env)
    assert env.src("SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s", (config.slot_name,)) == [(0,)]
    assert env.src("SELECT count(*) FROM pg_publication") == [(0,)]


def psycopg_conn(env):
    import psycopg

    return psycopg.connect(**env.destination_info().connect_kwargs(), autocommit=True)


def test_kill_while_the_caps_hold_a_transaction_written_in_parts(migration_env):
    """Under a cap of 200 changes/s a 3,000-change transaction is written in parts into one open destination
    transaction, the reading thread paying the caps between them; killed there, after earlier batches committed.
    Nothing of it is in the destination, the source was never told more than the destination made durable, and the
    retry applies it once."""
    env = migration_env
    config, before = accounts_in_sync(env, 10)
    for i in range(3):
        env.src(f"INSERT INTO public.acc SELECT 100 * {i + 1} + g, 1 FROM generate_series(1, 50) g")
    env.src("UPDATE public.acc SET v = v + 1000 WHERE id <= 10; "
            "INSERT INTO public.acc SELECT 10000 + g, 7 FROM generate_series(1, 3000) g")
    child = Child(env, "incremental", env.config_dict(throttling={"incremental": {"rows_per_second": 200}}))
    child.kill_when(lambda: applied_lsn(env, config.name) != before and bool(
        sessions(env.destination, env.destination_db, "state = 'idle in transaction'")))
    orphans_gone(env)
    applied = applied_lsn(env, config.name)
    assert env.dst("SELECT count(*) FROM public.acc WHERE id > 10000 OR v >= 1000") == [(0,)], "no part of it"
    confirmed = env.src("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
                        (config.slot_name,))[0][0]
    assert env.src("SELECT %s::pg_lsn <= %s::pg_lsn", (confirmed, applied)) == [(True,)], (confirmed, applied)
    catch_up(env, config)
    assert env.dst("SELECT sum(v), count(*) FROM public.acc") == [(10 * 1000 + 150 + 3000 * 7, 3160)]
    assert_same_data(env)
