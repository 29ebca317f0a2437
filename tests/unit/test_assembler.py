"""The transaction assembler and the batcher, fed pgoutput messages built here (no server): skipped, streamed,
aborted and stopped-before transactions, what reaches the writer, and what the position tracker is told."""

from __future__ import annotations

import struct
import time
from typing import Any

from airflow_pgmigrate.engine.incremental.apply import TableTarget
from airflow_pgmigrate.engine.incremental.assembler import Assembler
from airflow_pgmigrate.engine.incremental.batcher import Batcher, BatchLimits, Pace
from airflow_pgmigrate.engine.incremental.pgoutput import Relation
from airflow_pgmigrate.engine.incremental.positions import PositionTracker, StopConditions
from airflow_pgmigrate.engine.names import QualifiedName
from airflow_pgmigrate.engine.throttle import Throttle

REL = 16384


def wal(payload: bytes, start: int) -> bytes:
    return b"w" + struct.pack("!QQq", start, start, 0) + payload


def begin(final_lsn: int, xid: int) -> bytes:
    return b"B" + struct.pack("!qqi", final_lsn, 1_000_000, xid)


def commit(commit_lsn: int, end_lsn: int) -> bytes:
    return b"C\x00" + struct.pack("!qqq", commit_lsn, end_lsn, 1_000_000)


def relation(xid: int | None = None, extra: bool = False) -> bytes:
    """The Relation message of ``public.t`` (id, v), with a third column ``w`` when ``extra``."""
    head = b"R" + (struct.pack("!i", xid) if xid is not None else b"") + struct.pack("!i", REL)
    columns = b"\x01id\x00" + struct.pack("!ii", 23, -1) + b"\x00v\x00" + struct.pack("!ii", 25, -1)
    if extra:
        columns += b"\x00w\x00" + struct.pack("!ii", 25, -1)
    return head + b"public\x00t\x00d" + struct.pack("!h", 3 if extra else 2) + columns


def insert(key: int, xid: int | None = None) -> bytes:
    values = [str(key).encode(), b"v"]
    row = struct.pack("!h", len(values)) + b"".join(b"t" + struct.pack("!i", len(v)) + v for v in values)
    return b"I" + (struct.pack("!i", xid) if xid is not None else b"") + struct.pack("!i", REL) + b"N" + row


def stream_start(xid: int) -> bytes:
    return b"S" + struct.pack("!iB", xid, 1)


def stream_commit(xid: int, commit_lsn: int, end_lsn: int) -> bytes:
    return b"c" + struct.pack("!iBqqq", xid, 0, commit_lsn, end_lsn, 1_000_000)


def stream_abort(xid: int, subxid: int) -> bytes:
    return b"A" + struct.pack("!ii", xid, subxid)


class Targets:
    """Table targets without a destination: every change of ``REL`` goes to ``public.t``."""

    def __init__(self) -> None:
        self.tables: dict[int, TableTarget | None] = {}
        self.relations: dict[int, Relation] = {}
        self.described: list[int] = []
        self.capture_oids: set[int] = set()
        #: The relation description each change was assigned under (its number of columns).
        self.shapes: list[int] = []

    def describe(self, rel: Relation) -> None:
        self.described.append(rel.oid)
        self.relations[rel.oid] = rel
        self.tables.pop(rel.oid, None)

    def restore(self, descriptions: dict[int, Relation | None]) -> None:
        for oid, rel in descriptions.items():
            self.tables.pop(oid, None)
            if rel is None:
                self.relations.pop(oid, None)
            else:
                self.relations[oid] = rel

    def target(self, rel: int) -> TableTarget | None:
        self.shapes.append(len(self.relations[rel].columns))
        name = QualifiedName("public", "t")
        self.tables[rel] = TableTarget(name, name, [(0, "id"), (1, "v")], [0], ["id"], False, None)
        return self.tables[rel]


class Writer:
    """Collects what the batcher hands over, as the writer thread would receive it."""

    def __init__(self) -> None:
        self.items: list[tuple[Any, ...]] = []

    def submit(self, item: tuple[Any, ...]) -> None:
        self.items.append(item)

    def written(self) -> list[tuple[str, int, int | None]]:
        """(kind, changes, end LSN) of each item."""
        return [(item[0], item[1].changes if item[1] is not None else 0, item[2] if len(item) > 2 else None)
                for item in self.items]


