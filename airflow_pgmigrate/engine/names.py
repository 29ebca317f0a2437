"""Object names: parsing ``schema.table`` keys, selection patterns, and source-to-destination name mapping."""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable

    from airflow_pgmigrate.config import MigrationConfig, NameMapping, ObjectSelection


@dataclass(frozen=True, order=True)
class QualifiedName:
    """A schema-qualified name, exact as in the catalog (no case folding)."""

    schema: str
    name: str

    def __str__(self) -> str:
        return f"{_show(self.schema)}.{_show(self.name)}"

    @property
    def key(self) -> str:
        """The unquoted ``schema.name`` form used by selection patterns."""
        return f"{self.schema}.{self.name}"


def _show(part: str) -> str:
    if "." in part or '"' in part or part != part.strip() or not part:
        return '"' + part.replace('"', '""') + '"'
    return part


def parse_qualified_name(text: str) -> QualifiedName:
    """Parse ``schema.table``; a part holding a dot or a quote is written in double quotes (``""`` for a quote).

    Names are taken exactly as written: ``public.Orders`` names the table ``Orders``.
    """
    parts: list[str] = []
    i, n = 0, len(text)
    while True:
        if i < n and text[i] == '"':
            j = i + 1
            buf = []
            while True:
                if j >= n:
                    raise ValueError(f"{text!r} has an unterminated quote")
                if text[j] == '"':
                    if j + 1 < n and text[j + 1] == '"':
                        buf.append('"')
                        j += 2
                        continue
                    break
                buf.append(text[j])
                j += 1
            parts.append("".join(buf))
            i = j + 1
        else:
            j = text.find(".", i)
            j = n if j < 0 else j
            part = text[i:j]
            if '"' in part:
                raise ValueError(f"{text!r} has a quote inside an unquoted name")
            parts.append(part)
            i = j
        if i >= n:
            break
        if text[i] != ".":
            raise ValueError(f"{text!r}: expected a dot after a quoted name")
        i += 1
    if len(parts) != 2:
        raise ValueError(f"{text!r} is not a schema-qualified table name (schema.table)")
    if not all(parts):
        raise ValueError(f"{text!r} has an empty schema or table name")
    return QualifiedName(parts[0], parts[1])


class TableSelector:
    """A selection compiled once: listed tables and schemas in sets, patterns as regular expressions."""

    def __init__(self, selection: ObjectSelection) -> None:
        self.everything = selection.selects_everything
        self.schemas = set(selection.schemas)
        self.tables = {parse_qualified_name(t) for t in selection.tables}
        self.include = [re.compile(fnmatch.translate(p)) for p in selection.include]
        self.exclude = [re.compile(fnmatch.translate(p)) for p in selection.exclude]

    def __call__(self, table: QualifiedName) -> bool:
        key = table.key
        if any(p.match(key) for p in self.exclude):
            return False
        if self.everything or table.schema in self.schemas or table in self.tables:
            return True
        return any(p.match(key) for p in self.include)


def is_selected(table: QualifiedName, selection: ObjectSelection) -> bool:
    """Whether a source table is selected: listed (or in a listed schema, or matching an include), not excluded."""
    return TableSelector(selection)(table)


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


def _apply_case(name: str, case: str) -> str:
    if case == "lower":
        return name.lower()
    if case == "upper":
        return name.upper()
    return name


class NameMapper:
    """Maps source names to destination names: explicit renames verbatim, the case policy for the rest."""

    def __init__(self, mapping: NameMapping) -> None:
        self.mapping = mapping
        self._tables = {parse_qualified_name(k): v for k, v in mapping.tables.items()}
        self._columns = {parse_qualified_name(k): v for k, v in mapping.columns.items()}

    def schema(self, schema: str) -> str:
        if schema in self.mapping.schemas:
            return self.mapping.schemas[schema]
        return _apply_case(schema, self.mapping.name_case)

    def table(self, table: QualifiedName) -> QualifiedName:
        name = self._tables.get(table)
        if name is None:
            name = _apply_case(table.name, self.mapping.name_case)
        return QualifiedName(self.schema(table.schema), name)

    def column(self, table: QualifiedName, column: str) -> str:
        renames = self._columns.get(table, {})
        if column in renames:
            return renames[column]
        return _apply_case(column, self.mapping.name_case)


__all__ = ["NameMapper", "QualifiedName", "TableSelector", "is_selected", "parse_qualified_name", "unmatched_entries"]
