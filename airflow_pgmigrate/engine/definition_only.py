"""Tables whose definition migrates without their rows (``objects.exclude_data``, pgcopydb's exclude-table-data).

Such a table is created by the schema migration with its indexes and constraints, but the full load copies none of
its rows, incremental sync applies none of its changes, verification lists it instead of comparing it, and a
materialized view that reads it (directly or through views) is left unpopulated. Partitions of a matching
partitioned table are matched with it.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

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


def materialized_views_without_rows(conn: psycopg.Connection, patterns: list[str]) -> set[QualifiedName]:
    """Source materialized views matching ``patterns``: created on the destination, left unpopulated."""
    if not patterns:
        return set()
    rows = conn.execute("SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                        "WHERE c.relkind = 'm'").fetchall()
    return {QualifiedName(s, n) for s, n in rows if matches(patterns, QualifiedName(s, n))}


@dataclass(frozen=True)
class KeyIntoTableWithoutRows:
    """A foreign key of a table whose rows migrate, into one whose rows (some or all) do not: the destination's copy
    of the referenced table lacks the rows it points to, so the key cannot be built there."""

    table: QualifiedName
    constraint: str
    referenced: QualifiedName

    def problem(self) -> str:
        return (f"foreign key {self.constraint} of {self.table} references {self.referenced}, whose rows do not "
                f"migrate (objects.exclude_data): add {self.table} to objects.exclude_data too, or set "
                "schema_migration.foreign_keys_to_excluded: skip to leave such keys out")

    @property
    def reason(self) -> str:
        """Why the key is left out (``foreign_keys_to_excluded: skip``)."""
        return (f"references {self.referenced}, whose rows do not migrate (objects.exclude_data; "
                "schema_migration.foreign_keys_to_excluded: skip)")


def keys_into_tables_without_rows(conn: psycopg.Connection, without_rows: set[QualifiedName]
                                  ) -> list[KeyIntoTableWithoutRows]:
    """The foreign keys (as pg_dump writes them: on a partitioned table, not its partitions) from a table whose rows
    migrate into a table of which some rows do not (``without_rows``, or one of its partitions is)."""
    if not without_rows:
        return []
    ancestors = conn.execute(
        """
        WITH RECURSIVE up(child, parent) AS (
            SELECT i.inhrelid, i.inhparent FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
             WHERE c.relispartition
          UNION ALL
            SELECT up.child, i.inhparent FROM up JOIN pg_inherits i ON i.inhrelid = up.parent
        )
        SELECT cn.nspname, c.relname, pn.nspname, p.relname FROM up
          JOIN pg_class c ON c.oid = up.child JOIN pg_namespace cn ON cn.oid = c.relnamespace
          JOIN pg_class p ON p.oid = up.parent JOIN pg_namespace pn ON pn.oid = p.relnamespace
        """).fetchall()
    partly = set(without_rows) | {QualifiedName(ps, p) for cs, c, ps, p in ancestors
                                  if QualifiedName(cs, c) in without_rows}
    # A key a partition inherits (conparentid, PostgreSQL 11+) is dumped once, on its partitioned table.
    inherited = " AND k.conparentid = 0" if conn.info.server_version >= 110000 else ""
    rows = conn.execute(
        "SELECT n.nspname, t.relname, k.conname, rn.nspname, r.relname FROM pg_constraint k "  # noqa: S608 - constant
        "JOIN pg_class t ON t.oid = k.conrelid JOIN pg_namespace n ON n.oid = t.relnamespace "
        "JOIN pg_class r ON r.oid = k.confrelid JOIN pg_namespace rn ON rn.oid = r.relnamespace "
        "WHERE k.contype = 'f'" + inherited + " ORDER BY 1, 2, 3").fetchall()
    return [KeyIntoTableWithoutRows(QualifiedName(s, t), k, QualifiedName(rs, r)) for s, t, k, rs, r in rows
            if QualifiedName(rs, r) in partly and QualifiedName(s, t) not in without_rows]


__all__ = ["KeyIntoTableWithoutRows", "keys_into_tables_without_rows", "matches", "materialized_views_without_rows",
           "tables_without_rows"]
