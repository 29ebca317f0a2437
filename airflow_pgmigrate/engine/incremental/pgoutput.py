"""Decoding the pgoutput logical replication protocol (versions 1 and 2) into plain Python objects.

Message formats: PostgreSQL's "Logical Replication Message Formats". Values arrive in text form (we never ask for
binary), so each column is None (NULL), UNCHANGED (an unchanged TOASTed value the server did not send) or bytes.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)


class _Unchanged:
    """An unchanged TOASTed column: keep the destination's value."""

    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED = _Unchanged()
Value = bytes | None | _Unchanged


def _load_tuplecodec() -> Any:
    """The C loops (``tuplecodec.c``, built at install when a compiler is there), or None: the Python loops run.
    ``PGMIGRATE_PURE_PYTHON=1`` turns them off."""
    if os.environ.get("PGMIGRATE_PURE_PYTHON") == "1":
        return None
    try:
        import airflow_pgmigrate.engine.incremental.tuplecodec as tuplecodec
    except ImportError:
        return None
    tuplecodec.set_unchanged(UNCHANGED)
    return tuplecodec


#: The C loops of TupleData reading and COPY formatting, or None.
TUPLECODEC = _load_tuplecodec()
#: "c" or "python": which loops this process runs (said in the sync's log).
LOOPS = "python" if TUPLECODEC is None else "c"


def lsn_to_int(lsn: str) -> int:
    high, low = lsn.split("/")
    return (int(high, 16) << 32) + int(low, 16)


def int_to_lsn(value: int) -> str:
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


def pg_time(micros: int) -> datetime:
    return PG_EPOCH + timedelta(microseconds=micros)


@dataclass
class Column:
    name: str
    type_oid: int
    typmod: int
    key: bool


@dataclass
class Relation:
    oid: int
    schema: str
    name: str
    replica_identity: str
    columns: list[Column]


@dataclass(slots=True)
class Begin:
    commit_lsn: int
    commit_time: int
    xid: int


@dataclass(slots=True)
class Commit:
    commit_lsn: int
    end_lsn: int
    commit_time: int


@dataclass(slots=True)
class Change:
    """INSERT ('I'), UPDATE ('U') or DELETE ('D') of one row. ``xid`` is set inside streamed transactions."""

    kind: str
    relation: int
    new: list[Value] | None
    #: The old key ('K') or the whole old row ('O', REPLICA IDENTITY FULL); None when the key did not change.
    old: list[Value] | None
    old_kind: str | None = None
    xid: int | None = None


@dataclass
class Truncate:
    relations: list[int]
    cascade: bool
    restart_identity: bool
    xid: int | None = None


@dataclass
class StreamStart:
    xid: int
    first: bool


@dataclass
class StreamStop:
    pass


@dataclass
class StreamCommit:
    xid: int
    commit_lsn: int
    end_lsn: int
    commit_time: int


@dataclass
class StreamAbort:
    xid: int
    subxid: int


@dataclass
class Other:
    """Origin, Type and logical decoding messages: carried but not applied."""

    tag: str
    detail: dict[str, Any] = field(default_factory=dict)


class Decoder:
    """Stateless apart from protocol flags: ``decode(payload)`` turns one pgoutput message into an object."""

    def __init__(self) -> None:
        self.in_stream = False

    def decode(self, data: bytes | memoryview, offset: int = 0) -> Any:
        """Decode the message that starts at ``offset`` of ``data`` (a CopyData payload, or a spilled message)."""
        code = data[offset]
        if code in _ROW_TAGS:
            return decode_row_change(data, offset, streamed=self.in_stream)
        if code == 66:  # 'B', once per transaction: no reader object
            return Begin(*struct.unpack_from("!qqi", data, offset + 1))
        if code == 67:  # 'C' (flags, then three int64)
            return Commit(*struct.unpack_from("!qqq", data, offset + 2))
        buf = memoryview(data)
        tag = chr(code)
        reader = _Reader(buf, offset + 1)
        if tag == "B":
            return Begin(reader.int64(), reader.int64(), reader.int32())
        if tag == "C":
            reader.int8()
            return Commit(reader.int64(), reader.int64(), reader.int64())
        if tag in "SEcA":
            return self._stream_message(tag, reader)
        xid: int | None = reader.int32() if self.in_stream and tag in "RYIUDTM" else None
        if tag == "R":
            oid = reader.int32()
            schema, name = reader.string(), reader.string()
            identity = chr(reader.int8())
            columns = []
            for _ in range(reader.int16()):
                flags = reader.int8()
                columns.append(Column(reader.string(), reader.int32(), reader.int32(), bool(flags & 1)))
            return Relation(oid, schema, name, identity, columns)
        if tag == "T":
            count = reader.int32()
            options = reader.int8()
            return Truncate([reader.int32() for _ in range(count)], bool(options & 1), bool(options & 2), xid)
        if tag == "O":
            return Other("origin", {"lsn": reader.int64(), "name": reader.string()})
        if tag == "Y":
            return Other("type", {"oid": reader.int32(), "schema": reader.string(), "name": reader.string()})
        if tag == "M":
            flags = reader.int8()
            lsn = reader.int64()
            prefix = reader.string()
            length = reader.int32()
            return Other("message", {"transactional": bool(flags & 1), "lsn": lsn, "prefix": prefix,
                                     "content": bytes(reader.take(length))})
        return Other(tag)


    def _stream_message(self, tag: str, reader: _Reader) -> Any:
        if tag == "S":
            self.in_stream = True
            return StreamStart(reader.int32(), reader.int8() == 1)
        if tag == "E":
            self.in_stream = False
            return StreamStop()
        if tag == "c":
            xid = reader.int32()
            reader.int8()
            return StreamCommit(xid, reader.int64(), reader.int64(), reader.int64())
        return StreamAbort(reader.int32(), reader.int32())


