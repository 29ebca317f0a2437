"""A clone in separate steps, each run twice: every step resumes or recognises finished work, nothing doubles.

pgcopydb's multi-step scenario runs its clone as separate commands (schema dump, pre-data, table data, sequences,
large objects, indexes, constraints, post-data), each with ``--resume``, then compares schema and data. Our steps
are the DAG's tasks; an Airflow retry (or a second run) of any of them must leave the destination as one run does.
"""

from __future__ import annotations

from airflow_pgmigrate.engine.cutover import run_cutover
from airflow_pgmigrate.engine.full_load import run_full_load
from airflow_pgmigrate.engine.incremental import run_incremental
from airflow_pgmigrate.engine.precheck import run_precheck
from airflow_pgmigrate.engine.schema import migrate_schema
from airflow_pgmigrate.engine.state import MigrationState
from tests.peer.rig import assert_migrated
from tests.peer.test_whole_database import DATA, RICH


def test_every_step_run_twice_migrates_once(migration_env):
    migration_env.src(RICH + DATA + "SELECT lo_from_bytea(0, 'a large object')")
    config = migration_env.config(cutover={"freeze_source": True, "writes_stopped_check_seconds": 1})
    source, destination = migration_env.source_info(), migration_env.destination_info()
    state = MigrationState(destination, config.state_schema, config.name)
    for _ in range(2):
        assert not run_precheck(config, source, destination).failures
    first = migrate_schema(config, source, destination, "pre_data", state=state)
    again = migrate_schema(config, source, destination, "pre_data", state=state)
    assert sum(first.created.values()) > 0 and sum(again.created.values()) == 0
    loaded = run_full_load(config, source, destination)
    assert run_full_load(config, source, destination)["already_completed"] is True
    for _ in range(2):
        migrate_schema(config, source, destination, "post_data", state=state)
    migration_env.src("INSERT INTO sales.orders (customer_id, amount) VALUES (1, 42); "
                      "UPDATE sales.customers SET mood = 'happy' WHERE id <= 20; "
                      "REFRESH MATERIALIZED VIEW sales.daily_totals")
    for _ in range(2):
        run_incremental(config, source, destination, window_seconds=20)
    try:
        report = run_cutover(config, source, destination)
        assert run_cutover(config, source, destination)["already_completed"] is True
    finally:
        migration_env.source.execute(f'ALTER DATABASE "{migration_env.source_db}" '
                                     "RESET default_transaction_read_only")
    assert report["verification"]["equal"] is True
    assert loaded["large_objects"] == 1
    assert_migrated(migration_env)
