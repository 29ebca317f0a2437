"""The precheck engine against real servers: a passing precheck, and a failing one for each item."""

from __future__ import annotations

import time

import psycopg
import pytest

from airflow_pgmigrate.engine.connection import ConnectionInfo
from airflow_pgmigrate.engine.precheck import CHECK_NAMES, PrecheckContext, check_source_version
from airflow_pgmigrate.engine.results import PrecheckReport

pytestmark = pytest.mark.integration

SHOP = """
CREATE TABLE public.customers (id bigint PRIMARY KEY, name text NOT NULL, email text);
CREATE TABLE public.orders (id bigint PRIMARY KEY, customer_id bigint REFERENCES public.customers(id),
                            amount numeric(12,2), created_at timestamptz DEFAULT now());
CREATE SCHEMA sales;
CREATE TABLE sales.items (sku text PRIMARY KEY, price numeric);
INSERT INTO public.customers SELECT g, 'c' || g, NULL FROM generate_series(1, 50) g;
INSERT INTO public.orders SELECT g, 1 + g % 50, g * 1.5 FROM generate_series(1, 200) g;
"""


def results_of(report: PrecheckReport, name: str, status: str) -> list:
    return [r for r in report.results if r.name == name and r.status == status]


def only_failures(report: PrecheckReport) -> set[str]:
    return {r.name for r in report.failures}


def test_passing_precheck_reports_every_item(migration_env):
    migration_env.src(SHOP)
    report = migration_env.precheck()
    assert report.failures == [], report.format_table()
    assert report.warnings == [], report.format_table()
    statuses = report.statuses()
    # Every item ran (or said why not); the RDS items are absent without an rds block.
    assert set(statuses) == set(CHECK_NAMES) - {n for n in CHECK_NAMES if n.startswith("rds_")}
    assert statuses["destination_space"] == "skipped"
    assert "3 table(s) selected" in report.result("selected_objects").detail
    data = report.to_dict()
    assert data["passed"] is True and data["counts"]["failed"] == 0
    assert "precheck report migration=" in report.format_table()


def test_table_without_key_is_named(migration_env):
    migration_env.src(SHOP + "CREATE TABLE public.events (at timestamptz, payload jsonb);")
    report = migration_env.precheck()
    assert only_failures(report) == {"primary_keys"}
    (item,) = results_of(report, "primary_keys", "failed")
    assert item.objects == ["public.events"]
    assert "ADD PRIMARY KEY" in item.fix and "REPLICA IDENTITY FULL" in item.fix


def test_table_without_key_fails_only_where_a_key_is_needed(migration_env):
    migration_env.src(SHOP + "CREATE TABLE public.events (at timestamptz, payload jsonb);"
                             "CREATE TABLE public.audit (line text); ALTER TABLE public.audit REPLICA IDENTITY FULL;")
    # A full load copies rows exactly without a key: a warning naming the tables, nothing blocks.
    report = migration_env.precheck(migration_types=["schema", "full"])
    assert report.statuses()["primary_keys"] == "warning" and not report.failures
    (item,) = results_of(report, "primary_keys", "warning")
    assert item.objects == ["public.audit", "public.events"] and "ADD PRIMARY KEY" in item.fix
    # conflicting_tables: ignore finds rows already there by key: both tables fail, replica identity or not.
    report = migration_env.precheck(migration_types=["full"], conflicting_tables="ignore")
    (item,) = results_of(report, "primary_keys", "failed")
    assert item.objects == ["public.audit", "public.events"] and "conflicting_tables: ignore" in item.detail
    # Incremental UPDATE and DELETE need one; REPLICA IDENTITY FULL stands in for it (a warning).
    report = migration_env.precheck()
    assert [r.objects for r in results_of(report, "primary_keys", "failed")] == [["public.events"]]
    assert [r.objects for r in results_of(report, "primary_keys", "warning")] == [["public.audit"]]


