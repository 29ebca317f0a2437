"""Views and materialized views reading a view or materialized view that does not migrate (excluded by
``objects.exclude``, or in a schema the selection leaves out): the schema migration names each before any change,
as it does for a view reading a table that is not selected, instead of failing half-way on "relation does not
exist" (pgcopydb's filtering scenario excludes a materialized view another one reads)."""

from __future__ import annotations

import pytest

from airflow_pgmigrate.engine.schema import SchemaMigrationError, migrate_schema

pytestmark = pytest.mark.integration

SOURCE = """
CREATE SCHEMA foo;
CREATE TABLE foo.t (id int PRIMARY KEY);
INSERT INTO foo.t VALUES (1);
CREATE MATERIALIZED VIEW foo.mv_kept AS SELECT id FROM foo.t;
CREATE MATERIALIZED VIEW foo.mv_excluded AS SELECT 1 AS id;
CREATE MATERIALIZED VIEW foo.mv_reader AS SELECT * FROM foo.mv_excluded;
CREATE VIEW foo.v_reader AS SELECT * FROM foo.mv_excluded;
CREATE SCHEMA bar;
CREATE VIEW bar.w AS SELECT 2 AS id;
CREATE VIEW foo.v_other_schema AS SELECT * FROM bar.w;
"""


def run(env, config, phase: str = "pre_data"):
    return migrate_schema(config, env.source_info(), env.destination_info(), phase)


def test_a_view_reading_a_view_that_does_not_migrate_is_named_before_any_change(migration_env):
    env = migration_env
    env.src(SOURCE)
    config = env.config(objects={"schemas": ["foo"], "exclude": ["foo.mv_excluded"]})
    with pytest.raises(SchemaMigrationError) as info:
        run(env, config)
    message = str(info.value)
    assert message.startswith("schema migration cannot start, nothing was changed"), message
    assert "materialized view foo.mv_reader reads foo.mv_excluded, which is not migrated" in message, message
    assert "view foo.v_reader reads foo.mv_excluded, which is not migrated" in message, message
    assert "view foo.v_other_schema reads bar.w, which is not migrated" in message, message
    assert env.dst("SELECT to_regclass('foo.t')") == [(None,)]


def test_excluding_the_readers_too_migrates_the_rest(migration_env):
    env = migration_env
    env.src(SOURCE)
    config = env.config(objects={"schemas": ["foo"], "exclude": ["foo.mv_excluded", "foo.*_reader",
                                                                "foo.v_other_schema"]})
    run(env, config)
    run(env, config, "post_data")
    assert env.dst("SELECT relname FROM pg_class WHERE relnamespace = 'foo'::regnamespace AND relkind IN "
                   "('r', 'v', 'm') ORDER BY 1") == [("mv_kept",), ("t",)]


def test_a_view_reading_an_extension_view_outside_the_selection_migrates(migration_env):
    """A view an extension creates exists wherever the extension is installed: reading it is no missing dependency."""
    env = migration_env
    if not env.src("SELECT 1 FROM pg_available_extensions WHERE name = 'pg_stat_statements'"):
        pytest.skip("pg_stat_statements is not installed with this PostgreSQL")
    env.src("CREATE SCHEMA ext; CREATE EXTENSION pg_stat_statements SCHEMA ext; CREATE SCHEMA foo;"
            "CREATE VIEW foo.calls AS SELECT calls FROM ext.pg_stat_statements;")
    env.dst("CREATE SCHEMA ext; CREATE EXTENSION pg_stat_statements SCHEMA ext")
    run(env, env.config(objects={"schemas": ["foo"]}))
    assert env.dst("SELECT to_regclass('foo.calls') IS NOT NULL") == [(True,)]