def pipeline(applied: int = 100, before: int | None = None,
             part_changes: int = 1000) -> tuple[Assembler, PositionTracker, Writer]:
    positions = PositionTracker(applied, applied)
    writer = Writer()
    pace = Pace(Throttle(mb_per_second=None, rows_per_second=None), time.monotonic() + 60, lambda: None,
                lambda txn: None)
    limits = BatchLimits(part_changes, 1 << 30, 1000, 1 << 30, 1.0)
    batcher = Batcher(writer, pace, positions, limits, collapse=True)  # type: ignore[arg-type]
    stops = StopConditions(time.monotonic() + 60, target=10_000, before=before)
    return Assembler(Targets(), batcher, positions, stops, applied), positions, writer  # type: ignore[arg-type]


def feed(assembler: Assembler, payloads: list[bytes], start: int = 200) -> bool:
    stopped = False
    for n, payload in enumerate(payloads):
        stopped = assembler.feed(wal(payload, start + n))
        if stopped:
            break
    return stopped


def test_a_transaction_reaches_the_writer_whole_with_its_end_lsn():
    assembler, positions, writer = pipeline()
    feed(assembler, [begin(300, 7), relation(), insert(1), insert(2), commit(300, 310)])
    assert writer.items == [] and assembler.batcher.pending  # batched, waiting for more transactions
    assert positions.position == 310 and not positions.caught_up_with(310)
    assembler.batcher.flush()
    assert writer.written() == [("commit", 2, 310)]
    assert positions.caught_up_with(310) and not positions.idle  # handed, not committed yet


def test_a_transaction_before_the_applied_position_is_skipped_and_accounted_for():
    assembler, positions, writer = pipeline(applied=500)
    feed(assembler, [begin(300, 7), relation(), insert(1), commit(300, 310)])
    assembler.batcher.flush()
    assert writer.items == [] and assembler.skipped == 1
    assert positions.idle and positions.feedback().flushed == 500  # never less than what is applied


def test_a_transaction_with_nothing_for_us_moves_the_progress_row_only():
    assembler, positions, writer = pipeline()
    feed(assembler, [begin(300, 7), commit(300, 310)])
    assembler.batcher.flush()
    assert writer.written() == [("progress", 0, 310)]


def test_a_streamed_transaction_is_applied_at_its_commit_without_its_aborted_subtransaction():
    assembler, positions, writer = pipeline()
    feed(assembler, [stream_start(9), relation(xid=9), insert(1, xid=9), insert(2, xid=10), b"E"])
    assert assembler.spills and not positions.idle
    positions.keepalive(900)
    assert positions.position == 100  # its changes are still unapplied
    feed(assembler, [stream_start(9), insert(3, xid=9), b"E", stream_abort(9, 10), stream_commit(9, 400, 410)],
         start=300)
    assembler.batcher.flush()
    assert writer.written() == [("commit", 2, 410)]  # keys 1 and 3; key 2 was in the aborted subtransaction
    assert not assembler.spills and positions.position == 410


def test_a_streamed_transaction_replays_its_own_relation_descriptions_in_order_then_puts_back_the_others():
    """A DDL inside a streamed transaction changes a table's shape between its changes: each change is assigned under
    the description that preceded it in the stream, and transactions outside it keep their own description."""
    assembler, positions, writer = pipeline()
    feed(assembler, [begin(250, 5), relation(), insert(7), commit(250, 260)])
    feed(assembler, [stream_start(9), relation(xid=9), insert(1, xid=9), relation(xid=9, extra=True),
                     insert(2, xid=9), b"E"], start=270)
    assert assembler.targets.shapes == [2]  # only the ordinary transaction's change so far: nothing described early
    feed(assembler, [stream_commit(9, 400, 410)], start=300)
    assert assembler.targets.shapes == [2, 2, 3]
    assert len(assembler.targets.relations[REL].columns) == 2  # the ordinary transactions' description again


def test_an_aborted_streamed_transaction_leaves_nothing_open():
    assembler, positions, writer = pipeline()
    feed(assembler, [stream_start(9), relation(xid=9), insert(1, xid=9), b"E", stream_abort(9, 9)])
    assembler.batcher.flush()
    assert writer.items == [] and not assembler.spills
    positions.keepalive(900)
    assert positions.idle and positions.feedback().flushed == 900


def test_a_transaction_at_the_stop_before_lsn_ends_the_run_before_it():
    assembler, positions, writer = pipeline(before=400)
    assert feed(assembler, [begin(300, 7), relation(), insert(1), commit(300, 310), begin(400, 8), insert(2)])
    assert assembler.stopped_at == 1_000_000 and assembler.txn is None
    assembler.batcher.flush()
    assert writer.written() == [("commit", 1, 310)]
    assert positions.position == 310


def test_a_transaction_larger_than_a_batch_is_written_in_parts_then_committed():
    assembler, positions, writer = pipeline(part_changes=2)
    feed(assembler, [begin(300, 7), relation(), insert(1), insert(2), insert(3), commit(300, 310)])
    assert writer.written() == [("partial", 2, None), ("commit", 1, 310)]
