"""Table definitions on both sides: after DDL is replicated during incremental sync, equal rows are not enough, the
destination's tables must have the source's shape too.

For every table the migration moves, the source table's definition is read, translated into the destination's names
(the name mapping and case policy, the column selection) and compared with its destination table's:

- columns: name, type (``format_type``, without the schema of a user type, which a mapped schema changes), NOT NULL,
  default (its text when the mapping renames nothing it could mention, else whether there is one), generated
  (stored or virtual) and identity;
- constraints (primary key, unique, check, foreign key, exclusion; PostgreSQL 18's not-null constraints are the
  columns' NOT NULL), by name: kind, columns, and the referenced table and columns of a foreign key (a check's text
  under the same rule as defaults);
- indexes that back no constraint, by name: unique or not, access method, key columns, partial or not.

A constraint or index that mentions a column the selection leaves out is not expected on the destination (the schema
step leaves it out). Each mismatch comes back in words, naming the table and the object.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

import psycopg
from psycopg import sql

from airflow_pgmigrate.engine.identifiers import parse_qualified_name
from airflow_pgmigrate.engine.names import NameMapper, QualifiedName

if TYPE_CHECKING:
    from airflow_pgmigrate.config import MigrationConfig

#: Rows of ``unnest(schemas, names)`` joined to their relation: every query below reads the tables asked for only.
_TABLES = sql.SQL("""
SELECT c.oid, t.s, t.n FROM unnest(%(schemas)s::text[], %(names)s::text[]) AS t(s, n)
  JOIN pg_namespace ns ON ns.nspname = t.s JOIN pg_class c ON c.relnamespace = ns.oid AND c.relname = t.n
""")

_COLUMNS = sql.SQL("""
WITH tables AS ({tables})
SELECT t.s, t.n, a.attname, format_type(a.atttypid, a.atttypmod), quote_ident(tn.nspname) || '.', tn.nspname,
       a.attnotnull, pg_get_expr(d.adbin, d.adrelid), a.attgenerated::text, a.attidentity::text
  FROM tables t JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum > 0 AND NOT a.attisdropped
  JOIN pg_type ty ON ty.oid = a.atttypid JOIN pg_namespace tn ON tn.oid = ty.typnamespace
  LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
 ORDER BY 1, 2, a.attnum
""").format(tables=_TABLES)

# A foreign key to a partitioned table has one row per partition below its own (same name, conparentid set, same
# conrelid): only the top one is the constraint.
_CONSTRAINTS = sql.SQL("""
WITH tables AS ({tables})
SELECT t.s, t.n, k.conname, k.contype::text,
       ARRAY(SELECT a.attname FROM unnest(k.conkey) WITH ORDINALITY u(num, i)
               JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = u.num ORDER BY u.i),
       rn.nspname, r.relname,
       ARRAY(SELECT a.attname FROM unnest(k.confkey) WITH ORDINALITY u(num, i)
               JOIN pg_attribute a ON a.attrelid = k.confrelid AND a.attnum = u.num ORDER BY u.i),
       CASE WHEN k.contype = 'c' THEN pg_get_constraintdef(k.oid) END
  FROM tables t JOIN pg_constraint k ON k.conrelid = t.oid
  LEFT JOIN pg_class r ON r.oid = k.confrelid LEFT JOIN pg_namespace rn ON rn.oid = r.relnamespace
 WHERE k.contype IN ('p', 'u', 'c', 'f', 'x')
   AND NOT EXISTS (SELECT FROM pg_constraint p WHERE p.oid = k.conparentid AND p.conrelid = k.conrelid)
 ORDER BY 1, 2, 3
