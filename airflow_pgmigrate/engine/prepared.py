"""Destination tables prepared by other means: a migration without schema migration expects them to exist.

For every selected source table the (mapped) destination table must exist with every migrated column, of the same
type, and the same key; the check also says which tables hold rows, because that is what tells a destination loaded
by other means (``[incremental]``, ``[schema, incremental]``) from one the full load is about to fill (``[full]``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import psycopg
from psycopg import sql

from airflow_pgmigrate.engine import catalog
from airflow_pgmigrate.engine.names import NameMapper, QualifiedName


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


def compare_prepared(src_tables: list[catalog.TableInfo], dst: psycopg.Connection,
                     mapper: NameMapper) -> PreparedTables:
    """Compare each source table with its destination table (columns, types, key) and look for rows."""
    out = PreparedTables()
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
