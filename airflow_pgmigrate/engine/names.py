"""Object names: parsing ``schema.table`` keys, selection patterns, and source-to-destination name mapping."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping
from typing import Protocol

from airflow_pgmigrate.engine.identifiers import CAPTURE_SCHEMA, QualifiedName, parse_qualified_name


class SelectionSpec(Protocol):
    """What a selection of objects says (``config.ObjectSelection``)."""

    @property
    def selects_everything(self) -> bool: ...
    @property
    def schemas(self) -> list[str]: ...
    @property
    def tables(self) -> list[str]: ...
    @property
    def include(self) -> list[str]: ...
    @property
    def exclude(self) -> list[str]: ...


class MappingSpec(Protocol):
    """What a name mapping says (``config.NameMapping``)."""

    @property
    def schemas(self) -> Mapping[str, str]: ...
    @property
    def tables(self) -> Mapping[str, str]: ...
    @property
    def columns(self) -> Mapping[str, Mapping[str, str]]: ...
    @property
    def name_case(self) -> str: ...


class TableSelector:
    """A selection compiled once: listed tables and schemas in sets, patterns as regular expressions."""

    def __init__(self, selection: SelectionSpec) -> None:
        self.everything = selection.selects_everything
        self.schemas = set(selection.schemas)
        self.tables = {parse_qualified_name(t) for t in selection.tables}
        self.include = [re.compile(fnmatch.translate(p)) for p in selection.include]
        self.exclude = [re.compile(fnmatch.translate(p)) for p in selection.exclude]

    def __call__(self, table: QualifiedName) -> bool:
        key = table.key
        if table.schema == CAPTURE_SCHEMA or any(p.match(key) for p in self.exclude):
            return False
        if self.everything or table.schema in self.schemas or table in self.tables:
            return True
        return any(p.match(key) for p in self.include)


def is_selected(table: QualifiedName, selection: SelectionSpec) -> bool:
    """Whether a source table is selected: listed (or in a listed schema, or matching an include), not excluded."""
    return TableSelector(selection)(table)


def _apply_case(name: str, case: str) -> str:
    if case == "lower":
        return name.lower()
    if case == "upper":
        return name.upper()
    return name


class NameMapper:
    """Maps source names to destination names: explicit renames verbatim, the case policy for the rest."""

    def __init__(self, mapping: MappingSpec) -> None:
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


__all__ = ["MappingSpec", "NameMapper", "QualifiedName", "SelectionSpec", "TableSelector", "is_selected",
           "parse_qualified_name"]