def test_unique_not_null_table_needs_replica_identity_for_incremental(migration_env):
    migration_env.src("CREATE TABLE public.tags (code text NOT NULL UNIQUE, label text);")
    report = migration_env.precheck()
    (item,) = results_of(report, "primary_keys", "failed")
    assert item.objects == ["public.tags"]
    assert 'REPLICA IDENTITY USING INDEX "tags_code_key"' in item.fix
    # Without incremental migration the unique NOT NULL constraint is enough.
    report = migration_env.precheck(migration_types=["schema", "full"])
    assert report.statuses()["primary_keys"] == "passed"


def test_replica_identity_full_is_a_warning(migration_env):
    migration_env.src("CREATE TABLE public.logbook (line text); ALTER TABLE public.logbook REPLICA IDENTITY FULL;")
    report = migration_env.precheck()
    assert report.statuses()["primary_keys"] == "warning"
    assert report.result("primary_keys").objects == ["public.logbook"]


def test_c_function_is_named(migration_env):
    migration_env.src(SHOP + "CREATE FUNCTION public.my_handler() RETURNS language_handler "
                             "AS '$libdir/plpgsql', 'plpgsql_call_handler' LANGUAGE c;")
    report = migration_env.precheck()
    assert report.failures == []
    (item,) = results_of(report, "c_functions", "warning")
    assert item.objects == ["public.my_handler()"]
    # Functions owned by an extension are created by the extension, not migrated by us.
    migration_env.src("DROP FUNCTION public.my_handler(); CREATE EXTENSION IF NOT EXISTS pg_trgm;")
    assert migration_env.precheck().statuses()["c_functions"] == "passed"


def test_wal_level_not_logical(migration_env):
    # The destination server runs with wal_level=replica: use it as a source.
    migration_env.dst(SHOP)
    report = migration_env.precheck(source=migration_env.destination_info(),
                                    destination=migration_env.source_info())
    (item,) = results_of(report, "wal_level", "failed")
    assert "wal_level = replica" in item.detail
    assert "rds.logical_replication" in item.fix
    # Only incremental migration needs it.
    report = migration_env.precheck(source=migration_env.destination_info(),
                                    destination=migration_env.source_info(), migration_types=["schema", "full"])
    assert report.statuses()["wal_level"] == "skipped"


def test_missing_source_privileges_are_listed_with_grants(migration_env):
    migration_env.src(SHOP)
    migration_env.create_role(migration_env.source, "pgm_reader", "reader-pw")
    report = migration_env.precheck(source=migration_env.source_info("pgm_reader", "reader-pw"))
    (item,) = results_of(report, "source_privileges", "failed")
    assert "SELECT on public.customers" in item.detail
    assert "REPLICATION" in item.detail
    assert 'GRANT SELECT ON "public"."orders" TO "pgm_reader";' in item.fix
    assert 'ALTER ROLE "pgm_reader" REPLICATION;' in item.fix


def test_least_privilege_source_account_passes(migration_env):
    migration_env.src(SHOP)
    migration_env.create_role(migration_env.source, "pgm_repl", "repl-pw", "REPLICATION")
    db = migration_env.source_db
    migration_env.src(f'GRANT CREATE ON DATABASE "{db}" TO pgm_repl; GRANT USAGE ON SCHEMA sales TO pgm_repl; '
                      "ALTER TABLE public.customers OWNER TO pgm_repl; ALTER TABLE public.orders OWNER TO pgm_repl; "
                      "ALTER TABLE sales.items OWNER TO pgm_repl;")
    report = migration_env.precheck(source=migration_env.source_info("pgm_repl", "repl-pw"))
    assert report.statuses()["source_privileges"] == "passed", report.format_table()


