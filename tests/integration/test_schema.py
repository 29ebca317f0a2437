"""Schema migration against real servers: every object type, renaming, selection, conflicts, re-runs, 15 -> 18."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from airflow_pgmigrate.config import MigrationConfig
from airflow_pgmigrate.engine.connection import ConnectionInfo
from airflow_pgmigrate.engine.names import NameMapper, QualifiedName
from airflow_pgmigrate.engine.schema import (
    SchemaMigrationError,
    actual_definitions,
    expected_definitions,
    migrate_schema,
)
from airflow_pgmigrate.engine.state import MigrationState

pytestmark = pytest.mark.integration

RICH = (Path(__file__).resolve().parents[1] / "fixtures" / "rich_schema.sql").read_text()
SCHEMAS = ["sales", "Inventory", "données"]
MAPPING = {
    "schemas": {"données": "donnees"},
    "tables": {"sales.orders": "purchase_orders"},
    "columns": {"sales.orders": {"amount": "net_amount"}, '"Inventory"."StockItem"': {"Qty": "quantity"}},
}
SAMPLE_ROWS = """
INSERT INTO sales.customers (email, name, home, mood) VALUES
    ('a@example.com', 'Ann', ROW('Main St 1', 'Oslo', '0150'), 'happy'),
    ('b@example.com', 'Bob', NULL, 'sad');
INSERT INTO sales.orders (customer_id, amount, quantity, budget, "Note")
    SELECT 1 + g % 2, g * 10.5, 1 + g % 3, sales.price_range(1, 100), 'note ' || g FROM generate_series(1, 50) g;
