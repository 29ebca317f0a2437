"""Every migration-type combination DTS offers, end to end through the template DAG (dag.test()) on real servers.

Without schema migration the destination tables are prepared beforehand (the precheck checks they exist and match);
with incremental sync but no full load the destination is loaded by other means, the start step creates the slot,
and writes made after that reach the destination. Each run ends with the destination equal to the source (or, for
[schema] alone, with the empty tables).
"""

from __future__ import annotations

import threading

import pytest

from tests.integration.test_precheck_dag import _run, _states, _xcom

pytestmark = pytest.mark.integration

TABLES = """
CREATE TABLE public.customers (id bigserial PRIMARY KEY, name text NOT NULL);
CREATE TABLE public.orders (id bigserial PRIMARY KEY, customer_id bigint REFERENCES public.customers (id),
                            amount numeric NOT NULL);
"""
ROWS = """
INSERT INTO public.customers (name) SELECT 'c' || g FROM generate_series(1, 100) g;
INSERT INTO public.orders (customer_id, amount) SELECT 1 + g % 100, g FROM generate_series(1, 1000) g;
"""
COMPARED = ("public.customers", "public.orders")


class WritesOnceSlotExists(threading.Thread):
    """Writes on the source from the moment the migration's slot exists (earlier writes could not be captured
    when the destination was loaded by other means)."""

    def __init__(self, env, slot: str, count: int = 150) -> None:
        super().__init__(daemon=True)
        self.env, self.slot, self.count, self.done = env, slot, count, 0
        self.halt = threading.Event()

    def run(self) -> None:
        import psycopg

        while not self.halt.is_set():
            if self.env.src("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (self.slot,)):
                break
            self.halt.wait(0.2)
        with psycopg.connect(**self.env.source_info().connect_kwargs(), autocommit=True) as conn:
            while self.done < self.count and not self.halt.is_set():
                try:
                    with conn.transaction():
                        customer = conn.execute("INSERT INTO public.customers (name) VALUES ('new') "
                                                "RETURNING id").fetchone()[0]
                        conn.execute("INSERT INTO public.orders (customer_id, amount) VALUES (%s, 7)", (customer,))
                        conn.execute("UPDATE public.customers SET name = name || '+' WHERE id = %s",
                                     (max(1, customer - self.done % 100),))
                except psycopg.Error:
                    return  # the cutover froze the source
                self.done += 1
                self.halt.wait(0.01)

    def stop(self) -> None:
        self.halt.set()
        self.join(timeout=10)


def _digest(run, table: str):
    return run(f"SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) FROM {table} t")[0]


def _prepare(env, types: list[str]) -> None:
    env.src(TABLES + ROWS)
    if "schema" not in types:
        env.dst(TABLES)  # prepared by other means
        if "full" not in types:
            env.dst(ROWS)  # ... and loaded by other means


@pytest.mark.parametrize("key, types", [
    ("schema", ["schema"]),
    ("full", ["full"]),
    ("schema_full", ["schema", "full"]),
    ("incremental", ["incremental"]),
    ("schema_incremental", ["schema", "incremental"]),
    ("full_incremental", ["full", "incremental"]),
    ("all", ["schema", "full", "incremental"]),
])
def test_each_migration_type_combination_ends_equal(migration_env, airflow_db, key, types):
    env = migration_env
    if types == ["schema", "incremental"]:
        env.src(TABLES)  # the source starts empty: the rows come through incremental sync alone
    else:
        _prepare(env, types)
    writes = WritesOnceSlotExists(env, f"pgmigrate_it_types_{key}") if "incremental" in types else None
    if writes is not None:
        writes.start()
    try:
        dag_run = _run(f"pgmigrate_it_types_{key}")
    finally:
        if writes is not None:
            writes.stop()
        env.source.execute(f'ALTER DATABASE "{env.source_db}" RESET default_transaction_read_only')
    states = _states(dag_run)
    assert dag_run.state == "success", states
    precheck = {r["name"]: r for r in _xcom(dag_run, "precheck")["results"]}
    if "schema" not in types:
        detail = precheck["name_conflicts"]["detail"]
        assert "exist and match the source" in detail, detail
        assert ("hold rows" in detail) == ("full" not in types), detail
    if types == ["schema"]:
        assert env.dst("SELECT count(*) FROM public.orders") == [(0,)]
        return
    if "incremental" in types:
        assert writes is not None and writes.done > 0
        assert states["cutover"] == "success"
        assert ("start_incremental" in states) == ("full" not in types)
        if "full" not in types:
            start = _xcom(dag_run, "start_incremental")
            assert start["slot_created"] is True and start["start_lsn"]
    if types == ["full"]:
        verified = _xcom(dag_run, "verify")
        assert verified["equal"] is True and verified["rows"] == 1100
    for table in COMPARED:
        assert _digest(env.src, table) == _digest(env.dst, table), table


def test_prepared_tables_that_differ_from_the_source_fail_the_precheck_with_each_difference(migration_env):
    env = migration_env
    env.src(TABLES + ROWS)
    env.dst("CREATE TABLE public.customers (id integer PRIMARY KEY, name text NOT NULL);"
            "CREATE TABLE public.orders (id bigint, customer_id bigint)")
    report = env.precheck(migration_types=["full", "incremental"])
    result = report.result("name_conflicts")
    assert result.status == "failed"
    assert "public.customers: column id is integer, bigint in the source" in result.objects
    assert "public.orders: column amount is missing" in result.objects
    assert "public.orders: key (none) differs from the source's (id)" in result.objects
    assert "make the destination tables match the source" in result.fix


def test_missing_prepared_tables_say_what_to_do(migration_env):
    env = migration_env
    env.src(TABLES)
    result = env.precheck(migration_types=["incremental"]).result("name_conflicts")
    assert result.status == "failed" and set(result.objects) == {"public.customers", "public.orders"}
    assert "add schema to migration_types" in result.fix and "slot" not in result.detail


def test_a_prepared_table_with_a_column_the_source_lacks_fails_the_precheck_when_it_would_stop_the_migration(
        migration_env):
    """A destination column the source does not have: incremental sync stops at the table's first change (it takes
    the column for one dropped on the source, "DDL on the source"), hours after a precheck that passed; a full load
    cannot fill one that is NOT NULL without a default. A full load alone fills a nullable one with its default."""
    env = migration_env
    env.src(TABLES + ROWS)
    env.dst(TABLES.replace("name text NOT NULL)", "name text NOT NULL, migrated_at timestamptz DEFAULT now())"))
    result = env.precheck(migration_types=["full", "incremental"]).result("name_conflicts")
    assert result.status == "failed", result.detail
    assert any(o.startswith("public.customers: column migrated_at is not in the source") for o in result.objects), \
        result.objects
    assert env.precheck(migration_types=["full"]).result("name_conflicts").status == "passed"
    env.dst("ALTER TABLE public.orders ADD COLUMN batch integer NOT NULL")
    result = env.precheck(migration_types=["full"]).result("name_conflicts")
    assert result.status == "failed", result.detail
    assert any(o.startswith("public.orders: column batch is not in the source") for o in result.objects), \
        result.objects


def test_schema_and_incremental_over_a_source_holding_rows_warns_that_they_are_never_copied(migration_env):
    """[schema, incremental] creates the tables empty and applies only the changes made from the start on: the rows
    the source holds now never reach the destination (an update or delete of one stops sync, the cutover's
    verification finds them missing). The precheck says so before the migration starts, naming the tables."""
    env = migration_env
    env.src(TABLES)
    assert env.precheck(migration_types=["schema", "incremental"]).result("name_conflicts").status == "passed"
    env.src(ROWS)
    result = env.precheck(migration_types=["schema", "incremental"]).result("name_conflicts")
    assert result.status == "warning", result.detail
    assert set(result.objects) == {"public.customers", "public.orders"}
    assert "never copied" in result.detail and "add full to migration_types" in result.fix


def test_a_new_start_after_an_abort_records_where_the_new_slot_starts(migration_env):
    """After an abort (slot dropped) a new run of an [incremental] migration creates a new slot: the recorded start
    is where that slot starts. Keeping the first run's start_lsn tells the person loading the destination that
    changes from that older point on are captured, when everything before the new slot is lost."""
    from airflow_pgmigrate.engine.incremental import release
    from airflow_pgmigrate.engine.start import start_incremental

    env = migration_env
    env.src(TABLES + ROWS)
    env.dst(TABLES + ROWS)
    config = env.config(migration_types=["incremental"])
    first = start_incremental(config, env.source_info(), env.destination_info())
    assert first["slot_created"] is True
    release(config, env.source_info())
    env.src("INSERT INTO public.customers (name) SELECT 'lost' FROM generate_series(1, 1000)")
    second = start_incremental(config, env.source_info(), env.destination_info())
    assert second["slot_created"] is True
    slot_start = env.src("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
                         (config.slot_name,))[0][0]
    assert second["start_lsn"] == slot_start != first["start_lsn"], (first, second)
    assert second["started_at"] > first["started_at"]
    again = start_incremental(config, env.source_info(), env.destination_info())  # a retry keeps the start
    assert again["slot_created"] is False and again["start_lsn"] == second["start_lsn"]
