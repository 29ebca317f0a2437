"""Filtering: include and exclude by schema, name and pattern, and tables whose definition migrates without rows.

pgcopydb's filtering scenarios select schemas and tables, leave some out, and keep others' definitions without their
data (``exclude-table-data``, here ``objects.exclude_data``): the table, its indexes and constraints exist on the
destination, empty, changes to it are not synced, and materialized views that read it stay unpopulated.
"""

from __future__ import annotations

import pytest

from airflow_pgmigrate.engine.full_load import FullLoadError, run_full_load
from airflow_pgmigrate.engine.schema import migrate_schema
from airflow_pgmigrate.engine.state import MigrationState
from tests.peer.rig import Inventory, assert_same, migrate

SOURCE = """
CREATE SCHEMA foo;
CREATE TABLE foo.tbl_status (id bigserial PRIMARY KEY, name varchar(32) NOT NULL UNIQUE CHECK (name <> ''));
INSERT INTO foo.tbl_status (name) VALUES ('draft'), ('active'), ('closed');
CREATE TABLE foo.tbl1 (id bigserial PRIMARY KEY, status_id bigint NOT NULL DEFAULT 1 REFERENCES foo.tbl_status(id),
                       note varchar(32));
CREATE INDEX tbl1_status_idx ON foo.tbl1 (status_id);
INSERT INTO foo.tbl1 (status_id, note) SELECT 1 + g % 3, 'n' || g FROM generate_series(1, 200) g;
CREATE TABLE foo.big_log (id bigserial PRIMARY KEY, line text);
CREATE INDEX big_log_line ON foo.big_log (line);
INSERT INTO foo.big_log (line) SELECT repeat('x', 50) || g FROM generate_series(1, 500) g;
CREATE MATERIALIZED VIEW foo.log_summary AS SELECT count(*) AS n FROM foo.big_log;
CREATE MATERIALIZED VIEW foo.status_names AS SELECT id, name FROM foo.tbl_status;
CREATE TABLE foo.skip_me (id int PRIMARY KEY);
INSERT INTO foo.skip_me VALUES (1);
CREATE SCHEMA parts;
CREATE TABLE parts.sellers (id bigint, archive smallint NOT NULL, PRIMARY KEY (id, archive)) PARTITION BY LIST (archive);
CREATE TABLE parts.sellers_active PARTITION OF parts.sellers DEFAULT;
CREATE TABLE parts.sellers_archive PARTITION OF parts.sellers FOR VALUES IN (1);
INSERT INTO parts.sellers VALUES (1, 0), (2, 1), (3, 0);
CREATE SCHEMA other;
CREATE TABLE other.t (id int PRIMARY KEY);
INSERT INTO other.t VALUES (1);
"""

DURING_SYNC = [
    "INSERT INTO foo.tbl1 (status_id, note) VALUES (2, 'during sync')",
    "UPDATE foo.tbl1 SET note = 'changed' WHERE id <= 10",
    "INSERT INTO foo.big_log (line) VALUES ('not for the destination')",
    "DELETE FROM foo.big_log WHERE id <= 5",
    "INSERT INTO parts.sellers VALUES (4, 1), (5, 0)",
    "INSERT INTO other.t VALUES (2)",
]

OBJECTS = {"schemas": ["foo", "parts"], "exclude": ["foo.skip_*"],
           "exclude_data": ["foo.big_*", "parts.sellers_archive"]}