INSERT INTO sales.events VALUES (1, '2024-05-01', '{"a": 1}'), (2, '2025-02-01', '{"b": 2}');
INSERT INTO "Inventory"."StockItem" VALUES ('X-1', 5, 'sel', 1);
INSERT INTO "données"."clients" VALUES (1, 'Zoë');
"""


def copy_data(env, config: MigrationConfig, source: ConnectionInfo, destination: ConnectionInfo) -> None:
    """A plain copy of every selected table's rows through the name mapping (the full load's job, simplified)."""
    mapper = NameMapper(config.mapping)
    with psycopg.connect(**source.connect_kwargs(), autocommit=True) as src, \
            psycopg.connect(**destination.connect_kwargs(), autocommit=True) as dst:
        tables = src.execute(
            "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind = 'r' AND n.nspname = ANY(%s) ORDER BY 1, 2", ([s for s in SCHEMAS],)).fetchall()
        dst.execute("SET session_replication_role = replica")
        for schema, name in tables:
            table = QualifiedName(schema, name)
            cols = [r[0] for r in src.execute(
                "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 "
                "AND NOT attisdropped AND attgenerated = '' ORDER BY attnum",
                (sql.Identifier(schema, name).as_string(src),)).fetchall()]
            target = mapper.table(table)
            out = sql.SQL("COPY {} ({}) TO STDOUT").format(sql.Identifier(schema, name),
                                                           sql.SQL(", ").join(map(sql.Identifier, cols)))
            into = sql.SQL("COPY {} ({}) FROM STDIN").format(
                sql.Identifier(target.schema, target.name),
                sql.SQL(", ").join(sql.Identifier(mapper.column(table, c)) for c in cols))
            with src.cursor().copy(out) as reader, dst.cursor().copy(into) as writer:
                for block in reader:
                    writer.write(block)


def schema_config(env, **overrides) -> MigrationConfig:
    data = {"objects": {"schemas": SCHEMAS}, "mapping": MAPPING}
    data.update(overrides)
    return env.config(**data)


def target_schemas(config: MigrationConfig) -> list[str]:
    mapper = NameMapper(config.mapping)
    return sorted({mapper.schema(s) for s in SCHEMAS})


def run_both_phases(env, config, destination: ConnectionInfo):
    state = MigrationState(destination, config.state_schema, config.name)
    pre = migrate_schema(config, env.source_info(), destination, "pre_data", state=state)
    copy_data(env, config, env.source_info(), destination)
    post = migrate_schema(config, env.source_info(), destination, "post_data", state=state)
    return pre, post


def assert_same_definitions(env, config, destination: ConnectionInfo) -> None:
    expected = expected_definitions(config, env.source_info())
    actual = actual_definitions(config, destination, target_schemas(config))
    missing = sorted(set(expected) - set(actual))
    extra = sorted(set(actual) - set(expected))
    assert not missing and not extra, f"missing in destination: {missing}\nunexpected: {extra}"


def test_every_object_type_migrates_with_renaming(migration_env):
    migration_env.src(RICH + SAMPLE_ROWS)
    config = schema_config(migration_env)
    pre, post = run_both_phases(migration_env, config, migration_env.destination_info())

    created = pre.to_dict()["created"]
    for kind in ("schema", "extension", "type", "domain", "collation", "sequence", "table", "view",
                 "materialized view", "function", "procedure", "aggregate", "operator", "comment"):
        assert created.get(kind), f"no {kind} created: {created}"
    post_created = post.to_dict()["created"]
    for kind in ("constraint", "index", "trigger", "fk constraint", "index attach", "rule"):
        assert post_created.get(kind), f"no {kind} created: {post_created}"
    assert post.refreshed == ["sales.daily_totals"]
    skipped = {s["object"]: s["reason"] for s in pre.skipped}
    assert "written in C" in skipped["function sales.c_handler()"]
    review = {r["object"] for r in pre.review}
    assert {"function sales.order_total(bigint)", "procedure sales.archive_before(timestamp with time zone)"} <= review

    assert_same_definitions(migration_env, config, migration_env.destination_info())
    # The renamed table works, with its renamed column, generated column, identity, trigger and views.
    rows = migration_env.dst("SELECT count(*), sum(net_amount), sum(total) FROM sales.purchase_orders")[0]
    assert rows[0] == 50 and rows[1] == migration_env.src("SELECT sum(amount) FROM sales.orders")[0][0]
    assert migration_env.dst("SELECT count(*) FROM sales.big_orders")[0][0] == \
        migration_env.src("SELECT count(*) FROM sales.big_orders")[0][0]
    columns = [r[0] for r in migration_env.dst(
        "SELECT attname FROM pg_attribute WHERE attrelid = 'sales.big_orders'::regclass AND attnum > 0 "
        "ORDER BY attnum")]
    assert columns == ["id", "customer_id", "amount", "Note"], "a view keeps its output names"
    assert migration_env.dst('SELECT quantity FROM "Inventory"."StockItem"')[0][0] == 5
    assert migration_env.dst('SELECT "prénom" FROM donnees.clients')[0][0] == "Zoë"
    assert migration_env.dst("SELECT count(*) FROM sales.daily_totals")[0][0] > 0
    migration_env.dst("UPDATE sales.purchase_orders SET net_amount = net_amount + 1 WHERE id = 1")
    with pytest.raises(psycopg.errors.ForeignKeyViolation):
        migration_env.dst("INSERT INTO sales.purchase_orders (id, customer_id, invoice, net_amount) VALUES (10000, 999, 99999, 1)")


def test_cross_version_15_to_18(migration_env, pg_servers):
    other = pg_servers.other_version()
    if other is None or other.major <= migration_env.source.major:
        pytest.skip("no newer PostgreSQL major version on this machine")
    migration_env.src(RICH + SAMPLE_ROWS)
    dbname = migration_env.destination_db
    other.create_database(dbname)
    try:
        destination = other.info(dbname)
        config = schema_config(migration_env)
        run_both_phases(migration_env, config, destination)
        assert_same_definitions(migration_env, config, destination)
        with psycopg.connect(**destination.connect_kwargs()) as conn:
            assert conn.execute("SELECT count(*) FROM sales.purchase_orders").fetchone()[0] == 50
    finally:
        other.drop_database(dbname)


def test_rerunning_each_phase_changes_nothing(migration_env):
    migration_env.src(RICH + SAMPLE_ROWS)
    config = schema_config(migration_env)
    destination = migration_env.destination_info()
    run_both_phases(migration_env, config, destination)
    before = actual_definitions(config, destination, target_schemas(config))
    state = MigrationState(destination, config.state_schema, config.name)
    for phase in ("pre_data", "post_data"):
        again = migrate_schema(config, migration_env.source_info(), destination, phase, state=state)
        assert again.to_dict()["created_total"] == 0, again.to_dict()["created"]
        assert again.differing == []
        assert any(s["reason"] == "exists already, identical" for s in again.skipped)
    assert actual_definitions(config, destination, target_schemas(config)) == before


def test_conflict_mode_error_changes_nothing(migration_env):
    migration_env.src(RICH)
    migration_env.dst("CREATE SCHEMA sales; CREATE TABLE sales.customers (id int)")
    config = schema_config(migration_env)
    with pytest.raises(SchemaMigrationError) as info:
        migrate_schema(config, migration_env.source_info(), migration_env.destination_info(), "pre_data")
    assert "table sales.customers" in str(info.value) and "nothing was changed" in str(info.value)
    assert migration_env.dst("SELECT to_regclass('sales.purchase_orders'), to_regnamespace('\"Inventory\"')") == \
        [(None, None)]


def test_conflict_mode_ignore_keeps_existing_objects(migration_env):
    migration_env.src(RICH)
    migration_env.dst("CREATE SCHEMA sales; CREATE TABLE sales.bookings (room int, during tstzrange, extra text)")
    config = schema_config(migration_env, conflicting_tables="ignore")
    report = migrate_schema(config, migration_env.source_info(), migration_env.destination_info(), "pre_data")
    assert [d["object"] for d in report.differing] == ["table sales.bookings"]
    assert migration_env.dst("SELECT count(*) FROM pg_attribute WHERE attrelid = 'sales.bookings'::regclass "
                             "AND attname = 'extra'")[0][0] == 1
    assert migration_env.dst("SELECT to_regclass('sales.purchase_orders') IS NOT NULL")[0][0] is True


def test_selection_that_excludes_a_dependency_is_refused(migration_env):
    migration_env.src(RICH)
    config = schema_config(migration_env, objects={"schemas": SCHEMAS, "exclude": ["sales.customers"]})
    with pytest.raises(SchemaMigrationError) as info:
        migrate_schema(config, migration_env.source_info(), migration_env.destination_info(), "pre_data")
    message = str(info.value)
    assert "view sales.big_order_customers reads sales.customers, which is not selected" in message
    assert "nothing was changed" in message
    assert migration_env.dst("SELECT to_regnamespace('sales')")[0][0] is None
    # Excluding the dependent view too leaves only the foreign key, which post_data refuses the same way.
    config = schema_config(migration_env, objects={
        "schemas": SCHEMAS, "exclude": ["sales.customers", "sales.big_order_customers"]})
    migrate_schema(config, migration_env.source_info(), migration_env.destination_info(), "pre_data")
    with pytest.raises(SchemaMigrationError) as info:
        migrate_schema(config, migration_env.source_info(), migration_env.destination_info(), "post_data")
    assert "references sales.customers, which is not selected" in str(info.value)


def test_table_selection_brings_what_the_tables_need_and_nothing_else(migration_env):
    migration_env.src(RICH)
    config = migration_env.config(objects={"tables": ["sales.customers", "sales.events"]})
    destination = migration_env.destination_info()
    pre = migrate_schema(config, migration_env.source_info(), destination, "pre_data")
    migrate_schema(config, migration_env.source_info(), destination, "post_data")
    created = set(pre.objects)
    assert {"type sales.mood", "type sales.address", "domain sales.email", "collation sales.bytewise",
            "table sales.customers", "table sales.events", "table sales.events_2024"} <= created
    assert not any(o.startswith(("view ", "function ", "table sales.orders")) for o in created), created
    assert migration_env.dst("SELECT to_regclass('sales.big_orders'), to_regclass('sales.orders')") == [(None, None)]
    assert migration_env.dst("SELECT count(*) FROM pg_constraint WHERE conrelid = 'sales.customers'::regclass "
                             "AND contype IN ('p', 'u')")[0][0] == 2


def test_a_failing_pre_data_phase_leaves_the_destination_as_it_was(migration_env):
    migration_env.src(RICH)
    # An existing type of another shape makes a later table's default fail midway through the phase.
    migration_env.dst("CREATE SCHEMA sales; CREATE DOMAIN sales.mood AS int")
    config = schema_config(migration_env, conflicting_tables="ignore",
                           mapping={"schemas": {"données": "donnees"}})
    with pytest.raises(SchemaMigrationError) as info:
        migrate_schema(config, migration_env.source_info(), migration_env.destination_info(), "pre_data")
    assert "rolled back" in str(info.value)
    assert migration_env.dst("SELECT to_regclass('sales.customers'), to_regnamespace('\"Inventory\"')") == \
        [(None, None)]


def test_column_selection_creates_only_the_selected_columns(migration_env):
    migration_env.src("CREATE TABLE public.people (id int PRIMARY KEY, name text NOT NULL, ssn text UNIQUE, "
                      "age int CHECK (age > 0), CONSTRAINT ssn_len CHECK (length(ssn) = 9));"
                      "CREATE INDEX people_ssn ON public.people (lower(ssn));"
                      "COMMENT ON COLUMN public.people.ssn IS 'secret'; COMMENT ON COLUMN public.people.name IS 'n';")
    config = migration_env.config(objects={"columns": {"public.people": ["id", "name", "age"]}})
    destination = migration_env.destination_info()
    pre = migrate_schema(config, migration_env.source_info(), destination, "pre_data")
    post = migrate_schema(config, migration_env.source_info(), destination, "post_data")
    assert migration_env.dst("SELECT attname FROM pg_attribute WHERE attrelid = 'public.people'::regclass "
                             "AND attnum > 0 ORDER BY attnum") == [("id",), ("name",), ("age",)]
    assert migration_env.dst("SELECT conname FROM pg_constraint WHERE conrelid = 'public.people'::regclass "
                             "ORDER BY 1") == [("people_age_check",), ("people_pkey",)]
    assert migration_env.dst("SELECT to_regclass('public.people_ssn')") == [(None,)]
    left_out = [s["object"] for s in pre.skipped + post.skipped if "left out" in s["reason"]]
    assert "comment public.COLUMN people.ssn" in left_out and "index public.people_ssn" in left_out
