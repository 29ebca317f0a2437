"""The transaction assembler of the incremental sync: pgoutput messages into whole source transactions.

It follows Begin / Commit, keeps streamed (in-progress, protocol 2) transactions aside until their StreamCommit
(in memory up to ``SPILL_BYTES``, then in a temporary file: :class:`Spill`) and drops the ones that abort, skips
transactions the destination already has (committed before the applied position), drops changes of tables the
migration does not sync or that came before a table's start LSN, and hands the rest to the batcher. It tells the
position tracker what it read; a transaction at or past the stop-before LSN ends the run before it.
"""

from __future__ import annotations

import struct
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

from airflow_pgmigrate.engine.incremental.batcher import Batcher
from airflow_pgmigrate.engine.incremental.ddl import DdlPlanner, DdlStop, record_of
from airflow_pgmigrate.engine.incremental.pgoutput import (
    Begin,
    Change,
    Commit,
    Decoder,
    Relation,
    StreamAbort,
    StreamCommit,
    StreamStart,
    StreamStop,
    Truncate,
    decode_row_change,
    read_tuple,
)
from airflow_pgmigrate.engine.incremental.positions import PositionTracker, StopConditions
from airflow_pgmigrate.engine.incremental.stream import PAYLOAD
from airflow_pgmigrate.engine.incremental.targets import TableTargets

#: Changes of a streamed transaction kept in memory before spilling to disk.
SPILL_BYTES = 32 * 1024 * 1024
#: Message tags (as bytes of the payload): row changes, and what a streamed transaction spills until its commit (its
#: Relation messages too: a DDL inside it changes a table's shape at one point of its changes, applied at replay).
ROW_TAGS = frozenset(b"IUD")
SPILLED_TAGS = frozenset(b"IUDTR")
BEGIN, COMMIT, INSERT = 66, 67, 73  # 'B', 'C', 'I'
_unpack_from = struct.unpack_from


class Spill:
    """Messages of one streamed (in-progress) transaction: in memory up to a limit, then in a temporary file."""

    def __init__(self) -> None:
        self.memory: list[bytes] = []
        self.size = 0
        self.file: BinaryIO | None = None
        self.aborted: set[int] = set()

    def add(self, payload: bytes) -> None:
        if self.file is None and self.size + len(payload) > SPILL_BYTES:
            self.file = tempfile.TemporaryFile(prefix="pgmigrate-stream-")
            for item in self.memory:
                self.file.write(struct.pack("!I", len(item)) + item)
            self.memory = []
        if self.file is not None:
            self.file.write(struct.pack("!I", len(payload)) + payload)
        else:
            self.memory.append(payload)
        self.size += len(payload)

    def messages(self) -> Iterator[bytes]:
        if self.file is None:
            yield from self.memory
            return
        self.file.seek(0)
        while True:
            head = self.file.read(4)
            if not head:
                return
            (length,) = struct.unpack("!I", head)
            yield self.file.read(length)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


@dataclass
class Txn:
    """The source transaction being read."""

    begin: Begin
    #: Committed before the applied position: already in the destination (re-sent after a restart).
    skip: bool = False
    #: Replicated DDL was applied inside it (its commit is waited for).
    ddl: bool = False
    #: The batch as it was when the transaction began (:meth:`Batcher.mark`).
    mark: tuple[int, int] = (0, 0)


@dataclass
class DdlContext:
    """What the assembler needs to replicate DDL: the planner, the records applied by hand, the writer's session
    and the log."""

    planner: DdlPlanner
    done_by_hand: set[int]
    writer_session: Any
    log: Callable[[str], None]


