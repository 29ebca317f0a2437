"""The values ``ALTER TABLE ... ADD COLUMN`` gives the rows a table holds already, on the destination as on the source.

Those values are written by a table rewrite (or kept in the catalog), never published: the change stream does not
carry them, so the destination computes them itself. A constant default, or one computed from the row (a generated
column), gives the same values on both sides. One that reads the clock gives the time of the destination's
transaction instead of the source's: the source's transaction time (``now()``) is recorded with the DDL, so the
column is added with it as a constant, and the default is then set back to the written expression, for the rows to
come. Any other function (``gen_random_uuid()``, ``nextval()``, ``clock_timestamp()``, ``current_user`` ...), a serial
type or an identity column would give other values on the destination: :class:`NotReplicable`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from psycopg import sql

from airflow_pgmigrate.engine.rewrite import deparse, walk_nodes

#: Functions that return the transaction's start time (``now()``, whatever its spelling).
TRANSACTION_TIME = frozenset({"now", "transaction_timestamp"})
#: SQL value functions that read the transaction's start time -> how the recorded time is turned into them.
TIME_VALUES = {
    "SVFOP_CURRENT_TIMESTAMP": "{time}::timestamptz",
    "SVFOP_CURRENT_TIMESTAMP_N": "{time}::timestamptz({precision})",
    "SVFOP_LOCALTIMESTAMP": "({time}::timestamptz AT TIME ZONE {zone})",
    "SVFOP_LOCALTIMESTAMP_N": "({time}::timestamptz AT TIME ZONE {zone})::timestamp({precision})",
    "SVFOP_CURRENT_DATE": "({time}::timestamptz AT TIME ZONE {zone})::date",
}
SERIAL_TYPES = frozenset({"serial", "bigserial", "smallserial", "serial2", "serial4", "serial8"})


class NotReplicable(Exception):  # noqa: N818 - a reason given to the planner, which stops the sync with it
    """The default's values for the existing rows cannot be computed again on the destination."""


@dataclass(frozen=True)
class SourceTime:
    """The source transaction's start time (``now()``, as text with its offset) and the session's TimeZone."""

    time: str
    zone: str


def _literal(text: str) -> str:
    return sql.Literal(text).as_string(None)


def _parse_expression(text: str) -> Any:
    from pglast import parse_sql

    select: Any = parse_sql(f"SELECT {text}")[0].stmt
    return select.targetList[0].val


def _literal_for(node: Any, when: SourceTime) -> Any | None:
    """The recorded time in place of a node that reads the transaction's time; None for any other node; raises for a
    function whose value the destination cannot compute the same way."""
    kind = type(node).__name__
    if kind == "FuncCall":
        name = getattr(node.funcname[-1], "sval", "")
        if name in TRANSACTION_TIME and not node.args:
            return _parse_expression(f"{_literal(when.time)}::timestamptz")
        raise NotReplicable(f"its default calls {name}(), whose values for the existing rows the source computed")
    if kind == "SQLValueFunction":
        template = TIME_VALUES.get(node.op.name)
        if template is None:
            raise NotReplicable(f"its default reads {deparse(node)}, which differs on the destination")
        return _parse_expression(template.format(time=_literal(when.time), zone=_literal(when.zone),
                                                 precision=node.typmod))
    return None


def _with_literals(node: Any, when: SourceTime) -> Any:
    """``node`` with every time function replaced by the recorded time (nodes are changed in place)."""
    from pglast.ast import Node

    literal = _literal_for(node, when) if isinstance(node, Node) else None
    if literal is not None:
        return literal
    if isinstance(node, (tuple, list)):
        return type(node)(_with_literals(item, when) for item in node)
    for attr in getattr(node, "__slots__", ()):
        value = getattr(node, attr, None)
        if isinstance(value, (Node, tuple, list)):
            setattr(node, attr, _with_literals(value, when))
    return node


def freeze_added_default(column: Any, when: SourceTime | None) -> str | None:
    """For the ColumnDef of an ADD COLUMN: the default's text to set back after the column is added with the source's
    values (its time functions replaced by the recorded time), or None when nothing was replaced."""
    type_name = getattr(column.typeName.names[-1], "sval", "") if column.typeName is not None else ""
    if type_name in SERIAL_TYPES:
        raise NotReplicable(f"a {type_name} column numbers the existing rows in the source's physical order")
    for constraint in column.constraints or ():
        if constraint.contype.name == "CONSTR_IDENTITY":
            raise NotReplicable("an identity column numbers the existing rows in the source's physical order")
    for constraint in column.constraints or ():
        if constraint.contype.name != "CONSTR_DEFAULT" or constraint.raw_expr is None:
            continue
        written = deparse(constraint.raw_expr)
        kinds = {type(n).__name__ for n in walk_nodes(constraint.raw_expr)}
        if not kinds & {"FuncCall", "SQLValueFunction"}:
            return None  # a constant (or an expression of constants): the same on both sides
        if when is None:
            raise NotReplicable("its default reads the clock and the capture did not record the source's time")
        constraint.raw_expr = _with_literals(constraint.raw_expr, when)
        return written
    return None


__all__ = ["NotReplicable", "SourceTime", "freeze_added_default"]
