"""Row filters: one SQL condition per table, checked and normalised by PostgreSQL's own parser (pglast).

The normalised text (deparsed from the parse tree) is what the migration ever runs, so a filter cannot smuggle in a
second statement, a set operation or a subquery: those are rejected here, before any I/O.
"""

from __future__ import annotations

from functools import lru_cache

#: Functions a filter may not call: they act on the server rather than compute a value.
_FORBIDDEN_FUNCTION_PREFIXES = ("pg_", "lo_", "dblink", "set_config", "current_setting", "txid_", "nextval", "setval")


@lru_cache(maxsize=1024)
def normalize_row_filter(condition: str) -> str:
    """Return the canonical text of a row filter, or raise ValueError saying what is wrong with it."""
    from pglast import parse_sql
    from pglast.ast import SelectStmt
    from pglast.enums import SetOperation
    from pglast.parser import ParseError
    from pglast.stream import RawStream
    from pglast.visitors import Visitor

    if not isinstance(condition, str) or not condition.strip():
        raise ValueError("the filter is empty")
    if "\x00" in condition:
        raise ValueError("the filter contains a NUL character")
    try:
        statements = parse_sql(f"SELECT 1 WHERE {condition}")
    except ParseError as exc:
        raise ValueError(f"the filter is not a valid SQL condition: {exc.args[0]}") from None
    if len(statements) != 1:
        raise ValueError("the filter holds more than one SQL statement")
    stmt = statements[0].stmt
    if (
        not isinstance(stmt, SelectStmt)
        or stmt.op != SetOperation.SETOP_NONE
        or stmt.fromClause
        or stmt.groupClause
        or stmt.havingClause
        or stmt.sortClause
        or stmt.limitCount
        or stmt.limitOffset
        or stmt.lockingClause
        or stmt.withClause
        or stmt.intoClause
        or stmt.whereClause is None
    ):
        raise ValueError("the filter must be a single condition, not a clause or a statement")

    problems: list[str] = []

    class _Check(Visitor):  # type: ignore[misc]
        def visit_SubLink(self, ancestors, node):  # noqa: N802 - pglast visitor naming
            problems.append("subqueries are not allowed in a row filter")

        def visit_RangeFunction(self, ancestors, node):  # noqa: N802
            problems.append("set-returning functions are not allowed in a row filter")

        def visit_FuncCall(self, ancestors, node):  # noqa: N802
            name = ".".join(part.sval for part in node.funcname).lower()
            if name.rsplit(".", 1)[-1].startswith(_FORBIDDEN_FUNCTION_PREFIXES):
                problems.append(f"function {name}() is not allowed in a row filter")

    _Check()(stmt.whereClause)
    if problems:
        raise ValueError(problems[0])
    return str(RawStream()(stmt.whereClause))


__all__ = ["normalize_row_filter"]
