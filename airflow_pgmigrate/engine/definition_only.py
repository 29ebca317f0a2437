"""Tables whose definition migrates without their rows (``objects.exclude_data``, pgcopydb's exclude-table-data).

Such a table is created by the schema migration with its indexes and constraints, but the full load copies none of
its rows, incremental sync applies none of its changes, verification lists it instead of comparing it, and a
materialized view that reads it (directly or through views) is left unpopulated. Partitions of a matching
partitioned table are matched with it.
"""

from __future__ import annotations

import fnmatch

import psycopg

from airflow_pgmigrate.engine.names import QualifiedName


def matches(patterns: list[str], table: QualifiedName) -> bool:
    """Whether ``schema.table`` (unquoted) matches one of the glob ``patterns``."""
    return any(fnmatch.fnmatchcase(table.key, p) for p in patterns)


def tables_without_rows(conn: psycopg.Connection, patterns: list[str]) -> set[QualifiedName]:
    """Source tables matching ``patterns`` (``objects.exclude_data``), with every partition (at any depth) of those."""
    if not patterns:
        return set()
    rows = conn.execute(
        """
        WITH RECURSIVE tree(oid, ancestor) AS (
            SELECT c.oid, c.oid FROM pg_class c WHERE c.relkind IN ('r', 'p')
            UNION ALL
            SELECT i.inhrelid, tree.ancestor FROM pg_inherits i JOIN tree ON tree.oid = i.inhparent
              JOIN pg_class p ON p.oid = i.inhparent AND p.relkind = 'p'
        )
        SELECT n.nspname, c.relname, an.nspname, a.relname FROM tree
          JOIN pg_class c ON c.oid = tree.oid JOIN pg_namespace n ON n.oid = c.relnamespace
          JOIN pg_class a ON a.oid = tree.ancestor JOIN pg_namespace an ON an.oid = a.relnamespace
         WHERE n.nspname !~ '^pg_' AND n.nspname <> 'information_schema'
        """).fetchall()
    out: set[QualifiedName] = set()
    for schema, name, ancestor_schema, ancestor in rows:
        if matches(patterns, QualifiedName(ancestor_schema, ancestor)):
            out.add(QualifiedName(schema, name))
    return out


__all__ = ["matches", "tables_without_rows"]