""").format(tables=_TABLES)

_INDEXES = sql.SQL("""
WITH tables AS ({tables})
SELECT t.s, t.n, ic.relname, x.indisunique, am.amname, x.indpred IS NOT NULL,
       ARRAY(SELECT coalesce(a.attname, '') FROM unnest(x.indkey[0:x.indnkeyatts - 1]) WITH ORDINALITY u(num, i)
               LEFT JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = u.num ORDER BY u.i),
       ARRAY(SELECT DISTINCT a.attname FROM pg_depend d
               JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
              WHERE d.classid = 'pg_class'::regclass AND d.objid = x.indexrelid AND d.refobjid = x.indrelid
                AND d.refobjsubid > 0)
  FROM tables t JOIN pg_index x ON x.indrelid = t.oid JOIN pg_class ic ON ic.oid = x.indexrelid
  JOIN pg_am am ON am.oid = ic.relam
 WHERE NOT EXISTS (SELECT FROM pg_constraint k WHERE k.conindid = x.indexrelid AND k.conrelid = x.indrelid
                                   AND k.contype IN ('p', 'u', 'x'))
 ORDER BY 1, 2, 3
""").format(tables=_TABLES)

_KINDS = {"p": "a primary key", "u": "a unique constraint", "c": "a check constraint", "f": "a foreign key",
          "x": "an exclusion constraint"}
_GENERATED = {"": "", "s": "generated (stored)", "v": "generated (virtual)"}
_IDENTITY = {"": "", "a": "an identity (always)", "d": "an identity (by default)"}
#: An index key that is an expression, not a column.
EXPRESSION = "(an expression)"


class TablePair(Protocol):
    """A table the migration moves and its destination table (``verify.TableCheck``)."""

    source: QualifiedName
    target: QualifiedName


@dataclass(frozen=True)
class ColumnDefinition:
    type: str
    not_null: bool
    #: The default's text; "" when it has one whose text is not compared; None when it has none.
    default: str | None
    generated: str = ""
    identity: str = ""


@dataclass(frozen=True)
class ConstraintDefinition:
    kind: str
    columns: tuple[str, ...]
    #: A foreign key's referenced table and columns.
    references: QualifiedName | None = None
    referenced_columns: tuple[str, ...] = ()
    #: A check constraint's text, when compared.
    text: str = ""


@dataclass(frozen=True)
class IndexDefinition:
    unique: bool
    method: str
    columns: tuple[str, ...]
    partial: bool
    #: Every column it mentions (keys, expressions, predicate): one left out by the selection leaves it out.
    mentions: frozenset[str] = field(default=frozenset(), compare=False)


@dataclass
class TableDefinition:
    columns: dict[str, ColumnDefinition] = field(default_factory=dict)
    constraints: dict[str, ConstraintDefinition] = field(default_factory=dict)
    indexes: dict[str, IndexDefinition] = field(default_factory=dict)


def read_definitions(conn: psycopg.Connection, tables: list[QualifiedName]) -> dict[QualifiedName, TableDefinition]:
    """The definitions of ``tables`` as they are on ``conn`` (in its names); a table not found is left out."""
    params = {"schemas": [t.schema for t in tables], "names": [t.name for t in tables]}
    found = {QualifiedName(s, n): TableDefinition() for _, s, n in conn.execute(_TABLES, params)}
    for s, n, name, type_, prefix, schema, not_null, default, generated, identity in conn.execute(_COLUMNS, params):
        type_ = type_[len(prefix):] if schema != "pg_catalog" and type_.startswith(prefix) else type_
        found[QualifiedName(s, n)].columns[name] = ColumnDefinition(type_, not_null, default,
                                                                    _GENERATED.get(generated, str(generated)),
                                                                    _IDENTITY.get(identity, str(identity)))
    for s, n, name, kind, columns, ref_schema, ref_name, ref_columns, text in conn.execute(_CONSTRAINTS, params):
        found[QualifiedName(s, n)].constraints[name] = ConstraintDefinition(
            kind, tuple(columns), QualifiedName(ref_schema, ref_name) if ref_name else None, tuple(ref_columns),
            text or "")
    for s, n, name, unique, method, partial, keys, mentions in conn.execute(_INDEXES, params):
        found[QualifiedName(s, n)].indexes[name] = IndexDefinition(
            unique, method, tuple(k or EXPRESSION for k in keys), partial, frozenset(mentions))
    return found


def _literal(mapper: NameMapper, table: QualifiedName, columns: list[str]) -> bool:
    """Whether a default's or check's text can be compared as it is: the mapping renames no schema and no table
    (either could be named in it: a sequence, a type, a function), nor a column of this table."""
    mapping = mapper.mapping
    if mapping.name_case != "keep" or any(k != v for k, v in mapping.schemas.items()):
        return False
    if any(parse_qualified_name(k).name != v for k, v in mapping.tables.items()):
        return False
    return all(mapper.column(table, c) == c for c in columns)


def expected_definition(source: TableDefinition, table: QualifiedName, mapper: NameMapper,
                        selected: list[str] | None, literal: bool) -> TableDefinition:
    """What the destination table should be: the source's definition in destination names, without the columns the
    selection leaves out (nor the constraints and indexes that mention them)."""
    kept = [c for c in source.columns if selected is None or c in selected]
    column = {c: mapper.column(table, c) for c in source.columns}
    out = TableDefinition()
    for name in kept:
        out.columns[column[name]] = mask_texts(source.columns[name], literal)
    for name, con in source.constraints.items():
        if set(con.columns) <= set(kept):
            con = replace(_mask_check(con, literal), columns=tuple(column[c] for c in con.columns))
            out.constraints[name] = _mapped_references(con, mapper)
    for name, index in source.indexes.items():
        if index.mentions <= set(kept):
            out.indexes[name] = replace(index, columns=tuple(column.get(c, c) for c in index.columns))
    return out


def _mapped_references(con: ConstraintDefinition, mapper: NameMapper) -> ConstraintDefinition:
    """A foreign key with its referenced table and columns in destination names."""
    ref = con.references
    if ref is None:
        return con
    return replace(con, references=mapper.table(ref),
                   referenced_columns=tuple(mapper.column(ref, c) for c in con.referenced_columns))


def mask_texts(column: ColumnDefinition, literal: bool) -> ColumnDefinition:
    """A column whose default is compared only on presence unless ``literal``."""
    if literal or column.default is None:
        return column
    return replace(column, default="")


def _mask_check(con: ConstraintDefinition, literal: bool) -> ConstraintDefinition:
    return con if literal else replace(con, text="")


def masked(actual: TableDefinition, literal: bool) -> TableDefinition:
    """The destination's definition with the texts that are not compared left out."""
    return TableDefinition({n: mask_texts(c, literal) for n, c in actual.columns.items()},
                           {n: _mask_check(c, literal) for n, c in actual.constraints.items()}, dict(actual.indexes))