class Assembler:
    """Reads XLogData messages (``feed``) into transactions for the batcher.

    ``applied``: the destination's recorded position at the run's start (transactions committed before it are
    skipped). ``stopped_at``: set to the commit time of the transaction the stop-before LSN left for later.
    """

    def __init__(self, targets: TableTargets, batcher: Batcher, positions: PositionTracker, stops: StopConditions,
                 applied: int, ddl: DdlContext | None = None) -> None:
        self.targets, self.batcher, self.positions, self.stops = targets, batcher, positions, stops
        self.applied = applied
        self.ddl = ddl
        self.decoder = Decoder()
        self.txn: Txn | None = None
        self.stream_xid: int | None = None  # inside a StreamStart ... StreamStop block of this transaction
        self.spills: dict[int, Spill] = {}
        self.skipped = 0
        self.stopped_at: int | None = None

    @property
    def in_transaction(self) -> bool:
        return self.txn is not None

    @property
    def unsettled(self) -> bool:
        """A transaction or streamed transaction was read in part."""
        return bool(self.spills) or self.txn is not None

    def close(self) -> None:
        for spill in self.spills.values():
            spill.close()

    def feed(self, message: bytes) -> bool:
        """One XLogData message; True when the run must stop before the transaction it starts."""
        self.positions.receive(_unpack_from("!Q", message, 1)[0])
        tag = message[PAYLOAD]
        if self.stream_xid is not None and tag in SPILLED_TAGS:
            self._spill(self.stream_xid).add(message[PAYLOAD:])
            return False
        if tag in ROW_TAGS:
            # The hot path: one row change of an ordinary transaction. An insert's new row goes to the batcher
            # without a Change object (the commonest message).
            txn = self.txn
            if txn is None or txn.skip:
                return False
            rel = _unpack_from("!i", message, PAYLOAD + 1)[0]
            tables = self.targets.tables
            table = tables[rel] if rel in tables else self.targets.target(rel)
            if table is None:
                if rel in self.targets.capture_oids:
                    self._ddl(txn, decode_row_change(message, PAYLOAD))
                return False
            if txn.begin.commit_lsn < table.start_lsn:
                return False
            if tag == INSERT:
                self.batcher.add_insert(rel, table, read_tuple(message, PAYLOAD + 6)[0], len(message) - PAYLOAD,
                                        txn.begin)
            else:
                self.batcher.add(rel, table, decode_row_change(message, PAYLOAD), len(message) - PAYLOAD, txn.begin)
            return False
        if tag == BEGIN:  # once per transaction: no decoder call
            return self._begin(Begin(*_unpack_from("!qqi", message, PAYLOAD + 1)))
        if tag == COMMIT:
            self._end(Commit(*_unpack_from("!qqq", message, PAYLOAD + 2)))
            return False
        return self._message(self.decoder.decode(message, PAYLOAD), len(message) - PAYLOAD)

    def _message(self, item: Any, size: int) -> bool:
        item_type = type(item)
        if item_type is Begin:
            return self._begin(item)
        if item_type is Relation:
            self.targets.describe(item)
        elif item_type is StreamStart:
            self.stream_xid = item.xid
            self.positions.stream_started()
        elif item_type is StreamStop:
            self.stream_xid = None
            self.positions.stream_stopped()
        elif item_type is StreamAbort:
            self._abort(item)
        elif item_type is Change or item_type is Truncate:
            if self.txn is not None and not self.txn.skip:
                self._add(self.txn, item, size)
        elif item_type is StreamCommit:
            return self._stream_commit(item)
        elif item_type is Commit:
            self._end(item)
        return False

    def _spill(self, xid: int) -> Spill:
        spill = self.spills.get(xid)
        if spill is None:
            spill = self.spills[xid] = Spill()
            self.positions.streamed_read(xid)
        return spill

    def _stopped_before(self, commit_lsn: int, commit_time: int) -> bool:
        if not self.stops.excludes(commit_lsn):
            return False
        self.stopped_at = commit_time
        return True

    def _first_alone(self) -> None:
        """Under the caps, what was read before a transaction is committed first if the run committed nothing yet
        (see :meth:`Pace.first_alone`)."""
        batcher = self.batcher
        if batcher.pace.capped and batcher.pace.first_alone(batcher.pending):
            batcher.flush()

    def _begin(self, begin: Begin) -> bool:
        if self.stops.before is not None and self._stopped_before(begin.commit_lsn, begin.commit_time):
            return True  # committed at or after the stop point: left for later
        self._first_alone()
        self.txn = Txn(begin, skip=begin.commit_lsn < self.applied, mark=self.batcher.mark())
        self.positions.begin()
        return False

    def _abort(self, item: StreamAbort) -> None:
        spill = self.spills.get(item.xid)
        if spill is None:
            return
        if item.subxid == item.xid:
            spill.close()
            del self.spills[item.xid]
            self.positions.streamed_done(item.xid)
        else:
            spill.aborted.add(item.subxid)

    def _stream_commit(self, item: StreamCommit) -> bool:
        if self._stopped_before(item.commit_lsn, item.commit_time):
            return True
        self._first_alone()
        spill = self.spills.pop(item.xid, None)
        self.positions.streamed_done(item.xid)
        txn = self.txn = Txn(Begin(item.commit_lsn, item.commit_time, item.xid), skip=item.commit_lsn < self.applied,
                             mark=self.batcher.mark())
        self.positions.begin()
        if spill is not None:
            if not txn.skip:
                self._replay(spill, txn)
            spill.close()
        self._end(item)
        return False

    def _replay(self, spill: Spill, txn: Txn) -> None:
        """The changes of a streamed transaction, now committed, in their order (aborted subtransactions left out)."""
        decoder = Decoder()
        decoder.in_stream = True
        targets = self.targets
        outside: dict[int, Relation | None] = {}  # descriptions the other transactions use, restored after
        try:
            for raw in spill.messages():
                change = decoder.decode(raw)
                if isinstance(change, Relation):
                    outside.setdefault(change.oid, targets.relations.get(change.oid))
                    targets.describe(change)
                elif isinstance(change, (Change, Truncate)) and change.xid not in spill.aborted:
                    if not self._add(txn, change, len(raw)):
                        break  # the caps stopped the run
        finally:
            targets.restore(outside)

    def _add(self, txn: Txn, item: Change | Truncate, size: int) -> bool:
        commit_lsn = txn.begin.commit_lsn if txn.begin is not None else 0
        targets = self.targets
        if isinstance(item, Truncate):
            tables = [t for t in (targets.target(r) for r in item.relations) if t is not None
                      and commit_lsn >= t.start_lsn]
            self.batcher.truncate(item.relations, tables, item.restart_identity, txn.begin)
            return not self.batcher.pace.over
        table = targets.target(item.relation)
        if table is None:
            return self._ddl(txn, item) if item.relation in targets.capture_oids else True
        if commit_lsn < table.start_lsn:
            return True
        return self.batcher.add(item.relation, table, item, size, txn.begin)

    def _ddl(self, txn: Txn, change: Change) -> bool:
        """A row of the source's DDL log: its statement applied at this point of the transaction (written and
        waited for), unless a person applied it by hand. False: the caps stopped the run before it."""
        if change.kind != "I" or self.ddl is None:
            return True
        record = record_of(self.targets.relations[change.relation], change, txn.begin.commit_lsn)
        if record.id in self.ddl.done_by_hand:
            self.ddl.log(f"incremental ddl skipped={record.id} tag={record.tag!r}: applied by hand")
            return True
        try:
            step = self.ddl.planner.plan(record)
        except DdlStop:
            self.batcher.flush_before(txn.mark)  # what committed before this transaction is applied all the same
            raise
        if step is None:
            return True
        if not self.batcher.ddl(step, txn.begin):
            return False
        self.targets.shapes_changed(self.ddl.writer_session)
        txn.ddl = True
        return True

    def _end(self, item: Commit | StreamCommit) -> None:
        txn = self.txn
        skipped = txn is not None and txn.skip
        self.positions.end(item.end_lsn, skipped=skipped, changes_waiting=bool(self.batcher.batch))
        if skipped:
            self.skipped += 1
        else:
            self.batcher.transaction_read(item.end_lsn, item.commit_time, txn.begin if txn is not None else None)
            if txn is not None and txn.ddl:
                self.batcher.writer.drain()  # committed: every session sees the new shapes from here on
                self.targets.ddl_committed()
        self.txn = None


__all__ = ["SPILLED_TAGS", "SPILL_BYTES", "ROW_TAGS", "Assembler", "Spill", "Txn"]
