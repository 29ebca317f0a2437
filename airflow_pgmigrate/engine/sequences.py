"""Sequence values: logical replication does not carry them, so the migration sets them on the destination.

The full load sets them from its snapshot; the cutover sets them again from the frozen (or drained) source, with an
optional safety offset (the DTS "sequence value adjustment").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from airflow_pgmigrate.engine.connection import ConnectionInfo, connect
from airflow_pgmigrate.engine.names import NameMapper, QualifiedName

if TYPE_CHECKING:
    from airflow_pgmigrate.config import MigrationConfig


def migrated_sequences(config: MigrationConfig, src: psycopg.Connection) -> list[QualifiedName]:
    """The sequences the selected tables own or use (defaults, identity columns)."""
    from airflow_pgmigrate.engine.schema import read_source_schema

    schema = read_source_schema(src, config)
    names = {QualifiedName(s, n) for kind, s, n in schema.needed if kind == "SEQUENCE" and s}
    names |= {seq for seq, owner in schema.sequence_owners.items() if owner in schema.selected}
    return sorted(names)


def sync_sequences(config: MigrationConfig, source: ConnectionInfo, destination: ConnectionInfo, *,
                   snapshot: str | None = None, offset: int = 0,
                   log: Callable[[str], None] = lambda message: None) -> list[dict[str, Any]]:
    """Set each migrated sequence on the destination to the source's value (+ ``offset``); returns what was set."""
    with connect(source, autocommit=False) as src:
        src.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        if snapshot is not None:
            src.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)))
        values = []
        for name in migrated_sequences(config, src):
            row = src.execute(sql.SQL("SELECT last_value, is_called FROM {}").format(
                sql.Identifier(name.schema, name.name))).fetchone()
            if row is not None:
                values.append((name, int(row[0]), bool(row[1])))
        src.rollback()
    mapper = NameMapper(config.mapping)
    out = []
    with connect(destination) as dst:
        for name, value, called in values:
            target = QualifiedName(mapper.schema(name.schema), name.name)
            ident = sql.Identifier(target.schema, target.name).as_string(dst)
            exists = dst.execute("SELECT to_regclass(%s)", (ident,)).fetchone()
            if exists is None or exists[0] is None:
                continue
            new_value = value + offset if offset else value
            dst.execute("SELECT setval(%s::regclass, %s, %s)", (ident, new_value, called or bool(offset)))
            out.append({"sequence": str(target), "value": new_value, "is_called": called or bool(offset)})
    if out:
        log(f"sequences set count={len(out)} offset={offset}")
    return out


__all__ = ["migrated_sequences", "sync_sequences"]