def _column_words(name: str, here: ColumnDefinition, there: ColumnDefinition) -> list[str]:
    out = []
    if here.type != there.type:
        out.append(f"column {name} is {here.type} on the source, {there.type} on the destination")
    if here.not_null != there.not_null:
        out.append(f"column {name} is {_null_words(here)} on the source, {_null_words(there)} on the destination")
    if here.default != there.default:
        out.append(f"column {name} has {_default_words(here)} on the source, {_default_words(there)} on the "
                   "destination")
    for attr in ("generated", "identity"):
        mine, theirs = getattr(here, attr), getattr(there, attr)
        if mine != theirs:
            out.append(f"column {name} is {mine or f'not {attr}'} on the source, {theirs or f'not {attr}'} on the "
                       "destination")
    return out


def _null_words(column: ColumnDefinition) -> str:
    return "NOT NULL" if column.not_null else "nullable"


def _default_words(column: ColumnDefinition) -> str:
    if column.default is None:
        return "no default"
    return f"default {column.default}" if column.default else "a default"


def _constraint_words(name: str, here: ConstraintDefinition, there: ConstraintDefinition) -> list[str]:
    if here.kind != there.kind:
        return [f"constraint {name} is {_KINDS[here.kind]} on the source, {_KINDS[there.kind]} on the destination"]
    out = []
    if here.columns != there.columns:
        out.append(f"constraint {name} is on ({', '.join(here.columns)}) on the source, on "
                   f"({', '.join(there.columns)}) on the destination")
    if (here.references, here.referenced_columns) != (there.references, there.referenced_columns):
        out.append(f"constraint {name} references {_referenced(here)} on the source, {_referenced(there)} on the "
                   "destination")
    if here.text != there.text:
        out.append(f"constraint {name} is {here.text} on the source, {there.text} on the destination")
    return out


