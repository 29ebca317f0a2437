"""Row filter syntax: the canonical text of a WHERE condition, or what is wrong with it, without a server.

A leaf module (no project imports), so the config validates filters before any I/O without an import circle.
"""

from __future__ import annotations

from functools import lru_cache

#: Functions a filter may not call: they act on the server rather than compute a value.
_FORBIDDEN_FUNCTION_PREFIXES = ("pg_", "lo_", "dblink", "set_config", "current_setting", "txid_", "nextval", "setval",
                                "query_to_xml", "cursor_to_xml", "table_to_xml", "schema_to_xml", "database_to_xml")
#: Functions a filter may not call, by exact name: they run SQL given as text, or give another answer each time.
_FORBIDDEN_FUNCTIONS = frozenset({"ts_rewrite", "ts_stat", "random", "setseed", "clock_timestamp", "timeofday"})


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
        or stmt.windowClause
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
            bare = name.rsplit(".", 1)[-1]
            if bare.startswith(_FORBIDDEN_FUNCTION_PREFIXES) or bare in _FORBIDDEN_FUNCTIONS:
                problems.append(f"function {name}() is not allowed in a row filter")

    _Check()(stmt.whereClause)
    if problems:
        raise ValueError(problems[0])
    return str(RawStream()(stmt.whereClause))


__all__ = ["normalize_row_filter"]
