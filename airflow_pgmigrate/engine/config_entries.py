"""Config entries checked against what the migration really moves: an entry that matches nothing is an error."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from airflow_pgmigrate.engine.identifiers import QualifiedName, parse_qualified_name

if TYPE_CHECKING:
    from airflow_pgmigrate.config import MigrationConfig


def unmatched_entries(config: MigrationConfig, existing: Iterable[QualifiedName], moved: Iterable[QualifiedName],
                      schemas: Iterable[str] = ()) -> list[str]:
    """The config entries naming a table (row filters, column selections, table and column mappings) that match no
    relation the migration moves, and schema mappings for a schema it does not move (``schemas``: those migrated
    whole): each would silently do nothing, so each is an error, named."""
    existing, moved = set(existing), set(moved)
    moved_schemas = {n.schema for n in moved} | set(schemas)
    out = [f"mapping.schemas names {schema}, a schema the migration does not move"
           for schema in config.mapping.schemas if schema not in moved_schemas]
    for section, entries in (("filters", config.filters), ("objects.columns", config.objects.columns),
                             ("mapping.tables", config.mapping.tables), ("mapping.columns", config.mapping.columns)):
        for key in entries:
            name = parse_qualified_name(key)
            if name not in moved:
                why = "which does not exist" if name not in existing else "which the selection does not migrate"
                out.append(f"{section} names {name}, {why}")
    return out


__all__ = ["unmatched_entries"]