def _referenced(con: ConstraintDefinition) -> str:
    return f"{con.references} ({', '.join(con.referenced_columns)})"


def _index_words(name: str, here: IndexDefinition, there: IndexDefinition) -> list[str]:
    out = []
    if here.unique != there.unique:
        out.append(f"index {name} is {'unique' if here.unique else 'not unique'} on the source, "
                   f"{'unique' if there.unique else 'not unique'} on the destination")
    if here.method != there.method:
        out.append(f"index {name} is a {here.method} index on the source, a {there.method} index on the destination")
    if here.columns != there.columns:
        out.append(f"index {name} is on ({', '.join(here.columns)}) on the source, on ({', '.join(there.columns)}) "
                   "on the destination")
    if here.partial != there.partial:
        out.append(f"index {name} is {'partial' if here.partial else 'whole'} on the source, "
                   f"{'partial' if there.partial else 'whole'} on the destination")
    return out


def _presence_words(kind: str, here: dict[str, Any], there: dict[str, Any]) -> list[str]:
    return ([f"{kind} {n} missing on the destination" for n in here if n not in there]
            + [f"{kind} {n} only on the destination" for n in there if n not in here])


def definition_differences(expected: TableDefinition, actual: TableDefinition) -> list[str]:
    """Every way ``actual`` differs from ``expected``, in words naming the column, constraint or index."""
    out = _presence_words("column", expected.columns, actual.columns)
    for name in (n for n in expected.columns if n in actual.columns):
        out += _column_words(name, expected.columns[name], actual.columns[name])
    out += _presence_words("constraint", expected.constraints, actual.constraints)
    for name in sorted(expected.constraints.keys() & actual.constraints.keys()):
        out += _constraint_words(name, expected.constraints[name], actual.constraints[name])
    out += _presence_words("index", expected.indexes, actual.indexes)
    for name in sorted(expected.indexes.keys() & actual.indexes.keys()):
        out += _index_words(name, expected.indexes[name], actual.indexes[name])
    return out


def compare_definitions(config: MigrationConfig, checks: Sequence[TablePair], src: psycopg.Connection,
                        dst: psycopg.Connection) -> list[dict[str, Any]]:
    """For every table of ``checks`` (verification's plan): its definition on both sides, after the mapping. Returns
    one entry per table: ``{"table", "target", "equal", "differences"}``, the differences in words, with
    ``on_destination`` and ``missing_columns`` (destination names), which the rows' comparison leaves out."""
    mapper = NameMapper(config.mapping)
    selection = {parse_qualified_name(k): v for k, v in config.objects.columns.items()}
    here = read_definitions(src, [c.source for c in checks])
    there = read_definitions(dst, [c.target for c in checks])
    out = []
    for check in checks:
        source = here.get(check.source, TableDefinition())
        literal = _literal(mapper, check.source, list(source.columns))
        expected = expected_definition(source, check.source, mapper, selection.get(check.source), literal)
        actual = there.get(check.target)
        if actual is not None:
            words = definition_differences(expected, masked(actual, literal))
        else:
            words = [f"missing on the destination (as {check.target})"]
        out.append({"table": str(check.source), "target": str(check.target), "equal": not words,
                    "differences": words, "on_destination": actual is not None,
                    "missing_columns": [c for c in expected.columns if actual is None or c not in actual.columns]})
    return out


def definition_lines(definitions: list[dict[str, Any]]) -> list[str]:
    """The differences of :func:`compare_definitions`, one line each, naming the table."""
    return [f"table {d['table']}: {words}" for d in definitions for words in d["differences"]]


__all__ = ["ColumnDefinition", "ConstraintDefinition", "IndexDefinition", "TableDefinition", "TablePair",
           "compare_definitions", "definition_differences", "definition_lines", "expected_definition", "mask_texts",
           "masked", "read_definitions"]
