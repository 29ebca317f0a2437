"""Destination tables prepared by other means: a migration without schema migration expects them to exist.

For every selected source table the (mapped) destination table must exist with every migrated column, of the same
type, and the same key; the check also says which tables hold rows, because that is what tells a destination loaded
by other means (``[incremental]``, ``[schema, incremental]``) from one the full load is about to fill (``[full]``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import psycopg
from psycopg import sql

from airflow_pgmigrate.engine import catalog
from airflow_pgmigrate.engine.identifiers import parse_qualified_name
from airflow_pgmigrate.engine.names import NameMapper, QualifiedName

if TYPE_CHECKING:
    from airflow_pgmigrate.config import MigrationConfig


def _unqualified(type_name: str) -> str:
    return re.sub(r'^(?:"(?:[^"]|"")+"|[^".(]+)\.', "", type_name)


@dataclass
class PreparedTables:
    """How the destination's tables compare with what the migration needs."""

    missing: list[str] = field(default_factory=list)
    #: "table: what differs", one entry per difference.
    mismatches: list[str] = field(default_factory=list)
    with_rows: list[str] = field(default_factory=list)
    empty: list[str] = field(default_factory=list)


def _own_columns(dst: psycopg.Connection, table: catalog.TableInfo, source_columns: set[str],
                 incremental: bool) -> list[str]:
    """The destination's columns the source does not have that would stop the migration: any (not generated) one
    when incremental sync follows, since it takes such a column for one dropped on the source and stops at the
    table's first change; else one that is NOT NULL without a default, which no copied row can fill."""
    rows = dst.execute("SELECT attname, attnotnull, atthasdef OR attidentity <> '' FROM pg_attribute "
                       "WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped AND attgenerated = '' "
                       "ORDER BY attnum", (table.oid,)).fetchall()
    out = []
    for name, not_null, has_default in rows:
        if name in source_columns:
            continue
        if incremental:
            out.append(f"{table.name}: column {name} is not in the source (incremental sync would stop at the "
                       "table's first change, taking it for a column dropped on the source)")
        elif not_null and not has_default:
            out.append(f"{table.name}: column {name} is not in the source and is NOT NULL without a default (no "
                       "copied row can fill it)")
    return out


def compare_prepared(src_tables: list[catalog.TableInfo], dst: psycopg.Connection,
                     mapper: NameMapper, config: MigrationConfig | None = None) -> PreparedTables:
    """Compare each source table with its destination table (columns, types, key) and look for rows; with the
    ``config``, also the destination's own columns that would stop its migration types."""
    out = PreparedTables()
    selections = {parse_qualified_name(k) for k in (config.objects.columns if config else {})}
    existing = {t.name: t for t in catalog.list_tables(dst)}
    for table in src_tables:
        target: QualifiedName = mapper.table(table.name)
        there = existing.get(target)
        if there is None:
            out.missing.append(str(target))
            continue
        types = {c.name: c.type for c in there.columns}
        for column in table.columns:
            name = mapper.column(table.name, column.name)
            if name not in types:
                out.mismatches.append(f"{target}: column {name} is missing")
            elif _unqualified(types[name]) != _unqualified(column.type):
                out.mismatches.append(f"{target}: column {name} is {types[name]}, {column.type} in the source")
        if config is not None and table.name not in selections:  # a column selection leaves the others be
            out.mismatches += _own_columns(dst, there, {mapper.column(table.name, c.name) for c in table.columns},
                                           config.wants("incremental"))
        key = [mapper.column(table.name, c) for c in table.key_columns or []]
        # A wider key is fine (a partitioned destination's key holds its partition columns): rows are found by the
        # source's key, which must be part of it.
        if key and not set(key) <= set(there.key_columns or []):
            have = ", ".join(there.key_columns or []) or "none"
            out.mismatches.append(f"{target}: key ({have}) differs from the source's ({', '.join(key)})")
        has_rows = dst.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(
            sql.Identifier(target.schema, target.name))).fetchone()
        (out.with_rows if has_rows and has_rows[0] else out.empty).append(str(target))
    return out


__all__ = ["PreparedTables", "compare_prepared"]