def test_exclude_data_keeps_definitions_without_rows_through_load_sync_and_cutover(migration_env):
    migration_env.src(SOURCE)
    run = migrate(migration_env, objects=OBJECTS, changes=DURING_SYNC)
    assert run.full_load["definition_only"] == ["foo.big_log", "parts.sellers_archive"]
    assert "foo.big_log" not in run.full_load["tables"]
    # The definition is there, with its index; the rows are not, and neither are those written during sync.
    assert migration_env.dst("SELECT count(*) FROM foo.big_log") == [(0,)]
    assert migration_env.dst("SELECT indexname FROM pg_indexes WHERE tablename = 'big_log' ORDER BY 1") == \
        [("big_log_line",), ("big_log_pkey",)]
    assert migration_env.dst("SELECT id FROM parts.sellers ORDER BY id") == [(1,), (3,), (5,)]
    # A materialized view reading a table without rows stays unpopulated; the other one is populated.
    assert migration_env.dst("SELECT relname, relispopulated FROM pg_class WHERE relkind = 'm' ORDER BY 1") == \
        [("log_summary", False), ("status_names", True)]
    assert run.cutover["verification"]["equal"] is True
    assert run.cutover["verification"]["definition_only"] == ["foo.big_log", "parts.sellers_archive"]
    views = {v["view"]: v for v in run.cutover["verification"]["materialized_views"]}
    assert "whose rows do not migrate" in views["foo.log_summary"]["note"]
    # Nothing of the schemas left out, nor of the excluded table.
    assert migration_env.dst("SELECT count(*) FROM pg_namespace WHERE nspname = 'other'") == [(0,)]
    assert migration_env.dst("SELECT to_regclass('foo.skip_me')") == [(None,)]
    migration_env.src("DROP TABLE foo.skip_me")  # excluded: the source compares without it (and its constraints)
    source = Inventory.read(migration_env.source_info(), skip_schemas=frozenset({"pgmigrate", "other"}))
    assert_same(source, Inventory.read(migration_env.destination_info()),
                without_rows=frozenset({("foo", "big_log"), ("parts", "sellers_archive")}),
                unpopulated=frozenset({("foo", "log_summary")}))


def test_exclude_data_matching_no_selected_table_fails_the_precheck(migration_env):
    migration_env.src(SOURCE)
    report = migration_env.precheck(objects={**OBJECTS, "exclude_data": ["foo.Big_*", "other.t"]})
    (item,) = [r for r in report.results if r.name == "selected_objects" and r.status == "failed"]
    assert "objects.exclude_data[0] 'foo.Big_*' matches no selected table" in item.detail
    assert "objects.exclude_data[1] 'other.t' matches no selected table" in item.detail


def test_incremental_migration_of_only_definition_only_tables_is_refused(migration_env):
    migration_env.src(SOURCE)
    config = migration_env.config(objects={"schemas": ["other"], "exclude_data": ["other.*"]})
    migrate_schema(config, migration_env.source_info(), migration_env.destination_info(), "pre_data",
                   state=MigrationState(migration_env.destination_info(), config.state_schema, config.name))
    with pytest.raises(FullLoadError, match=r"every selected table is in objects.exclude_data \(other.t\)"):
        run_full_load(config, migration_env.source_info(), migration_env.destination_info())


def test_excluding_a_referenced_table_drops_the_foreign_keys_to_it(migration_env):
    migration_env.src(SOURCE)
    run = migrate(migration_env, objects={"schemas": ["foo"],
                                          "exclude": ["foo.tbl_status", "foo.status_names", "foo.skip_me"]},
                  schema_migration={"foreign_keys_to_excluded": "skip"}, changes=DURING_SYNC[:2])
    assert run.cutover["verification"]["equal"] is True
    assert migration_env.dst("SELECT count(*) FROM foo.tbl1") == migration_env.src("SELECT count(*) FROM foo.tbl1")
    assert migration_env.dst("SELECT count(*) FROM pg_constraint WHERE conrelid = 'foo.tbl1'::regclass "
                             "AND contype = 'f'") == [(0,)]


def test_an_excluded_table_is_neither_published_nor_synced(migration_env):
    migration_env.src(SOURCE + "CREATE TABLE foo.staff (id int PRIMARY KEY, name text); "
                               "INSERT INTO foo.staff VALUES (1, 'Mike');")
    run = migrate(migration_env, objects={"schemas": ["foo"], "exclude": ["foo.staff", "foo.skip_me"]},
                  changes=["UPDATE foo.staff SET name = 'changed'", "INSERT INTO foo.staff VALUES (2, 'new')",
                           "INSERT INTO foo.tbl1 (note) VALUES ('synced')"], cutover=False)
    published = migration_env.src("SELECT tablename FROM pg_publication_tables WHERE pubname = %s ORDER BY 1",
                                  (run.config.publication_name,))
    assert ("staff",) not in published and ("tbl1",) in published
    assert migration_env.dst("SELECT to_regclass('foo.staff')") == [(None,)]
    assert migration_env.dst("SELECT count(*) FROM foo.tbl1 WHERE note = 'synced'") == [(1,)]
