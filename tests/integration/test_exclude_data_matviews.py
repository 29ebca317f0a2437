"""``objects.exclude_data`` naming a materialized view: its definition migrates, its contents do not (it stays
unpopulated on the destination, as pgcopydb's exclude-table-data leaves a materialized view), a materialized view
reading it stays unpopulated too, and verification expects exactly that."""

from __future__ import annotations

import pytest

from airflow_pgmigrate.engine.full_load import run_full_load
from airflow_pgmigrate.engine.schema import migrate_schema
from airflow_pgmigrate.engine.verify import compare

pytestmark = pytest.mark.integration

SOURCE = """
CREATE SCHEMA foo;
CREATE TABLE foo.t (id int PRIMARY KEY);
INSERT INTO foo.t SELECT generate_series(1, 10);
CREATE MATERIALIZED VIEW foo.mv_1 AS SELECT id FROM foo.t;
CREATE INDEX mv_1_idx ON foo.mv_1 (id);
CREATE MATERIALIZED VIEW foo.mv_1_exclude_data AS SELECT id FROM foo.t WHERE id > 5;
CREATE MATERIALIZED VIEW foo.mv_reads_excluded_data AS SELECT count(*) AS n FROM foo.mv_1_exclude_data;
"""


def test_exclude_data_keeps_a_materialized_view_unpopulated(migration_env):
    env = migration_env
    env.src(SOURCE)
    overrides = {"objects": {"schemas": ["foo"], "exclude_data": ["foo.mv_1_exclude_data"]},
                 "migration_types": ["schema", "full"]}
    assert not env.precheck(**overrides).failures
    config = env.config(**overrides)
    source, destination = env.source_info(), env.destination_info()
    migrate_schema(config, source, destination, "pre_data")
    run_full_load(config, source, destination)
    post = migrate_schema(config, source, destination, "post_data")
    assert env.dst("SELECT relname, relispopulated FROM pg_class WHERE relkind = 'm' ORDER BY 1") == [
        ("mv_1", True), ("mv_1_exclude_data", False), ("mv_reads_excluded_data", False)]
    assert post.refreshed == ["foo.mv_1"]
    report = compare(config, source, destination)
    assert report["equal"] is True, report["materialized_views"]
    assert "foo.mv_1_exclude_data" in report["definition_only"]
