"""Foreign keys into a table whose rows a row filter narrows: rows of the referencing table may point to rows the
filter leaves out, and post-data then cannot build the key on the destination. The precheck looks for such rows on
the source (the referencing table read with its own filter, if any) before anything is copied."""

from __future__ import annotations

from typing import TYPE_CHECKING

import psycopg
from psycopg import sql

from airflow_pgmigrate.engine import catalog
from airflow_pgmigrate.engine.foreign_keys import ForeignKey, foreign_keys
from airflow_pgmigrate.engine.identifiers import QualifiedName

if TYPE_CHECKING:
    from airflow_pgmigrate.config import MigrationConfig


def broken_key_problem(key: ForeignKey) -> str:
    return (f"foreign key {key.constraint} of {key.table} references {key.referenced}, whose row filter leaves out "
            f"rows that rows of {key.table} point to: post_data could not build the key on the destination")


def broken_key_fix(key: ForeignKey) -> str:
    return (f"filter {key.table} so that it keeps only rows whose {key.referenced} row is kept "
            f"(filters['{key.table.key}']), or widen filters['{key.referenced.key}']")


def keys_broken_by_filters(conn: psycopg.Connection, config: MigrationConfig,
                           moved: set[QualifiedName]) -> list[ForeignKey]:
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

    broken = []
    for key in foreign_keys(conn):
        kept = filter_of(key.referenced)
        if kept is None or key.table not in moved or key.referenced not in moved:
            continue
        query = sql.SQL("SELECT EXISTS (SELECT 1 FROM {t} AS c WHERE ({own}) AND {not_null} AND NOT EXISTS "
                        "(SELECT 1 FROM {r} AS p WHERE {match} AND ({kept})))").format(
            t=sql.Identifier(key.table.schema, key.table.name),
            r=sql.Identifier(key.referenced.schema, key.referenced.name),
            own=sql.SQL(filter_of(key.table) or "true"), kept=sql.SQL(kept),
            not_null=sql.SQL(" AND ").join(sql.SQL("c.{} IS NOT NULL").format(sql.Identifier(c))
                                           for c in key.columns),
            match=sql.SQL(" AND ").join(sql.SQL("p.{} = c.{}").format(sql.Identifier(p), sql.Identifier(c))
                                        for c, p in zip(key.columns, key.referenced_columns, strict=True)))
        with conn.transaction(force_rollback=True):
            conn.execute("SET TRANSACTION READ ONLY")
            row = conn.execute(query).fetchone()
        if row and row[0]:
            broken.append(key)
    return broken


__all__ = ["broken_key_fix", "broken_key_problem", "keys_broken_by_filters"]