_ROW_TAGS = frozenset(b"IUD")
_I, _U, _N, _K, _O = 73, 85, 110, 75, 79  # 'I', 'U', 'n', 'K', 'O'
_U_KIND = 117  # 'u'


_RELATION_MARKER = struct.Struct("!iB").unpack_from
_INT16 = struct.Struct("!h").unpack_from
_INT32 = struct.Struct("!i").unpack_from


def decode_row_change(data: bytes | memoryview, offset: int = 0, *, streamed: bool = False) -> Change:
    """An Insert, Update or Delete message: the hottest code of incremental sync. Inside a streamed transaction
    (``streamed``) the message carries the transaction's xid after its tag.

    Written flat (no reader object, no method call per column) because it runs once per changed row.
    """
    code = data[offset]
    xid: int | None = None
    if streamed:
        xid = _INT32(data, offset + 1)[0]
        offset += 4
    relation, marker = _RELATION_MARKER(data, offset + 1)
    pos = offset + 6
    old: list[Value] | None = None
    old_kind: str | None = None
    if code == _U and (marker == _K or marker == _O):
        old, pos = read_tuple(data, pos)
        old_kind = chr(marker)
        pos += 1  # 'N'
    values, _ = read_tuple(data, pos)
    if code == _I:
        return Change("I", relation, values, None, None, xid)
    if code == _U:
        return Change("U", relation, values, old, old_kind, xid)
    return Change("D", relation, None, values, chr(marker), xid)


def python_tuple(data: bytes | memoryview, pos: int) -> tuple[list[Value], int]:
    """TupleData at ``pos``: the column values and the position after them (``tuplecodec.read_tuple`` in C).

    A bytes message is sliced directly (a slice of bytes is bytes); a memoryview's slices are copied out. A value or
    column count the message does not hold raises ValueError (a slice would silently cut the value short).
    """
    unpack_int32 = _INT32
    size = len(data)
    if pos < 0 or pos > size - 2:
        raise _malformed("no column count", pos)
    count = _INT16(data, pos)[0]
    if count < 0:
        raise _malformed("negative column count", pos)
    pos += 2
    values: list[Value] = []
    append = values.append
    copy = type(data) is not bytes
    for _ in range(count):
        if pos >= size:
            raise _malformed("message ends before its columns", pos)
        kind = data[pos]
        if kind == 116:  # 't' text
            if pos > size - 5:
                raise _malformed("no value length", pos)
            length = unpack_int32(data, pos + 1)[0]
            end = pos + 5 + length
            if length < 0 or end > size:
                raise _malformed("value longer than the message", pos)
            append(bytes(data[pos + 5:end]) if copy else data[pos + 5:end])  # type: ignore[arg-type]
            pos = end
        elif kind == _N:
            append(None)
            pos += 1
        elif kind == _U_KIND:  # an unchanged TOASTed value
            append(UNCHANGED)
            pos += 1
        else:  # 'b' (binary) is never requested
            raise _malformed("unknown column kind", pos)
    return values, pos


def _malformed(what: str, pos: int) -> ValueError:
    """A TupleData that does not fit its message (the same words as ``tuplecodec.read_tuple``)."""
    return ValueError(f"malformed pgoutput TupleData: {what} at byte {pos}")


#: TupleData reader: ``read_tuple(data, pos) -> (values, end)``, in C when built.
read_tuple = python_tuple if TUPLECODEC is None else TUPLECODEC.read_tuple


class _Reader:
    __slots__ = ("buf", "pos")

    def __init__(self, buf: memoryview, pos: int) -> None:
        self.buf = buf
        self.pos = pos

    def take(self, n: int) -> memoryview:
        out = self.buf[self.pos:self.pos + n]
        self.pos += n
        return out

    def byte(self) -> int:
        value = self.buf[self.pos]
        self.pos += 1
        return value

    def int8(self) -> int:
        return self.byte()

    def int16(self) -> int:
        value: int = struct.unpack_from("!h", self.buf, self.pos)[0]
        self.pos += 2
        return value

    def int32(self) -> int:
        value: int = struct.unpack_from("!i", self.buf, self.pos)[0]
        self.pos += 4
        return value

    def int64(self) -> int:
        value: int = struct.unpack_from("!q", self.buf, self.pos)[0]
        self.pos += 8
        return value

    def string(self) -> str:
        end = self.pos
        buf = self.buf
        while buf[end] != 0:
            end += 1
        value = bytes(buf[self.pos:end]).decode()
        self.pos = end + 1
        return value


__all__ = [
    "LOOPS",
    "TUPLECODEC",
    "UNCHANGED",
    "Begin",
    "Change",
    "Column",
    "Commit",
    "Decoder",
    "Other",
    "Relation",
    "StreamAbort",
    "StreamCommit",
    "StreamStart",
    "StreamStop",
    "Truncate",
    "Value",
    "decode_row_change",
    "int_to_lsn",
    "lsn_to_int",
    "pg_time",
    "python_tuple",
    "read_tuple",
]
