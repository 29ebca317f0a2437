"""Reading the source catalog: tables with their keys, columns and sizes; functions; extensions; sessions.

Queries work on PostgreSQL 10 and later. Every name comes back exact, never quoted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg

from airflow_pgmigrate.engine.names import QualifiedName

#: Schemas that are never migrated (the system's, and the migration's own DDL capture on the source).
SYSTEM_SCHEMA_FILTER = "n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast', 'pgmigrate_ddl') " \
                       "AND n.nspname NOT LIKE 'pg\\_temp\\_%' AND n.nspname NOT LIKE 'pg\\_toast\\_temp\\_%'"


@dataclass
class Column:
    name: str
    type: str
    not_null: bool


@dataclass
class TableInfo:
    """One ordinary or partitioned table of the source."""

    name: QualifiedName
    oid: int
    #: 'r' ordinary, 'p' partitioned.
    relkind: str
    owner: str
    is_partition: bool
    #: 'd' default (primary key), 'n' nothing, 'f' full, 'i' index.
    replica_identity: str
    primary_key: list[str] | None
    #: Unique, valid, non-partial indexes on plain NOT NULL columns: index name -> columns.
    unique_not_null: dict[str, list[str]] = field(default_factory=dict)
    columns: list[Column] = field(default_factory=list)
    size_bytes: int = 0
    estimated_rows: int = 0

    @property
    def key_columns(self) -> list[str] | None:
        """The columns that identify a row: the primary key, else the first usable unique index."""
        if self.primary_key:
            return self.primary_key
        for cols in self.unique_not_null.values():
            return cols
        return None

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]


def server_version_num(conn: psycopg.Connection) -> int:
    row = conn.execute("SELECT current_setting('server_version_num')::int").fetchone()
    assert row is not None
    return int(row[0])


def format_version(num: int) -> str:
    """``150018`` -> ``15.18``; ``90624`` -> ``9.6.24``."""
    if num >= 100000:
        return f"{num // 10000}.{num % 10000}"
    return f"{num // 10000}.{num // 100 % 100}.{num % 100}"


def setting(conn: psycopg.Connection, name: str) -> str:
    row = conn.execute("SELECT current_setting(%s)", (name,)).fetchone()
    assert row is not None
    return str(row[0])


def list_tables(conn: psycopg.Connection) -> list[TableInfo]:
    """Every ordinary and partitioned table outside the system schemas (partitions included)."""
    rows = conn.execute(
        f"""
        SELECT c.oid, n.nspname, c.relname, c.relkind, pg_get_userbyid(c.relowner), c.relispartition,
               c.relreplident, greatest(c.reltuples, 0)::bigint,
               CASE WHEN c.relkind = 'r' THEN pg_total_relation_size(c.oid) ELSE 0 END
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relkind IN ('r', 'p') AND {SYSTEM_SCHEMA_FILTER}
           AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                           AND d.objid = c.oid AND d.deptype = 'e')
         ORDER BY n.nspname, c.relname
        """  # noqa: S608 - the only interpolation is a constant
    ).fetchall()
    tables = {
        oid: TableInfo(QualifiedName(schema, name), oid, relkind, owner, is_part, ident, None,
                       estimated_rows=int(est), size_bytes=int(size))
        for oid, schema, name, relkind, owner, is_part, ident, est, size in rows
    }
    if not tables:
        return []
    for oid, attname, typname, notnull in conn.execute(
        """
        SELECT a.attrelid, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull
          FROM pg_attribute a
         WHERE a.attrelid = ANY(%s) AND a.attnum > 0 AND NOT a.attisdropped
         ORDER BY a.attrelid, a.attnum
        """,
        (list(tables),),
    ).fetchall():
        tables[oid].columns.append(Column(attname, typname, notnull))
    for oid, indname, isprimary, cols, all_not_null in conn.execute(
        """
        SELECT i.indrelid, ic.relname, i.indisprimary,
               array(SELECT a.attname FROM unnest(i.indkey) WITH ORDINALITY k(attnum, ord)
                       JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                      ORDER BY k.ord),
               bool_and(a2.attnotnull)
          FROM pg_index i
          JOIN pg_class ic ON ic.oid = i.indexrelid
          JOIN pg_attribute a2 ON a2.attrelid = i.indrelid AND a2.attnum = ANY(i.indkey)
         WHERE i.indrelid = ANY(%s) AND i.indisunique AND i.indisvalid AND i.indpred IS NULL
           AND i.indexprs IS NULL AND NOT (0 = ANY(i.indkey))
         GROUP BY i.indrelid, ic.relname, i.indisprimary, i.indkey
         ORDER BY i.indrelid, i.indisprimary DESC, ic.relname
        """,
        (list(tables),),
    ).fetchall():
        table = tables[oid]
        if isprimary:
            table.primary_key = list(cols)
        elif all_not_null:
            table.unique_not_null[indname] = list(cols)
    return list(tables.values())


def partition_ancestors(conn: psycopg.Connection) -> dict[QualifiedName, list[QualifiedName]]:
    """Each partition -> the partitioned tables above it, nearest first (a row filter on one applies to it)."""
    rows = conn.execute(
        """
        WITH RECURSIVE up(child, parent, depth) AS (
            SELECT i.inhrelid, i.inhparent, 1 FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
             WHERE c.relispartition
          UNION ALL
            SELECT up.child, i.inhparent, up.depth + 1 FROM up JOIN pg_inherits i ON i.inhrelid = up.parent
              JOIN pg_class c ON c.oid = i.inhrelid WHERE c.relispartition
        )
        SELECT cn.nspname, c.relname, pn.nspname, p.relname
          FROM up JOIN pg_class c ON c.oid = up.child JOIN pg_namespace cn ON cn.oid = c.relnamespace
          JOIN pg_class p ON p.oid = up.parent JOIN pg_namespace pn ON pn.oid = p.relnamespace
         ORDER BY 1, 2, up.depth
        """
    ).fetchall()
    out: dict[QualifiedName, list[QualifiedName]] = {}
    for cs, cn, ps, pn in rows:
        out.setdefault(QualifiedName(cs, cn), []).append(QualifiedName(ps, pn))
    return out


def partitions(conn: psycopg.Connection) -> dict[QualifiedName, set[QualifiedName]]:
    """Each partitioned table -> its partitions (one level down)."""
    out: dict[QualifiedName, set[QualifiedName]] = {}
    for ps, pn, cs, cn in conn.execute(
        "SELECT pn.nspname, p.relname, cn.nspname, c.relname FROM pg_inherits i "
        "JOIN pg_class c ON c.oid = i.inhrelid AND c.relispartition JOIN pg_namespace cn ON cn.oid = c.relnamespace "
        "JOIN pg_class p ON p.oid = i.inhparent JOIN pg_namespace pn ON pn.oid = p.relnamespace"
    ).fetchall():
        out.setdefault(QualifiedName(ps, pn), set()).add(QualifiedName(cs, cn))
    return out


def list_schemas(conn: psycopg.Connection) -> list[str]:
    query = f"SELECT n.nspname FROM pg_namespace n WHERE {SYSTEM_SCHEMA_FILTER} ORDER BY 1"  # noqa: S608 - constant
    rows = conn.execute(query).fetchall()
    return [r[0] for r in rows]


def c_functions(conn: psycopg.Connection, schemas: list[str]) -> list[str]:
    """Functions written in C in these schemas that no extension owns (they cannot be migrated)."""
    rows = conn.execute(
        """
        SELECT format('%%I.%%I(%%s)', n.nspname, p.proname, pg_get_function_identity_arguments(p.oid))
          FROM pg_proc p
          JOIN pg_namespace n ON n.oid = p.pronamespace
          JOIN pg_language l ON l.oid = p.prolang
         WHERE l.lanname = 'c' AND n.nspname = ANY(%s)
           AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass
                           AND d.objid = p.oid AND d.deptype = 'e')
         ORDER BY 1
        """,
        (schemas,),
    ).fetchall()
    return [r[0] for r in rows]


def installed_extensions(conn: psycopg.Connection) -> dict[str, str]:
    return dict(conn.execute("SELECT extname, extversion FROM pg_extension ORDER BY 1").fetchall())


def available_extensions(conn: psycopg.Connection) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, version in conn.execute("SELECT name, version FROM pg_available_extension_versions").fetchall():
        out.setdefault(name, []).append(version)
    return out


def existing_relations(conn: psycopg.Connection, names: list[QualifiedName]) -> dict[QualifiedName, str]:
    """Which of these names exist as relations, with their kind (table, view, sequence, ...)."""
    if not names:
        return {}
    kinds = {"r": "table", "p": "partitioned table", "v": "view", "m": "materialized view", "S": "sequence",
             "f": "foreign table", "i": "index", "I": "partitioned index", "c": "composite type"}
    rows = conn.execute(
        """
        SELECT n.nspname, c.relname, c.relkind
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
          JOIN unnest(%s::text[], %s::text[]) AS w(s, t) ON w.s = n.nspname AND w.t = c.relname
        """,
        ([n.schema for n in names], [n.name for n in names]),
    ).fetchall()
    return {QualifiedName(s, t): str(kinds.get(k, k)) for s, t, k in rows}


def long_transactions(conn: psycopg.Connection, min_seconds: int) -> list[dict[str, Any]]:
    """Sessions of this server whose transaction has been open for at least ``min_seconds``."""
    rows = conn.execute(
        """
        SELECT pid, usename, datname, state, extract(epoch FROM now() - xact_start)::bigint,
               backend_xid IS NOT NULL, left(query, 120)
          FROM pg_stat_activity
         WHERE xact_start IS NOT NULL AND pid <> pg_backend_pid()
           AND now() - xact_start >= make_interval(secs => %s)
           AND backend_type = 'client backend'
         ORDER BY xact_start
        """,
        (min_seconds,),
    ).fetchall()
    return [
        {"pid": pid, "user": user, "database": db, "state": state, "seconds": secs, "writes": writes, "query": q}
        for pid, user, db, state, secs, writes, q in rows
    ]


def prepared_transactions(conn: psycopg.Connection) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT gid, owner, database, extract(epoch FROM now() - prepared)::bigint FROM pg_prepared_xacts ORDER BY 4"
    ).fetchall()
    return [{"gid": gid, "owner": owner, "database": db, "seconds": secs} for gid, owner, db, secs in rows]


__all__ = [
    "Column",
    "TableInfo",
    "available_extensions",
    "c_functions",
    "existing_relations",
    "format_version",
    "installed_extensions",
    "list_schemas",
    "list_tables",
    "long_transactions",
    "partition_ancestors",
    "partitions",
    "prepared_transactions",
    "server_version_num",
    "setting",
]
