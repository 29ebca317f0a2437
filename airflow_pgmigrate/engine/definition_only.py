"""Tables whose definition migrates without their rows (``objects.exclude_data``, pgcopydb's exclude-table-data).

Such a table is created by the schema migration with its indexes and constraints, but the full load copies none of
its rows, incremental sync applies none of its changes, verification lists it instead of comparing it, and a
materialized view that reads it (directly or through views) is left unpopulated. Partitions of a matching
partitioned table are matched with it.
"""

from __future__ import annotations

import fnmatch

import psycopg

from airflow_pgmigrate.engine import catalog
from airflow_pgmigrate.engine.foreign_keys import ForeignKey, foreign_keys
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


def materialized_views_without_rows(conn: psycopg.Connection, patterns: list[str]) -> set[QualifiedName]:
    """Source materialized views matching ``patterns``: created on the destination, left unpopulated."""
    if not patterns:
        return set()
    rows = conn.execute("SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                        "WHERE c.relkind = 'm'").fetchall()
    return {QualifiedName(s, n) for s, n in rows if matches(patterns, QualifiedName(s, n))}


def without_rows_problem(key: ForeignKey) -> str:
    """A foreign key of a table whose rows migrate into one whose rows do not: the destination's copy of the
    referenced table lacks the rows it points to, so the key cannot be built there."""
    return (f"foreign key {key.constraint} of {key.table} references {key.referenced}, whose rows do not migrate "
            f"(objects.exclude_data): add {key.table} to objects.exclude_data too, or set "
            "schema_migration.foreign_keys_to_excluded: skip to leave such keys out")


def without_rows_reason(key: ForeignKey) -> str:
    """Why such a key is left out (``foreign_keys_to_excluded: skip``)."""
    return (f"references {key.referenced}, whose rows do not migrate (objects.exclude_data; "
            "schema_migration.foreign_keys_to_excluded: skip)")


def keys_into_tables_without_rows(conn: psycopg.Connection, without_rows: set[QualifiedName]) -> list[ForeignKey]:
    """The foreign keys from a table whose rows migrate into a table of which some rows do not (``without_rows``,
    or one of its partitions is)."""
    if not without_rows:
        return []
    ancestors = catalog.partition_ancestors(conn)
    partly = set(without_rows) | {a for name in without_rows for a in ancestors.get(name, [])}
    return [k for k in foreign_keys(conn) if k.referenced in partly and k.table not in without_rows]


__all__ = ["keys_into_tables_without_rows", "without_rows_problem", "without_rows_reason", "matches", "materialized_views_without_rows",
           "tables_without_rows"]
