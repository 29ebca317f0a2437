"""Foreign keys into a table whose rows a row filter narrows: rows of the referencing table may point to rows the
filter leaves out, and post-data then cannot build the key on the destination. The precheck looks for such rows on
the source (the referencing table read with its own filter, if any) before anything is copied."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import psycopg
from psycopg import sql

from airflow_pgmigrate.engine import catalog
from airflow_pgmigrate.engine.identifiers import QualifiedName

if TYPE_CHECKING:
    from airflow_pgmigrate.config import MigrationConfig


@dataclass(frozen=True)
class BrokenKey:
    """A foreign key whose referencing rows point to rows the referenced table's filter leaves out."""

    table: QualifiedName
    constraint: str
    referenced: QualifiedName

    def problem(self) -> str:
        return (f"foreign key {self.constraint} of {self.table} references {self.referenced}, whose row filter "
                f"leaves out rows that rows of {self.table} point to: post_data could not build the key on the "
                "destination")

    def fix(self) -> str:
        return (f"filter {self.table} so that it keeps only rows whose {self.referenced} row is kept "
                f"(filters['{self.table.key}']), or widen filters['{self.referenced.key}']")


_KEYS_SQL = """
SELECT n.nspname, t.relname, k.conname, rn.nspname, r.relname,
       (SELECT array_agg(a.attname ORDER BY x.i) FROM unnest(k.conkey) WITH ORDINALITY AS x(num, i)
          JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = x.num),
       (SELECT array_agg(a.attname ORDER BY x.i) FROM unnest(k.confkey) WITH ORDINALITY AS x(num, i)
          JOIN pg_attribute a ON a.attrelid = k.confrelid AND a.attnum = x.num)
  FROM pg_constraint k
  JOIN pg_class t ON t.oid = k.conrelid JOIN pg_namespace n ON n.oid = t.relnamespace
  JOIN pg_class r ON r.oid = k.confrelid JOIN pg_namespace rn ON rn.oid = r.relnamespace
 WHERE k.contype = 'f'{inherited}
 ORDER BY 1, 2, 3
"""


def keys_broken_by_filters(conn: psycopg.Connection, config: MigrationConfig,
                           moved: set[QualifiedName]) -> list[BrokenKey]:
    """The foreign keys between tables the migration moves (``moved``) that post-data would build and that rows of
    the source, filtered as the migration copies them, would violate on the destination."""
    if not config.filters or not config.wants("schema"):
        return []
    ancestors = catalog.partition_ancestors(conn)

    def filter_of(table: QualifiedName) -> str | None:  # a partition takes the nearest filter above it
        for name in [table, *ancestors.get(table, [])]:
            condition = config.row_filter(name)
            if condition:
                return condition
        return None

    # A key a partition inherits (conparentid, PostgreSQL 11+) is built once, on its partitioned table.
    inherited = " AND k.conparentid = 0" if conn.info.server_version >= 110000 else ""
    broken = []
    for schema, name, constraint, ref_schema, ref_name, columns, ref_columns in conn.execute(
            _KEYS_SQL.format(inherited=inherited)).fetchall():
        table, referenced = QualifiedName(schema, name), QualifiedName(ref_schema, ref_name)
        kept = filter_of(referenced)
        if kept is None or table not in moved or referenced not in moved:
            continue
        query = sql.SQL("SELECT EXISTS (SELECT 1 FROM {t} AS c WHERE ({own}) AND {not_null} AND NOT EXISTS "
                        "(SELECT 1 FROM {r} AS p WHERE {match} AND ({kept})))").format(
            t=sql.Identifier(schema, name), r=sql.Identifier(ref_schema, ref_name),
            own=sql.SQL(filter_of(table) or "true"), kept=sql.SQL(kept),
            not_null=sql.SQL(" AND ").join(sql.SQL("c.{} IS NOT NULL").format(sql.Identifier(c)) for c in columns),
            match=sql.SQL(" AND ").join(sql.SQL("p.{} = c.{}").format(sql.Identifier(p), sql.Identifier(c))
                                        for c, p in zip(columns, ref_columns, strict=True)))
        with conn.transaction(force_rollback=True):
            conn.execute("SET TRANSACTION READ ONLY")
            row = conn.execute(query).fetchone()
        if row and row[0]:
            broken.append(BrokenKey(table, constraint, referenced))
    return broken


__all__ = ["BrokenKey", "keys_broken_by_filters"]
