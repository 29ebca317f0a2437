"""Driving a migration through the engine and comparing both sides exactly, independently of the verify engine.

The comparison reads every row's text form on each side (sessions pinned by :func:`connect` to the same DateStyle,
IntervalStyle, float digits, bytea format and time zone) and compares the multiset of per-row md5 digests, so tables
without a key and duplicate rows compare too.
"""

from __future__ import annotations

from collections import Counter

from psycopg import sql

from airflow_pgmigrate.config import MigrationConfig
from airflow_pgmigrate.engine.connection import ConnectionInfo, connect
from airflow_pgmigrate.engine.full_load import run_full_load
from airflow_pgmigrate.engine.incremental import SyncResult, run_incremental
from airflow_pgmigrate.engine.names import QualifiedName
from airflow_pgmigrate.engine.schema import migrate_schema
from airflow_pgmigrate.engine.state import MigrationState


def start_migration(config: MigrationConfig, source: ConnectionInfo, destination: ConnectionInfo) -> dict:
    """Schema (pre-data), full load (slot included), schema (post-data); returns the full-load report."""
    state = MigrationState(destination, config.state_schema, config.name)
    migrate_schema(config, source, destination, "pre_data", state=state)
    report = run_full_load(config, source, destination)
    migrate_schema(config, source, destination, "post_data", state=state)
    return report


def catch_up(config: MigrationConfig, source: ConnectionInfo, destination: ConnectionInfo,
             rounds: int = 20) -> SyncResult:
    for _ in range(rounds):
        result = run_incremental(config, source, destination, window_seconds=30)
        if result.caught_up:
            return result
    raise AssertionError("incremental sync did not catch up")


def row_digests(info: ConnectionInfo, table: QualifiedName, where: str | None = None) -> Counter[str]:
    """The multiset of md5 digests of every row's text form (of the rows ``where`` selects, if given)."""
    with connect(info) as conn:
        # ROW(r.*) is the whole row even when a column is named like the alias.
        rows = conn.execute(sql.SQL("SELECT md5(ROW(r.*)::text) FROM ONLY {} AS r WHERE {}").format(
            sql.Identifier(table.schema, table.name), sql.SQL(where or "true"))).fetchall()
    return Counter(r[0] for r in rows)


def assert_tables_equal(source: ConnectionInfo, destination: ConnectionInfo,
                        tables: dict[QualifiedName, QualifiedName], filters: dict[QualifiedName, str] | None = None
                        ) -> None:
    """Every source table (key) has exactly the rows of its destination table (value); ``filters`` select the
    source rows expected for a table (a test's own condition, not the migration's)."""
    for src_name, dst_name in tables.items():
        expected = row_digests(source, src_name, (filters or {}).get(src_name))
        actual = row_digests(destination, dst_name)
        assert sum(expected.values()) > 0, f"{src_name} is empty: the comparison would prove nothing"
        missing, extra = expected - actual, actual - expected
        assert not missing and not extra, (
            f"{src_name} -> {dst_name}: {sum(missing.values())} row(s) missing or different, "
            f"{sum(extra.values())} row(s) extra or different (of {sum(expected.values())})")


__all__ = ["assert_tables_equal", "catch_up", "row_digests", "start_migration"]
