"""Row filters: one SQL condition per table, checked and normalised by PostgreSQL's own parser (pglast).

The normalised text (deparsed from the parse tree) is what the migration ever runs, so a filter cannot smuggle in a
second statement, a set operation or a subquery: those are rejected here, before any I/O.

A filter is evaluated many times (on the source by the full load and verification, on the destination by incremental
sync), so it must compute a value and nothing else: besides the server functions refused here, every function,
operator and cast it names must resolve on the server to functions that are not VOLATILE
(:func:`volatile_calls`, run before each step uses the filter). That also refuses the functions that execute SQL
given as text (``query_to_xml``, ``ts_rewrite``, ``dblink``) and user functions with side effects.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow_pgmigrate.engine.filter_syntax import normalize_row_filter
from airflow_pgmigrate.exceptions import PgMigrateError

if TYPE_CHECKING:
    from airflow_pgmigrate.config import MigrationConfig
    from airflow_pgmigrate.engine.names import QualifiedName

class UnsafeRowFilter(PgMigrateError):
    """A row filter calls, on this server, a function that is VOLATILE: it is not evaluated, anywhere."""


#: A_Expr kinds whose operator is not in their name: BETWEEN compares with >= and <=.
_BETWEEN_OPERATORS = (">=", "<=")

_FUNCTIONS = """
    SELECT p.oid::regprocedure::text, p.provolatile = 'v'
      FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
     WHERE p.proname = %(name)s AND CASE WHEN %(schema)s::text IS NULL THEN n.nspname = ANY(current_schemas(true))
                                         ELSE n.nspname = %(schema)s END
"""
_OPERATORS = """
    SELECT format('operator %%s(%%s, %%s) (%%s)', o.oprname, coalesce(o.oprleft::regtype::text, 'none'),
                  coalesce(o.oprright::regtype::text, 'none'), o.oprcode::regprocedure), p.provolatile = 'v'
      FROM pg_operator o JOIN pg_namespace n ON n.oid = o.oprnamespace JOIN pg_proc p ON p.oid = o.oprcode
     WHERE o.oprname = %(name)s AND CASE WHEN %(schema)s::text IS NULL THEN n.nspname = ANY(current_schemas(true))
                                         ELSE n.nspname = %(schema)s END
"""
_CASTS = """
    SELECT format('cast to %%s (%%s)', t.oid::regtype, p.oid::regprocedure), p.provolatile = 'v'
      FROM pg_type t JOIN pg_cast c ON c.casttarget = t.oid JOIN pg_proc p ON p.oid = c.castfunc
     WHERE t.oid = to_regtype(%(type)s)
    UNION ALL
    SELECT format('input function of %%s (%%s)', t.oid::regtype, p.oid::regprocedure), p.provolatile = 'v'
      FROM pg_type t JOIN pg_proc p ON p.oid = t.typinput WHERE t.oid = to_regtype(%(type)s)
"""


def _names_in(condition: str) -> tuple[set[tuple[str | None, str]], set[tuple[str | None, str]], set[str]]:
    """(functions, operators, cast target types) written in a filter; schema None when not qualified."""
    from pglast import parse_sql
    from pglast.enums import A_Expr_Kind
    from pglast.visitors import Visitor
    from psycopg import sql

    functions: set[tuple[str | None, str]] = set()
    operators: set[tuple[str | None, str]] = set()
    types: set[str] = set()

    def split(parts: Any) -> tuple[str | None, str]:
        names = [p.sval for p in parts]
        return (names[-2] if len(names) > 1 else None, names[-1])

    between = {A_Expr_Kind.AEXPR_BETWEEN, A_Expr_Kind.AEXPR_NOT_BETWEEN, A_Expr_Kind.AEXPR_BETWEEN_SYM,
               A_Expr_Kind.AEXPR_NOT_BETWEEN_SYM}

    class _Collect(Visitor):  # type: ignore[misc]
        def visit_FuncCall(self, ancestors, node):  # noqa: N802 - pglast visitor naming
            functions.add(split(node.funcname))

        def visit_A_Expr(self, ancestors, node):  # noqa: N802
            if node.kind in between:
                operators.update((None, op) for op in _BETWEEN_OPERATORS)
            elif node.name:
                operators.add(split(node.name))

        def visit_TypeCast(self, ancestors, node):  # noqa: N802
            types.add(sql.Identifier(*[p.sval for p in node.typeName.names]).as_string(None))

    stmt: Any = parse_sql(f"SELECT 1 WHERE {condition}")[0].stmt
    _Collect()(stmt.whereClause)
    return functions, operators, types


def volatile_calls(conn: Any, condition: str) -> list[str]:
    """The functions, operators and casts of a (normalised) row filter that resolve to VOLATILE functions on the
    server of ``conn``. Every candidate of a name counts (overloads included), whichever the server would pick."""
    functions, operators, types = _names_in(condition)
    found: list[str] = []
    for query, items in ((_FUNCTIONS, [{"schema": s, "name": n} for s, n in sorted(functions, key=str)]),
                         (_OPERATORS, [{"schema": s, "name": n} for s, n in sorted(operators, key=str)]),
                         (_CASTS, [{"type": t} for t in sorted(types)])):
        for params in items:
            for label, volatile in conn.execute(query, params).fetchall():
                if volatile and label not in found:
                    found.append(label)
    return found


def inherited_row_filter(config: MigrationConfig, table: QualifiedName,
                         ancestors: Sequence[QualifiedName] = ()) -> str | None:
    """The row filter of a table: its own and those of the partitioned tables above it, all of them applying."""
    conditions = [c for c in (config.row_filter(t) for t in (table, *ancestors)) if c is not None]
    if len(conditions) <= 1:
        return conditions[0] if conditions else None
    return " AND ".join(f"({c})" for c in conditions)


def safe_row_filter(config: MigrationConfig, table: QualifiedName, conn: Any, where: str,
                    ancestors: Sequence[QualifiedName] = ()) -> str | None:
    """The table's normalised row filter (with those of its partitioned ancestors), after checking on ``conn``'s
    server that it calls nothing VOLATILE; raise UnsafeRowFilter (naming the table, the calls and ``where``)
    otherwise."""
    condition = inherited_row_filter(config, table, ancestors)
    if condition is None:
        return None
    volatile = volatile_calls(conn, condition)
    if volatile:
        raise UnsafeRowFilter(
            f"the row filter of {table} calls VOLATILE function(s) on the {where}: {', '.join(volatile)}. A filter "
            "is evaluated many times and must compute a value, nothing else: nothing was evaluated. Rewrite "
            f"filters[{table.key!r}] with immutable or stable functions only")
    return condition


__all__ = ["UnsafeRowFilter", "inherited_row_filter", "normalize_row_filter", "safe_row_filter", "volatile_calls"]
