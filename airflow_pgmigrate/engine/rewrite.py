"""Rewriting object definitions for the destination's names, through PostgreSQL's own parser (pglast).

Renames come from the migration's name mapping and case policy: schemas, tables (and other relations) and
columns. Definitions are parsed, renamed on the syntax tree and deparsed, never edited with regular expressions.

- Single-table statements (CREATE TABLE, ALTER TABLE, CREATE INDEX, CREATE TRIGGER, comments, sequences owned by a
  column, policies, statistics) know their table, so every column reference in them is renamed.
- Queries (views, materialized views) resolve each column reference against the tables of its FROM clause; a
  renamed column keeps the query's output name (``total AS amount``), so views keep their interface and outer
  queries stay valid. A reference that cannot be resolved while it could name a renamed column is reported as unsafe.
- Function bodies are not rewritten: a body that mentions a renamed name is reported for review.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from airflow_pgmigrate.engine.names import NameMapper, QualifiedName

SYSTEM_SCHEMAS = frozenset({"pg_catalog", "information_schema", "pg_toast"})
#: AlterTableCmd subtypes whose ``name`` is a column.
_COLUMN_SUBTYPES = frozenset({
    "AT_AddIdentity", "AT_AlterColumnGenericOptions", "AT_AlterColumnType", "AT_ColumnDefault",
    "AT_CookedColumnDefault", "AT_DropColumn", "AT_DropExpression", "AT_DropIdentity", "AT_DropNotNull",
    "AT_ResetOptions", "AT_SetCompression", "AT_SetExpression", "AT_SetIdentity", "AT_SetNotNull", "AT_SetOptions",
    "AT_SetStatistics", "AT_SetStorage",
})
#: Statements naming schema-qualified objects (beyond relations, types and routines) -> attributes holding the names.
_QUALIFIED_NAME_ATTRS = {
    "AlterTSConfigurationStmt": ("cfgname", "dicts"), "CreateOpClassStmt": ("opclassname", "opfamilyname"),
    "CreateOpFamilyStmt": ("opfamilyname",), "AlterOpFamilyStmt": ("opfamilyname",),
    "CreateConversionStmt": ("conversion_name",), "CreateStatsStmt": ("defnames",), "AlterDomainStmt": ("typeName",),
    "AlterStatsStmt": ("defnames",),
}
#: Object types whose name is a plain ``[schema, name]`` list in COMMENT ON / ALTER ... OWNER TO.
_QUALIFIED_OBJECTS = frozenset({
    "OBJECT_TSDICTIONARY", "OBJECT_TSCONFIGURATION", "OBJECT_TSPARSER", "OBJECT_TSTEMPLATE", "OBJECT_COLLATION",
    "OBJECT_CONVERSION", "OBJECT_STATISTIC_EXT", "OBJECT_OPCLASS", "OBJECT_OPFAMILY",
})
#: Relation kinds whose names follow the table mapping and case policy (others keep their names).
RENAMED_RELKINDS = frozenset({"r", "p", "v", "m", "f", "S"})


class RewriteError(Exception):
    """A definition cannot be parsed, so it cannot be renamed."""


@dataclass
class RewriteResult:
    sql: str
    changed: bool
    #: References that could not be renamed safely (the object may not work in the destination).
    unsafe: list[str] = field(default_factory=list)
    #: Statements left out because they concern columns the selection leaves out.
    removed: list[str] = field(default_factory=list)


_PATCHED = False


def deparse(node: Any) -> str:
    """SQL text of a syntax tree node (pglast's RawStream), with its text search mapping printer fixed: pglast
    prints ``WITH app.english_stem`` as ``WITH app``, so dictionaries are printed qualified and quoted here."""
    global _PATCHED
    from pglast.stream import RawStream

    if not _PATCHED:
        from pglast.printers import ddl

        def print_simple_name(self: Any, node: Any, output: Any) -> None:
            if isinstance(node, (tuple, list)):
                output.print_name(node)
            else:
                output.write(node.sval)

        ddl.AlterTSConfigTypePrinter.print_simple_name = print_simple_name  # type: ignore[method-assign]
        _PATCHED = True
    return str(RawStream()(node))


def statement_text(text: str, raw: Any) -> str:
    """The source text of one parsed statement (pglast's locations count characters), without its semicolon."""
    end = raw.stmt_location + raw.stmt_len if raw.stmt_len else len(text)
    return text[raw.stmt_location:end].strip().rstrip(";").strip()


def child_nodes(node: Any) -> Iterator[tuple[str, Any]]:
    """(attribute, node) of each syntax tree node directly below ``node``."""
    from pglast.ast import Node

    for attr in getattr(node, "__slots__", ()):
        value = getattr(node, attr, None)
        if isinstance(value, Node):
            yield attr, value
        elif isinstance(value, (tuple, list)):
            for item in value:
                if isinstance(item, Node):
                    yield attr, item
                elif isinstance(item, (tuple, list)):  # e.g. exclusion constraints: (IndexElem, operator)
                    for sub in item:
                        if isinstance(sub, Node):
                            yield attr, sub


def walk_nodes(node: Any) -> Iterator[Any]:
    """``node`` and every syntax tree node below it."""
    yield node
    for _, child in child_nodes(node):
        yield from walk_nodes(child)


def _strings(items: Any) -> list[str]:
    return [getattr(i, "sval", None) or "" for i in (items or ())]


def _quote_ident(name: str) -> str:
    if re.fullmatch(r"[a-z_][a-z0-9_$]*", name):
        from pglast.keywords import RESERVED_KEYWORDS

        if name not in RESERVED_KEYWORDS:
            return name
    return '"' + name.replace('"', '""') + '"'


class DefinitionRewriter:
    """Renames definitions for the destination.

    :param mapper: the migration's name mapper.
    :param columns: source table -> its column names (to resolve references in queries).
    :param relkinds: source relation -> relkind (tables and views follow the table mapping, others keep names).
    """

    def __init__(self, mapper: NameMapper, columns: dict[QualifiedName, list[str]],
                 relkinds: dict[QualifiedName, str],
                 dropped: dict[QualifiedName, set[str]] | None = None) -> None:
        self.mapper = mapper
        self.columns = columns
        self.relkinds = relkinds
        #: Source table -> columns the selection leaves out (not created in the destination).
        self.dropped = {t: cols for t, cols in (dropped or {}).items() if cols}
        mapping = mapper.mapping
        self.identity = (not (mapping.schemas or mapping.tables or mapping.columns) and mapping.name_case == "keep"
                         and not self.dropped)
        self.renamed_words = self._renamed_words()

    # -- name functions ------------------------------------------------------------------------------------------

    def schema(self, schema: str) -> str:
        return schema if schema in SYSTEM_SCHEMAS or schema.startswith("pg_") else self.mapper.schema(schema)

    def relation(self, name: QualifiedName) -> QualifiedName:
        if self.relkinds.get(name) in RENAMED_RELKINDS:
            return self.mapper.table(name)
        return QualifiedName(self.schema(name.schema), name.name)

    def column(self, table: QualifiedName | None, column: str) -> str:
        if table is None or table not in self.columns:
            return column
        return self.mapper.column(table, column)

    def _renamed_words(self) -> set[str]:
        words: set[str] = set()
        for table, cols in self.columns.items():
            target = self.relation(table)
            if target.name != table.name:
                words.add(table.name)
            if target.schema != table.schema:
                words.add(table.schema)
            words.update(c for c in cols if self.column(table, c) != c)
        return words

    # -- entry point -----------------------------------------------------------------------------------------------

    def rewrite(self, sql: str) -> RewriteResult:
        """Rename one entry's SQL (one or more statements). Unchanged text is returned verbatim."""
        if self.identity:
            return RewriteResult(sql, False)
        from pglast import parse_sql
        from pglast.parser import ParseError

        try:
            statements = parse_sql(sql)
        except ParseError as exc:
            raise RewriteError(f"cannot parse definition: {exc.args[0]}") from None
        unsafe: list[str] = []
        removed: list[str] = []
        out: list[str] = []
        changed = False
        for raw in statements:
            stmt: Any = raw.stmt
            before = deparse(stmt)
            if self.dropped:
                left_out = self._left_out_columns(stmt)
                if left_out:
                    removed.append(f"{before[:80]} (uses column(s) left out: {', '.join(sorted(left_out))})")
                    changed = True
                    continue
            self._rewrite_statement(stmt, unsafe)
            after = deparse(stmt)
            if after != before:
                changed = True
                out.append(after)
            else:
                out.append(statement_text(sql, raw))  # unchanged statements keep their text
        if not changed:
            return RewriteResult(sql, False, unsafe)
        return RewriteResult(";\n".join(out) + ";\n" if out else "", True, unsafe, removed)

    # -- column selection ------------------------------------------------------------------------------------------

    def _left_out_columns(self, stmt: Any) -> set[str]:
        """Columns left out by the selection that a statement needs; CREATE TABLE is pruned instead."""
        kind = type(stmt).__name__
        if kind == "CommentStmt" and stmt.objtype.name == "OBJECT_COLUMN":
            names = _strings(stmt.object)
            if len(names) == 3:
                return {names[2]} & self.dropped.get(QualifiedName(names[0], names[1]), set())
            return set()
        if kind == "AlterSeqStmt":
            for option in stmt.options or ():
                if option.defname == "owned_by" and len(option.arg or ()) == 3:
                    s, t, c = _strings(option.arg)
                    return {c} & self.dropped.get(QualifiedName(s, t), set())
            return set()
        table = self._table_of(stmt)
        dropped = self.dropped.get(table) if table is not None else None
        if not dropped:
            return set()
        if kind == "CreateStmt":
            self._prune_create(stmt, dropped)
            return set()
        return self._mentioned_columns(stmt) & dropped

    def _mentioned_columns(self, node: Any) -> set[str]:
        names: set[str] = set()
        for child in walk_nodes(node):
            kind = type(child).__name__
            if kind == "ColumnRef":
                fields = [getattr(f, "sval", None) for f in child.fields or ()]
                if fields and fields[-1]:
                    names.add(fields[-1])
            elif kind in ("IndexElem", "PartitionElem", "ColumnDef", "StatsElem"):
                name = getattr(child, "name", None) or getattr(child, "colname", None)
                if name:
                    names.add(name)
            elif kind == "AlterTableCmd" and child.name and child.subtype.name in _COLUMN_SUBTYPES:
                names.add(child.name)
            elif kind == "Constraint":
                for attr in ("keys", "including", "fk_attrs"):
                    names.update(_strings(getattr(child, attr, None)))
            elif kind == "CreateTrigStmt":
                names.update(_strings(child.columns))
        return names

    def _prune_create(self, stmt: Any, dropped: set[str]) -> None:
        from pglast import ast

        kept = []
        for elt in stmt.tableElts or ():
            if isinstance(elt, ast.ColumnDef) and elt.colname in dropped:
                continue
            if isinstance(elt, ast.Constraint) and self._mentioned_columns(elt) & dropped:
                continue
            if isinstance(elt, ast.ColumnDef):
                elt.constraints = tuple(c for c in elt.constraints or ()
                                        if not (self._mentioned_columns(c) & dropped)) or None
            kept.append(elt)
        stmt.tableElts = tuple(kept)

    def unsafe_function_body(self, sql: str) -> list[str]:
        """Renamed names that a function or procedure body mentions (bodies are not rewritten)."""
        if self.identity or not self.renamed_words:
            return []
        body = function_body(sql)
        return sorted(w for w in self.renamed_words if re.search(rf"(?<![\w$]){re.escape(w)}(?![\w$])", body))

    # -- statements ------------------------------------------------------------------------------------------------

    def _rewrite_statement(self, stmt: Any, unsafe: list[str]) -> None:
        from pglast import ast

        kind = type(stmt).__name__
        table = self._table_of(stmt)
        if kind == "CreateStmt":
            self._create_stmt(stmt, table)
        elif kind == "AlterTableStmt":
            for cmd in stmt.cmds or ():
                if cmd.name and cmd.subtype.name in _COLUMN_SUBTYPES:
                    cmd.name = self.column(table, cmd.name)
                if isinstance(cmd.def_, ast.Constraint):
                    self._constraint(cmd.def_, table)
                elif isinstance(cmd.def_, ast.ColumnDef):
                    self._column_def(cmd.def_, table)
                elif cmd.def_ is not None:
                    self._columns_in(cmd.def_, table)
        elif kind == "IndexStmt":
            for elem in list(stmt.indexParams or ()) + list(stmt.indexIncludingParams or ()):
                self._index_elem(elem, table)
            if stmt.whereClause is not None:
                self._columns_in(stmt.whereClause, table)
        elif kind == "CreateTrigStmt":
            for col in stmt.columns or ():
                col.sval = self.column(table, col.sval)
            if stmt.whenClause is not None:
                self._columns_in(stmt.whenClause, table, prefixes=("old", "new"))
        elif kind in ("CreatePolicyStmt", "AlterPolicyStmt"):
            for expr in (stmt.qual, stmt.with_check):
                if expr is not None:
                    self._columns_in(expr, table)
        elif kind == "CreateStatsStmt":
            for elem in stmt.exprs or ():
                if elem.name:
                    elem.name = self.column(table, elem.name)
                elif elem.expr is not None:
                    self._columns_in(elem.expr, table)
        elif kind == "CommentStmt":
            self._comment(stmt)
        elif kind in ("CreateSeqStmt", "AlterSeqStmt"):
            for option in stmt.options or ():
                if option.defname == "owned_by":
                    self._owned_by(option)
        elif kind in ("ViewStmt", "CreateTableAsStmt"):
            self._query(stmt.query, [], unsafe)
        elif kind == "RuleStmt":
            if stmt.whereClause is not None:
                self._columns_in(stmt.whereClause, table, prefixes=("old", "new"))
            for action in stmt.actions or ():
                self._query(action, [], unsafe)
        elif kind == "GrantStmt":
            for priv in stmt.privileges or ():
                objects = [self._range_name(o) for o in stmt.objects or () if isinstance(o, ast.RangeVar)]
                for col in priv.cols or ():
                    if len(objects) == 1:
                        col.sval = self.column(objects[0], col.sval)
        self._rename_everywhere(stmt)

    def _table_of(self, stmt: Any) -> QualifiedName | None:
        relation = getattr(stmt, "relation", None) or getattr(stmt, "table", None)
        if relation is None or not hasattr(relation, "relname"):
            return None
        return self._range_name(relation)

    @staticmethod
    def _range_name(rv: Any) -> QualifiedName:
        return QualifiedName(rv.schemaname or "public", rv.relname)

    def _create_stmt(self, stmt: Any, table: QualifiedName | None) -> None:
        from pglast import ast

        for elt in stmt.tableElts or ():
            if isinstance(elt, ast.ColumnDef):
                self._column_def(elt, table)
            elif isinstance(elt, ast.Constraint):
                self._constraint(elt, table)
        if stmt.partspec is not None:
            for param in stmt.partspec.partParams or ():
                if param.name:
                    param.name = self.column(table, param.name)
                elif param.expr is not None:
                    self._columns_in(param.expr, table)
        for const in stmt.constraints or ():
            self._constraint(const, table)

    def _column_def(self, col: Any, table: QualifiedName | None) -> None:
        if col.colname:
            col.colname = self.column(table, col.colname)
        for const in col.constraints or ():
            self._constraint(const, table)
        if col.raw_default is not None:
            self._columns_in(col.raw_default, table)

    def _constraint(self, const: Any, table: QualifiedName | None) -> None:
        for attr in ("keys", "including", "fk_attrs"):
            for item in getattr(const, attr, None) or ():
                item.sval = self.column(table, item.sval)
        if const.pktable is not None:
            referenced = self._range_name(const.pktable)
            for item in const.pk_attrs or ():
                item.sval = self.column(referenced, item.sval)
        for exclusion in const.exclusions or ():
            elem = exclusion[0] if isinstance(exclusion, (tuple, list)) else exclusion
            self._index_elem(elem, table)
        for attr in ("raw_expr", "where_clause"):
            expr = getattr(const, attr, None)
            if expr is not None:
                self._columns_in(expr, table)

    def _index_elem(self, elem: Any, table: QualifiedName | None) -> None:
        if getattr(elem, "name", None):
            elem.name = self.column(table, elem.name)
        elif getattr(elem, "expr", None) is not None:
            self._columns_in(elem.expr, table)

    def _columns_in(self, expr: Any, table: QualifiedName | None, prefixes: tuple[str, ...] = ()) -> None:
        """Rename column references of a single-table expression (CHECK, index, default, trigger WHEN)."""
        for node in walk_nodes(expr):
            if type(node).__name__ != "ColumnRef":
                continue
            fields: Any = node.fields or ()
            if len(fields) == 1 and hasattr(fields[0], "sval"):
                fields[0].sval = self.column(table, fields[0].sval)
            elif len(fields) == 2 and hasattr(fields[1], "sval") and getattr(fields[0], "sval", "") in prefixes:
                fields[1].sval = self.column(table, fields[1].sval)

    def _comment(self, stmt: Any) -> None:
        objtype = stmt.objtype.name
        names = stmt.object
        if objtype == "OBJECT_COLUMN" and isinstance(names, (tuple, list)) and len(names) == 3:
            schema, rel, col = _strings(names)
            table = QualifiedName(schema, rel)
            names[2].sval = self.column(table, col)
            target = self.relation(table)
            names[0].sval, names[1].sval = target.schema, target.name
        elif objtype in ("OBJECT_TABLE", "OBJECT_VIEW", "OBJECT_MATVIEW", "OBJECT_FOREIGN_TABLE", "OBJECT_SEQUENCE",
                         "OBJECT_INDEX", "OBJECT_TABCONSTRAINT", "OBJECT_TRIGGER", "OBJECT_POLICY", "OBJECT_RULE") \
                and isinstance(names, (tuple, list)) and len(names) >= 2:
            # [schema, relation] or [schema, relation, constraint/trigger/...]
            schema, rel = _strings(names[:2])
            target = self.relation(QualifiedName(schema, rel))
            names[0].sval, names[1].sval = target.schema, target.name

    def _owned_by(self, option: Any) -> None:
        items = option.arg
        if isinstance(items, (tuple, list)) and len(items) == 3:
            schema, rel, col = _strings(items)
            table = QualifiedName(schema, rel)
            items[2].sval = self.column(table, col)
            target = self.relation(table)
            items[0].sval, items[1].sval = target.schema, target.name

    # -- queries ---------------------------------------------------------------------------------------------------

    def _query(self, node: Any, outer: list[dict[str, QualifiedName | None]], unsafe: list[str]) -> None:
        kind = type(node).__name__
        if kind != "SelectStmt":
            # INSERT/UPDATE/DELETE in rules: rename what is resolvable through their relation.
            relation = getattr(node, "relation", None)
            scope: dict[str, QualifiedName | None] = {}
            if relation is not None and hasattr(relation, "relname"):
                name = self._range_name(relation)
                scope[relation.alias.aliasname if relation.alias else relation.relname] = name
            self._resolve_in(node, [scope, *outer], unsafe, skip={"relation"})
            return
        if node.op.name != "SETOP_NONE":
            self._query(node.larg, outer, unsafe)
            self._query(node.rarg, outer, unsafe)
            return
        if node.withClause is not None:
            for cte in node.withClause.ctes or ():
                self._query(cte.ctequery, outer, unsafe)
        scope = {}
        for item in node.fromClause or ():
            self._scope_of(item, scope, outer, unsafe)
        scopes = [scope, *outer]
        for target in node.targetList or ():
            value = target.val
            original = self._output_name(value)
            self._resolve_in(target, scopes, unsafe)
            if original and target.name is None and self._output_name(value) != original:
                target.name = original  # keep the query's output name
        self._resolve_in(node, scopes, unsafe, skip={"targetList", "fromClause", "withClause", "larg", "rarg"})
        for item in node.fromClause or ():
            self._resolve_join_quals(item, scopes, unsafe)

    @staticmethod
    def _output_name(value: Any) -> str | None:
        if type(value).__name__ == "ColumnRef" and value.fields and hasattr(value.fields[-1], "sval"):
            return str(value.fields[-1].sval)
        return None

    def _scope_of(self, item: Any, scope: dict[str, QualifiedName | None],
                  outer: list[dict[str, QualifiedName | None]], unsafe: list[str]) -> None:
        kind = type(item).__name__
        if kind == "RangeVar":
            name = self._range_name(item) if item.schemaname else None
            key = item.alias.aliasname if item.alias else item.relname
            scope[key] = name if name in self.columns else None
            if item.alias is None and name is not None and self.relation(name).name != item.relname:
                from pglast import ast

                item.alias = ast.Alias(aliasname=item.relname)  # references like orders.amount keep working
        elif kind == "JoinExpr":
            self._scope_of(item.larg, scope, outer, unsafe)
            self._scope_of(item.rarg, scope, outer, unsafe)
            if item.alias is not None:
                scope[item.alias.aliasname] = None
        elif kind == "RangeSubselect":
            self._query(item.subquery, [scope, *outer] if item.lateral else outer, unsafe)
            if item.alias is not None:
                scope[item.alias.aliasname] = None
        elif kind == "RangeFunction":
            self._resolve_in(item, [scope, *outer], unsafe, skip=set())
            if item.alias is not None:
                scope[item.alias.aliasname] = None

    def _resolve_join_quals(self, item: Any, scopes: list[dict[str, QualifiedName | None]],
                            unsafe: list[str]) -> None:
        if type(item).__name__ == "JoinExpr":
            self._resolve_join_quals(item.larg, scopes, unsafe)
            self._resolve_join_quals(item.rarg, scopes, unsafe)
            if item.quals is not None:
                self._resolve_in(item.quals, scopes, unsafe)
            for col in item.usingClause or ():
                tables = [t for s in scopes[:1] for t in s.values() if t is not None and col.sval in self.columns[t]]
                renamed = {self.column(t, col.sval) for t in tables}
                if len(renamed) == 1:
                    col.sval = renamed.pop()
                elif len(renamed) > 1:
                    unsafe.append(f"JOIN USING ({col.sval}) joins columns renamed differently")

    def _resolve_in(self, node: Any, scopes: list[dict[str, QualifiedName | None]], unsafe: list[str],
                    skip: set[str] | None = None) -> None:
        for attr, child in child_nodes(node):
            if skip and attr in skip:
                continue
            kind = type(child).__name__
            if kind == "SelectStmt":
                self._query(child, scopes, unsafe)
            elif kind == "ColumnRef":
                self._resolve_column(child, scopes, unsafe)
            else:
                self._resolve_in(child, scopes, unsafe)

    def _resolve_column(self, ref: Any, scopes: list[dict[str, QualifiedName | None]], unsafe: list[str]) -> None:
        fields = ref.fields or ()
        if not fields or not all(hasattr(f, "sval") for f in fields):
            return  # a star, or something else
        names = [f.sval for f in fields]
        if len(names) == 1:
            col = names[0]
            for scope in scopes:
                owners = [t for t in scope.values() if t is not None and col in self.columns[t]]
                if len(owners) == 1:
                    fields[0].sval = self.column(owners[0], col)
                    return
                if len(owners) > 1:
                    if any(self.column(t, col) != col for t in owners):
                        unsafe.append(f"column reference {col} could be any of {', '.join(map(str, owners))}")
                    return
                if any(t is None for t in scope.values()):
                    return  # from a subquery, a function or a view: their output names are kept
            return
        alias, col = names[-2], names[-1]
        for scope in scopes:
            if alias in scope:
                table = scope[alias]
                if table is not None:
                    fields[-1].sval = self.column(table, col)
                return

    # -- names everywhere --------------------------------------------------------------------------------------------

    def _rename_everywhere(self, stmt: Any) -> None:
        """Schema and relation renames on every qualified name of the statement (after column renames)."""
        for node in list(walk_nodes(stmt)):
            kind = type(node).__name__
            if kind == "RangeVar" and node.schemaname:
                target = self.relation(QualifiedName(node.schemaname, node.relname))
                node.schemaname, node.relname = target.schema, target.name
            elif kind == "TypeName":
                names: Any = node.names or ()
                if len(names) >= 2 and hasattr(names[-2], "sval"):
                    names[-2].sval = self.schema(names[-2].sval)
            elif kind in ("FuncCall", "CreateTrigStmt", "CreateFunctionStmt", "ObjectWithArgs", "DefineStmt",
                          "CreateEnumStmt", "CreateDomainStmt", "CreateRangeStmt", "AlterEnumStmt"):
                for attr in ("funcname", "objname", "defnames", "typeName", "domainname"):
                    names = getattr(node, attr, None)
                    if isinstance(names, (tuple, list)) and len(names) >= 2 and hasattr(names[-2], "sval"):
                        names[-2].sval = self.schema(names[-2].sval)
            elif kind in _QUALIFIED_NAME_ATTRS:
                for attr in _QUALIFIED_NAME_ATTRS[kind]:
                    value = getattr(node, attr, None)
                    lists = value if attr == "dicts" else [value]
                    for names in lists or ():
                        self._rename_qualified(names)
            elif kind in ("CommentStmt", "AlterOwnerStmt", "AlterObjectSchemaStmt") \
                    and node.objtype.name in _QUALIFIED_OBJECTS:
                self._rename_qualified(node.object)
            elif kind == "CreateExtensionStmt":
                for option in node.options or ():
                    if option.defname == "schema" and hasattr(option.arg, "sval"):
                        option.arg.sval = self.schema(option.arg.sval)
            elif kind == "CreateSchemaStmt" and node.schemaname:
                node.schemaname = self.schema(node.schemaname)
            elif kind == "TypeCast":
                self._regclass_literal(node)
            elif kind == "CommentStmt" and node.objtype.name in ("OBJECT_SCHEMA",):
                if hasattr(node.object, "sval"):
                    node.object.sval = self.schema(node.object.sval)
            elif kind == "DefElem" and node.defname == "sequence_name" and isinstance(node.arg, (tuple, list)):
                if len(node.arg) == 2:  # an identity column's sequence
                    target = self.relation(QualifiedName(node.arg[0].sval, node.arg[1].sval))
                    node.arg[0].sval, node.arg[1].sval = target.schema, target.name

    def _rename_qualified(self, names: Any) -> None:
        """``[schema, name]`` (or ``[access method, schema, name]``) with its schema mapped."""
        if isinstance(names, (tuple, list)) and len(names) >= 2 and hasattr(names[-2], "sval"):
            names[-2].sval = self.schema(names[-2].sval)

    def _regclass_literal(self, cast: Any) -> None:
        names = [getattr(n, "sval", "") for n in (cast.typeName.names or ())]
        if names[-1:] != ["regclass"]:
            return
        const = cast.arg
        value = getattr(getattr(const, "val", None), "sval", None)
        if not value:
            return
        try:
            name = parse_sql_name(value)
        except ValueError:
            return
        target = self.relation(name)
        const.val.sval = f"{_quote_ident(target.schema)}.{_quote_ident(target.name)}"


def function_body(sql: str) -> str:
    """The body text of a CREATE FUNCTION / PROCEDURE statement (the whole text when it cannot be parsed)."""
    from pglast import parse_sql
    from pglast.parser import ParseError

    try:
        statements = parse_sql(sql)
    except ParseError:
        return sql
    parts: list[str] = []
    for raw in statements:
        stmt: Any = raw.stmt
        if type(stmt).__name__ != "CreateFunctionStmt":
            continue
        for option in stmt.options or ():
            if option.defname == "as":
                parts += [getattr(item, "sval", "") for item in (option.arg or ())]
        if getattr(stmt, "sql_body", None) is not None:
            parts.append(deparse(stmt.sql_body))
    return "\n".join(parts)


def parse_sql_name(text: str) -> QualifiedName:
    """Parse a SQL-quoted qualified name as regclass text shows it: ``public.orders``, ``"My Schema"."T"``."""
    parts: list[str] = []
    for match in re.finditer(r'"((?:[^"]|"")*)"|([^."]+)', text):
        parts.append(match.group(1).replace('""', '"') if match.group(1) is not None else match.group(2).lower())
    if len(parts) != 2:
        raise ValueError(text)
    return QualifiedName(parts[0], parts[1])


def row_filter_for_destination(mapper: NameMapper, table: QualifiedName, columns: list[str], row_filter: str) -> str:
    """A row filter of source ``table`` (whose columns are ``columns``) with its columns renamed as the destination
    names them: the same condition, asked of the destination's rows."""
    from pglast import parse_sql
    from pglast.stream import RawStream

    stmt: Any = parse_sql(f"SELECT 1 WHERE {row_filter}")[0].stmt
    DefinitionRewriter(mapper, {table: columns}, {table: "r"})._columns_in(stmt.whereClause, table)
    return str(RawStream()(stmt.whereClause))


__all__ = ["DefinitionRewriter", "RewriteError", "RewriteResult", "child_nodes", "deparse", "parse_sql_name",
           "row_filter_for_destination", "statement_text", "walk_nodes"]