def test_missing_destination_privileges(migration_env):
    migration_env.src(SHOP)
    migration_env.create_role(migration_env.destination, "pgm_writer", "writer-pw")
    migration_env.dst("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
    report = migration_env.precheck(destination=migration_env.destination_info("pgm_writer", "writer-pw"))
    (item,) = results_of(report, "destination_privileges", "failed")
    assert "CREATE and USAGE on schema public" in item.detail
    assert "CREATE on the database (to create schema sales)" in item.detail
    assert f'GRANT CREATE ON DATABASE "{migration_env.destination_db}" TO "pgm_writer";' in item.fix
    assert 'ALTER SCHEMA "public" OWNER TO "pgm_writer";' in item.fix


def test_name_conflict_error_and_ignore_modes(migration_env):
    migration_env.src(SHOP)
    migration_env.dst("CREATE TABLE public.orders (id bigint PRIMARY KEY)")
    report = migration_env.precheck()
    (item,) = results_of(report, "name_conflicts", "failed")
    assert item.objects == ["public.orders (table)"]
    assert "conflicting_tables: ignore" in item.fix
    report = migration_env.precheck(conflicting_tables="ignore")
    assert report.statuses()["name_conflicts"] == "warning"
    # Renaming the table in the destination resolves the conflict.
    report = migration_env.precheck(mapping={"tables": {"public.orders": "orders_v2"}})
    assert report.statuses()["name_conflicts"] == "passed"


def test_incremental_only_needs_existing_destination_tables(migration_env):
    migration_env.src(SHOP)
    report = migration_env.precheck(migration_types=["incremental"])
    (item,) = results_of(report, "name_conflicts", "failed")
    assert "public.orders" in item.objects


def test_version_mismatch_is_a_warning(migration_env, pg_servers):
    other = pg_servers.other_version()
    if other is None:
        pytest.skip("only one PostgreSQL major version on this machine")
    migration_env.src(SHOP)
    dbname = migration_env.destination_db
    other.create_database(dbname)
    try:
        report = migration_env.precheck(destination=other.info(dbname))
    finally:
        other.drop_database(dbname)
    (item,) = results_of(report, "version_match", "warning")
    assert f"destination {other.major}." in item.detail
    assert "failed" not in report.statuses().values()


def test_extension_missing_on_destination(migration_env, pg_servers):
    other = pg_servers.other_version()
    if other is None:
        pytest.skip("only one PostgreSQL major version on this machine")
    query = "SELECT name FROM pg_available_extensions ORDER BY name"
    here = {r[0] for r in migration_env.source.execute(query)}
    there = {r[0] for r in other.execute(query)}
    candidates = sorted(here - there - {"adminpack", "old_snapshot"})
    if not candidates:
        pytest.skip("no extension that only the source server has")
    extension = candidates[0]
    migration_env.src(f'CREATE EXTENSION "{extension}"; CREATE TABLE t (id int PRIMARY KEY)')
    dbname = migration_env.destination_db
    other.create_database(dbname)
    try:
        report = migration_env.precheck(destination=other.info(dbname))
    finally:
        other.drop_database(dbname)
    (item,) = results_of(report, "extensions", "failed")
    assert item.objects == [extension]


def test_long_running_transaction_is_named(migration_env):
    migration_env.src(SHOP)
    with psycopg.connect(**migration_env.source_info().connect_kwargs()) as holder:
        holder.execute("INSERT INTO public.customers VALUES (1000, 'held', NULL)")  # opens a writing transaction
        pid = holder.info.backend_pid
        time.sleep(1.2)
        report = migration_env.precheck(precheck={"long_transaction_seconds": 1})
        holder.rollback()
    (item,) = results_of(report, "long_transactions", "warning")
    assert f"pid {pid}" in item.detail and "has written" in item.detail
    assert f"pg_terminate_backend({pid})" in item.fix


def test_prepared_transaction_fails_incremental(migration_env):
    migration_env.src(SHOP)
    with psycopg.connect(**migration_env.source_info().connect_kwargs(), autocommit=True) as conn:
        conn.execute("BEGIN")
        conn.execute("INSERT INTO public.customers VALUES (2000, 'prepared', NULL)")
        conn.execute("PREPARE TRANSACTION 'pgm_test_gid'")
    try:
        report = migration_env.precheck()
    finally:
        migration_env.src("ROLLBACK PREPARED 'pgm_test_gid'")
    (item,) = results_of(report, "prepared_transactions", "failed")
    assert item.objects == ["pgm_test_gid"]
    assert "ROLLBACK PREPARED 'pgm_test_gid'" in item.fix


def test_connection_failures_are_reported_and_dependent_checks_skipped(migration_env):
    migration_env.src(SHOP)
    bad = ConnectionInfo(host="127.0.0.1", port=migration_env.source.port, dbname=migration_env.source_db,
                         user="postgres", password="wrong-password-123")
    report = migration_env.precheck(source=bad)
    (item,) = results_of(report, "source_connection", "failed")
    assert "password authentication failed" in item.detail
    assert "wrong-password-123" not in str(report.to_dict())
    assert report.statuses()["primary_keys"] == "skipped"
    assert report.statuses()["destination_connection"] == "passed"


def test_tls_setting_of_the_connection_is_honoured(migration_env):
    migration_env.src(SHOP)
    info = migration_env.source_info()
    tls = ConnectionInfo(host=info.host, port=info.port, dbname=info.dbname, user=info.user,
                         password=info.password, params={"sslmode": "require"})
    report = migration_env.precheck(source=tls)
    (item,) = results_of(report, "source_connection", "failed")
    assert "SSL" in item.detail and "sslmode=require" in item.detail


def test_selected_objects_must_exist(migration_env):
    migration_env.src(SHOP)
    report = migration_env.precheck(objects={"tables": ["public.order", "public.customers"],
                                             "columns": {"public.customers": ["id", "nickname"]}})
    (item,) = results_of(report, "selected_objects", "failed")
    assert "table public.order does not exist (did you mean public.orders?)" in item.detail
    assert "public.customers has no column nickname" in item.detail


def test_column_selection_must_keep_the_key(migration_env):
    migration_env.src(SHOP)
    report = migration_env.precheck(objects={"columns": {"public.customers": ["name"]}})
    (item,) = results_of(report, "selected_objects", "failed")
    assert "leaves out key column(s) id" in item.detail


def test_empty_selection_fails(migration_env):
    migration_env.src(SHOP)
    report = migration_env.precheck(objects={"schemas": ["public"], "exclude": ["public.*"]})
    (item,) = results_of(report, "selected_objects", "failed")
    assert "matches no table" in item.detail


def test_row_filter_over_unknown_column(migration_env):
    migration_env.src(SHOP)
    report = migration_env.precheck(filters={"public.orders": "amount > 10",
                                             "public.customers": "nickname = 'x'"})
    (item,) = results_of(report, "row_filters", "failed")
    assert item.objects == ['public.customers: column "nickname" does not exist']
    assert migration_env.precheck(filters={"public.orders": "amount > 10"}).statuses()["row_filters"] == "passed"


def test_mapped_names_must_not_collide(migration_env):
    migration_env.src('CREATE TABLE public."Orders" (id int PRIMARY KEY); CREATE TABLE public.orders (id int PRIMARY KEY);'
                      'CREATE TABLE public.people (id int PRIMARY KEY, "Name" text, name text)')
    report = migration_env.precheck(mapping={"name_case": "lower"})
    (item,) = [r for r in report.failures if r.name == "name_mapping"]
    assert "public.Orders and public.orders both map to public.orders" in item.detail \
        or "public.orders and public.Orders both map to public.orders" in item.detail
    assert "columns Name and name of public.people both map to name" in item.detail
    report = migration_env.precheck(mapping={"name_case": "lower", "tables": {'public."Orders"': "orders_upper"},
                                             "columns": {"public.people": {"Name": "display_name"}}})
    assert report.statuses()["name_mapping"] == "passed"


def test_replication_slots_exhausted(migration_env):
    migration_env.src(SHOP)
    free = migration_env.src("SELECT current_setting('max_replication_slots')::int - count(*) "
                             "FROM pg_replication_slots")[0][0]
    names = [f"pgm_fill_{i}" for i in range(free)]
    for name in names:
        migration_env.src("SELECT pg_create_physical_replication_slot(%s)", (name,))
    try:
        report = migration_env.precheck()
    finally:
        for name in names:
            migration_env.src("SELECT pg_drop_replication_slot(%s)", (name,))
    (item,) = results_of(report, "replication_capacity", "failed")
    assert "replication slots are in use" in item.detail


def test_items_can_be_skipped_by_name(migration_env):
    migration_env.src(SHOP + "CREATE TABLE public.events (at timestamptz);")
    report = migration_env.precheck(precheck={"skip": ["primary_keys"]})
    assert report.failures == []
    assert report.result("primary_keys").status == "skipped"
    assert report.result("primary_keys").detail == "skipped by configuration"


def test_source_older_than_10_4_fails(migration_env):
    ctx = PrecheckContext(migration_env.config(), migration_env.source_info(), migration_env.destination_info(),
                          source_version=90624)
    (item,) = check_source_version(ctx)
    assert item.status == "failed" and "PostgreSQL 9.6.24" in item.detail


def test_pg_dump_is_found_for_the_source_version(migration_env, monkeypatch):
    migration_env.src(SHOP)
    report = migration_env.precheck()
    assert report.statuses()["pg_dump"] == "passed"
    assert f"reads the source's PostgreSQL {migration_env.source.major}" in report.result("pg_dump").detail
    # A machine whose pg_dump binaries are all older than the source cannot migrate the schema.
    from airflow_pgmigrate.engine import pgdump

    monkeypatch.setattr(pgdump, "available_pg_dumps", lambda: [pgdump.PgDump(pgdump.Path("/old/pg_dump"), 9)])
    report = migration_env.precheck()
    (item,) = results_of(report, "pg_dump", "failed")
    assert f"no pg_dump of version {migration_env.source.major} or later" in item.detail


#: Objects narrower than PostgreSQL's defaults for PUBLIC; plain_twice keeps the default (every role executes it).
NARROWED = """
CREATE SCHEMA app;
CREATE TABLE app.accounts (id bigint PRIMARY KEY);
CREATE FUNCTION app.secure_lookup(account_id bigint) RETURNS bigint LANGUAGE sql SECURITY DEFINER
    AS 'SELECT account_id';
REVOKE ALL ON FUNCTION app.secure_lookup(bigint) FROM PUBLIC;
CREATE TYPE app.mood AS ENUM ('sad', 'happy');
REVOKE USAGE ON TYPE app.mood FROM PUBLIC;
CREATE FUNCTION app.plain_twice(x int) RETURNS int LANGUAGE sql AS 'SELECT x * 2';
"""


def test_privileges_narrower_than_public_defaults_are_named_when_grants_are_not_migrated(migration_env):
    migration_env.src(SHOP)
    item = migration_env.precheck().result("privileges_not_migrated")
    assert item.status == "passed" and "grants are not migrated" in item.detail
    migration_env.src(NARROWED)
    report = migration_env.precheck()
    assert report.failures == [], report.format_table()
    (item,) = results_of(report, "privileges_not_migrated", "warning")
    assert item.objects == ["function app.secure_lookup(account_id bigint) (no EXECUTE for PUBLIC)",
                            "type app.mood (no USAGE for PUBLIC)"]
    assert "2 object(s)" in item.detail and "open to every role" in item.detail
    assert "schema_migration.migrate_grants: true" in item.fix
    # Database-wide default privileges that revoke from PUBLIC are named too.
    migration_env.src("ALTER DEFAULT PRIVILEGES REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC")
    (item,) = results_of(migration_env.precheck(), "privileges_not_migrated", "warning")
    assert item.objects[0] == "default privileges of postgres on functions (no EXECUTE for PUBLIC)"
    assert len(item.objects) == 3
    migration_env.src("ALTER DEFAULT PRIVILEGES GRANT EXECUTE ON FUNCTIONS TO PUBLIC")
    # A selection without the app schema migrates neither object.
    report = migration_env.precheck(objects={"schemas": ["sales"]})
    assert report.result("privileges_not_migrated").status == "passed"
    # With grants migrated the revokes arrive: nothing to warn about.
    report = migration_env.precheck(schema_migration={"migrate_grants": True})
    assert report.result("privileges_not_migrated").status == "passed"
