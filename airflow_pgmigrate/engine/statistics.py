"""Planner statistics on the destination: the migrated tables it has none for are analyzed before the switch.

COPY and the change apply leave a destination table without statistics until autovacuum analyzes it, and autovacuum
never analyzes a partitioned table (only its partitions). Queries planned without them can be far slower after the
switch than they were on the source. So every migrated table and partitioned table the destination has no
statistics for gets ``ANALYZE`` (pgcopydb analyzes every table after its copy): in the verification before the
cutover question, while the application still runs, and again at the cutover for what is still missing.

A table that cannot be analyzed (ANALYZE skips a table its role may not analyze with a WARNING, not an error) is
reported with PostgreSQL's reason and the statement to run by hand; the data is not affected, so nothing stops. A
table that has no statistics even after ANALYZE (an empty table, or statistics turned off for its columns) is listed
as such, never counted as analyzed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from airflow_pgmigrate.engine.connection import ConnectionInfo, connect
from airflow_pgmigrate.engine.identifiers import QualifiedName, parse_qualified_name
from airflow_pgmigrate.engine.verify import plan_checks

if TYPE_CHECKING:
    from airflow_pgmigrate.config import MigrationConfig

#: How long an ANALYZE waits for its table's lock (behind DDL being applied, or a vacuum) before it is reported.
LOCK_TIMEOUT = "10s"


def without_statistics(dst: psycopg.Connection, tables: list[QualifiedName]) -> list[tuple[QualifiedName, str]]:
    """The tables (relkind ``r``) and partitioned tables (``p``) of ``tables`` that have no column statistics on this
    server, with their relkind."""
    if not tables:
        return []
    rows = dst.execute(
        "SELECT t.s, t.r, c.relkind::text FROM unnest(%s::text[], %s::text[]) AS t(s, r) "
        "JOIN pg_namespace n ON n.nspname = t.s JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = t.r "
        "WHERE c.relkind IN ('r', 'p') "
        "AND NOT EXISTS (SELECT 1 FROM pg_stats p WHERE p.schemaname = t.s AND p.tablename = t.r) "
        "ORDER BY 1, 2", ([t.schema for t in tables], [t.name for t in tables])).fetchall()
    return [(QualifiedName(schema, name), kind) for schema, name, kind in rows]


def analyze_missing(config: MigrationConfig, source: ConnectionInfo, destination: ConnectionInfo,
                    log: Callable[[str], None] = lambda message: None) -> dict[str, Any]:
    """ANALYZE each migrated table the destination has no statistics for. Returns ``analyzed`` (now with
    statistics), ``failed`` (table: PostgreSQL's reason) and ``empty_or_no_statistics`` (analyzed, still none)."""
    with connect(source) as src:
        targets = sorted({check.target for check in plan_checks(config, src)}, key=str)
    tried: list[str] = []
    failed: dict[str, str] = {}
    with connect(destination, autocommit=True) as dst:
        warnings: list[str] = []
        dst.add_notice_handler(lambda notice: warnings.append(notice.message_primary or "")
                               if notice.severity_nonlocalized == "WARNING" else None)
        dst.execute(sql.SQL("SET client_min_messages = warning; SET lock_timeout = {}").format(
            sql.Literal(LOCK_TIMEOUT)))
        for wanted in ("p", "r"):  # a partitioned table's ANALYZE covers its partitions: look again after them
            for table, kind in without_statistics(dst, targets):
                if kind != wanted:
                    continue
                reason = _analyze(dst, table, warnings, log)
                if reason:
                    failed[str(table)] = reason
                else:
                    tried.append(str(table))
        left = {str(t) for t, _ in without_statistics(dst, targets)}
    for name in tried:
        if name in left:
            log(f"statistics table={name} analyzed, still without statistics (empty, or statistics turned off)")
    return {"analyzed": [t for t in tried if t not in left], "failed": failed,
            "empty_or_no_statistics": [t for t in tried if t in left]}


def _analyze(dst: psycopg.Connection, table: QualifiedName, warnings: list[str], log: Callable[[str], None]) -> str:
    """ANALYZE one table; why it was not analyzed (its WARNINGs, collected in ``warnings``, and its error), or ""."""
    started = time.monotonic()
    warnings.clear()
    try:
        dst.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(table.schema, table.name)))
    except psycopg.Error as exc:
        warnings.append((exc.diag.message_primary or str(exc)).strip())
    reason = "; ".join(warnings)
    log(f"statistics table={table} not analyzed: {reason}" if reason else
        f"statistics table={table} analyzed seconds={time.monotonic() - started:.2f}")
    return reason


def statistics_next_steps(statistics: dict[str, Any] | None) -> list[str]:
    """What to run by hand for each table the ANALYZE failed on (names quoted as SQL needs them)."""
    steps = []
    for table, reason in ((statistics or {}).get("failed") or {}).items():
        name = _quoted(table)
        steps.append(f"the destination has no planner statistics for {table} (ANALYZE failed: {reason}): its owner "
                     f"runs ANALYZE {name};")
    return steps


def _quoted(table: str) -> str:
    name = parse_qualified_name(table)
    return sql.Identifier(name.schema, name.name).as_string(None)


__all__ = ["analyze_missing", "statistics_next_steps", "without_statistics"]
