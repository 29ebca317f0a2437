"""Planner statistics on the destination: the migrated tables it has none for are analyzed before the switch.

COPY and the change apply leave a destination table without statistics until autovacuum analyzes it, and autovacuum
never analyzes a partitioned table (only its partitions). Queries planned without them can be far slower after the
switch than they were on the source. The cutover therefore runs ``ANALYZE`` on every migrated table and partitioned
table the destination has no statistics for (pgcopydb analyzes every table after its copy). A table that cannot be
analyzed is reported with the reason and the statement to run by hand; the data is not affected, so the cutover goes
on.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from airflow_pgmigrate.engine.connection import ConnectionInfo, connect
from airflow_pgmigrate.engine.identifiers import QualifiedName
from airflow_pgmigrate.engine.verify import plan_checks

if TYPE_CHECKING:
    from airflow_pgmigrate.config import MigrationConfig


def without_statistics(dst: psycopg.Connection, tables: list[QualifiedName]) -> list[QualifiedName]:
    """The tables (and partitioned tables) of ``tables`` that have no column statistics on this server."""
    if not tables:
        return []
    rows = dst.execute(
        "SELECT t.s, t.r FROM unnest(%s::text[], %s::text[]) AS t(s, r) "
        "JOIN pg_namespace n ON n.nspname = t.s JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = t.r "
        "WHERE c.relkind IN ('r', 'p') "
        "AND NOT EXISTS (SELECT 1 FROM pg_stats p WHERE p.schemaname = t.s AND p.tablename = t.r) "
        "ORDER BY 1, 2", ([t.schema for t in tables], [t.name for t in tables])).fetchall()
    return [QualifiedName(schema, name) for schema, name in rows]


def analyze_missing(config: MigrationConfig, source: ConnectionInfo, destination: ConnectionInfo,
                    log: Callable[[str], None] = lambda message: None) -> dict[str, Any]:
    """ANALYZE each migrated table the destination has no statistics for; what was analyzed, and what failed why."""
    with connect(source) as src:
        targets = sorted({check.target for check in plan_checks(config, src)}, key=str)
    analyzed: list[str] = []
    failed: dict[str, str] = {}
    warnings: list[str] = []  # ANALYZE skips a table it may not analyze with a WARNING, not an error
    with connect(destination, autocommit=True) as dst:
        dst.add_notice_handler(lambda notice: warnings.append(notice.message_primary or "")
                               if notice.severity_nonlocalized == "WARNING" else None)
        for table in without_statistics(dst, targets):
            started = time.monotonic()
            warnings.clear()
            try:
                dst.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(table.schema, table.name)))
            except psycopg.Error as exc:
                warnings.append((exc.diag.message_primary or str(exc)).strip())
            if warnings:
                failed[str(table)] = "; ".join(warnings)
                log(f"statistics table={table} not analyzed: {failed[str(table)]}")
                continue
            analyzed.append(str(table))
            log(f"statistics table={table} analyzed seconds={time.monotonic() - started:.2f}")
    return {"analyzed": analyzed, "failed": failed}


__all__ = ["analyze_missing", "without_statistics"]
