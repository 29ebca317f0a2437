"""Incremental sync: stream the slot over the replication protocol, decode pgoutput, apply exactly once.

One ``run()`` streams and applies for a bounded window (or until caught up) and returns the lag. The last applied
source commit is recorded in the destination in the same transaction as the changes it covers, and the source is told
(flush LSN) only what the destination has made durable (:class:`DurableFeedback`): a restart, or a crash of the
destination whatever its ``synchronous_commit``, at any instant skips what was applied and loses nothing.
Rolled-back transactions never reach us (the server decodes committed ones only; streamed ones that abort are
dropped). Streamed in-progress transactions (protocol 2) spill to a temporary file, so memory stays bounded.
"""

from __future__ import annotations

import collections
import gc
import queue
import re
import select
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, BinaryIO

import psycopg
from psycopg import sql

from airflow_pgmigrate.engine import catalog
from airflow_pgmigrate.engine.apply import Applier, ApplyError, Batch, RowsNotMatched, TableTarget
from airflow_pgmigrate.engine.connection import ConnectionInfo, connect
from airflow_pgmigrate.engine.definition_only import tables_without_rows
from airflow_pgmigrate.engine.failures import sync_failure_message
from airflow_pgmigrate.engine.names import NameMapper, QualifiedName, TableSelector, parse_qualified_name
from airflow_pgmigrate.engine.pgoutput import (
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
    int_to_lsn,
    lsn_to_int,
    pg_time,
)
from airflow_pgmigrate.engine.publication import drop_publication
from airflow_pgmigrate.engine.rewrite import DefinitionRewriter
from airflow_pgmigrate.engine.sqlfilter import safe_row_filter
from airflow_pgmigrate.engine.state import MigrationState
from airflow_pgmigrate.engine.throttle import Throttle
from airflow_pgmigrate.exceptions import SyncError

if TYPE_CHECKING:
    from airflow_pgmigrate.config import MigrationConfig

#: A batch is applied when it holds this many changes or bytes, or has waited this long. Inside one large transaction
#: a batch is written (not committed) at these sizes, so memory stays bounded: a decoded change takes several times
#: its wire size in Python objects, and the writer holds at most two batches besides the one being filled.
BATCH_CHANGES = 50_000
BATCH_BYTES = 16 * 1024 * 1024
BATCH_SECONDS = 1.0
FEEDBACK_SECONDS = 1.0
#: Under a throttle, a batch holds at most this long's worth of the caps (half the window, if that is shorter): each
#: payment to the caps is short, the applied rate holds over a few seconds, and a window always carries a batch.
PACE_SECONDS = 0.2
#: At the end of a poke with WAL left unread, how long the stream is read ahead (nothing applied) for the commit time
#: of the oldest transaction not applied yet.
READ_AHEAD_SECONDS = 1.0
#: Changes of a streamed transaction kept in memory before spilling to disk.
SPILL_BYTES = 32 * 1024 * 1024
#: Message tags (as bytes of the payload): row changes, and what a streamed transaction spills until its commit.
ROW_TAGS = frozenset(b"IUD")
SPILLED_TAGS = frozenset(b"IUDT")


@dataclass
class SyncResult:
    applied_lsn: str
    transactions: int = 0
    changes: int = 0
    skipped_transactions: int = 0
    caught_up: bool = False
    lag_bytes: int = 0
    lag_seconds: float = 0.0
    seconds: float = 0.0
    last_commit_time: str | None = None
    target_lsn: str | None = None
    #: How ``lag_seconds`` was measured (see docs/incremental.md): ``nothing_unapplied`` (0),
    #: ``oldest_unapplied_commit`` (the age of that commit) or ``unread_wal_age`` (the stream did not reach a commit).
    lag_basis: str = "nothing_unapplied"
    oldest_unapplied_commit_time: str | None = None
    #: The caps did not allow the next write before the window's end: what was read after it is left for later.
    throttled: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class _WalSample:
    """The source's WAL insert position and clock at one instant (``mono``: our ``time.monotonic()`` then)."""

    lsn: int
    clock: datetime
    mono: float

    def source_now(self) -> datetime:
        """The source's clock now, from this sample and the time elapsed here since."""
        return self.clock + timedelta(seconds=time.monotonic() - self.mono)


def _wal_sample(src: psycopg.Connection) -> _WalSample:
    row = src.execute("SELECT pg_current_wal_insert_lsn()::text, clock_timestamp()").fetchone()
    assert row is not None
    return _WalSample(lsn_to_int(row[0]), row[1], time.monotonic())


class _Pace:
    """The caps' use in one run: batches sized to them, and payments that never wait past the window's end.

    The run's first commit is paid whatever the window: a transaction larger than any window carries at the caps
    must still be applied (the run then ends after its commit, later than its window, and says so). Past it, a write
    the caps would allow only after the window is not written: ``over`` is set, the run stops, and what was read
    after the last commit (from the transaction committed at ``unapplied_time`` on) is left for the next run.
    """

    def __init__(self, sync: IncrementalSync, window_seconds: float, deadline: float,
                 keep_alive: Callable[[], None]) -> None:
        self.sync, self.window_seconds, self.deadline, self.keep_alive = sync, window_seconds, deadline, keep_alive
        self.limits = sync._batch_limits(window_seconds)
        self.capped = sync.throttle.rows_per_second is not None or sync.throttle.bytes_per_second is not None
        self.over = False
        self.unapplied_time: int | None = None
        self.commits = 0  # commits handed to the writer
        self.transactions = 0  # transactions read up to the last of them
        self._told = False

    def paid(self, part: Batch, oldest_unapplied: int | None, txn: _Txn | None) -> bool:
        """Pay for writing ``part``; False (and ``over``) when the caps allow it only after the window."""
        if self.over:
            return False
        first = not self.commits
        if self.sync.throttle.pay(part.changes, part.bytes, None if first else self.deadline, self._sleep):
            if first and not self._told and time.monotonic() > self.deadline:
                self._told = True
                self.sync._warn_overrun(self.window_seconds, txn)
            return True
        self.over = True
        self.left_at(oldest_unapplied if oldest_unapplied is not None else
                     txn.begin.commit_time if txn is not None else None)
        return False

    def _sleep(self, seconds: float) -> None:
        """Wait in steps of a second at most, telling the source we are alive after each full one: a long payment
        (a huge row at a small cap) must not let the source's wal_sender_timeout end the stream."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            time.sleep(min(left, 1.0))
            if left > 1.0:
                self.keep_alive()

    def first_alone(self, pending: bool) -> bool:
        """Whether what was read before the next transaction must be committed first: the run's first commit is
        paid whatever the window for the sake of a transaction no window carries, which must not be one read behind
        others that were still waiting in the batch (the poke that starts with it applies it, not this one)."""
        return self.capped and not self.commits and pending

    def committed(self, transactions: int) -> None:
        self.commits += 1
        self.transactions = transactions

    def left_at(self, commit_time: int | None) -> None:
        """The oldest transaction read and left unapplied was committed at ``commit_time``."""
        if self.unapplied_time is None:
            self.unapplied_time = commit_time


@dataclass
class _Txn:
    begin: Begin
    #: Committed before the applied position: already in the destination (re-sent after a restart).
    skip: bool = False


class _Spill:
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

    def messages(self) -> Any:
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


def _unqualified(type_name: str | None) -> str | None:
    """A type's name without its schema: a user type of a renamed schema differs only there on the destination."""
    return None if type_name is None else re.sub(r'^(?:"(?:[^"]|"")+"|[^".(]+)\.', "", type_name)


@contextmanager
def _cyclic_gc_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector for one run.

    Decoding allocates millions of short-lived objects that form no reference cycles (reference counting frees
    them), while the collector would scan the batch's live objects again and again: a quarter of the sync's CPU,
    measured (8.4 -> 6.3 us per change). Paused for the run's bounded window, then restored.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class DurableFeedback:
    """The one owner of what may be reported to the source as flushed: the end LSN of the last source transaction
    whose destination commit is durable, never more.

    A destination commit returns before its WAL is flushed when the destination runs ``synchronous_commit = off``
    (a bulk-load target, a test server); a crash then takes the commit back, and a source told it was flushed would
    never send it again. As PostgreSQL's own apply worker does, each commit is remembered with the destination's WAL
    position after it, and a source position becomes reportable once the destination's flush position
    (``pg_current_wal_flush_lsn()``) has passed that point. The writer thread adds, the reading thread asks.
    """

    def __init__(self, applied: int) -> None:
        self._lock = threading.Lock()
        #: (source end LSN, destination WAL position after its commit), oldest first.
        self._pending: collections.deque[tuple[int, int]] = collections.deque()
        self.position = applied

    @property
    def settled(self) -> bool:
        """Whether every commit made so far is known to be durable."""
        return not self._pending

    def committed(self, source_end: int, destination_lsn: int) -> None:
        with self._lock:
            self._pending.append((source_end, destination_lsn))

    def flushed(self, destination_flushed: int) -> int:
        """The source position that may be reported, now that the destination flushed up to ``destination_flushed``."""
        with self._lock:
            while self._pending and self._pending[0][1] <= destination_flushed:
                self.position = max(self.position, self._pending.popleft()[0])
            return self.position


def _wal_lsn(conn: psycopg.Connection, function: str) -> int:
    row = conn.execute(f"SELECT {function}()::text").fetchone()
    assert row is not None
    return lsn_to_int(row[0])


class _Writer:
    """Writes on the destination in a thread of its own, in order, while the stream is read and decoded.

    The destination's work (and the wait for it) overlaps decoding. Items: ``("commit", batch, end_lsn, time)``
    writes a batch and commits it with its progress row; ``("partial", batch)`` writes part of a large transaction
    into the open destination transaction; ``("progress", None, end_lsn, time)`` only moves the progress row. One
    item waits while another is written, so memory stays bounded. ``applied`` is the end LSN of the last commit;
    each commit is handed to ``feedback``, which alone decides what the source is told is flushed. The first error
    stops the writer; the reading thread raises it at its next ``submit``, ``check`` or ``drain``.
    """

    def __init__(self, sync: IncrementalSync, dst: psycopg.Connection, applier: Applier, result: SyncResult,
                 applied: int, confirmed: int) -> None:
        self._sync, self._dst, self._applier, self._result = sync, dst, applier, result
        self.applied = applied
        # The recorded position may come from a run that died before its commits were flushed: durable only once the
        # destination's flush position passes its WAL position now.
        self.feedback = DurableFeedback(min(confirmed, applied))
        if applied > confirmed:
            self.feedback.committed(applied, _wal_lsn(dst, "pg_current_wal_insert_lsn"))
            dst.rollback()
        self.error: BaseException | None = None
        self._queue: queue.Queue[tuple[Any, ...] | None] = queue.Queue(maxsize=1)
        self._pending = 0  # items submitted and not finished
        self._uncommitted = 0  # changes written by partial items, counted when their transaction commits
        self._done = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="pgmigrate-writer", daemon=True)
        self._thread.start()

    @property
    def idle(self) -> bool:
        return self._pending == 0

    def submit(self, item: tuple[Any, ...]) -> None:
        self.check()
        with self._done:
            self._pending += 1
        self._queue.put(item)

    def check(self) -> None:
        if self.error is not None:
            raise self.error

    def drain(self) -> None:
        """Wait until everything submitted is written; raise the writer's error, if any."""
        with self._done:
            while self._pending:
                self._done.wait()
        self.check()

    def flushed(self, lookup: psycopg.Connection) -> int:
        """The source position that may be reported as flushed now (asks the destination only when needed)."""
        if self.feedback.settled:
            return self.feedback.position
        return self.feedback.flushed(_wal_lsn(lookup, "pg_current_wal_flush_lsn"))

    def roll_back(self) -> None:
        """After ``drain``: roll back the open destination transaction (parts of a transaction not committed)."""
        self._dst.rollback()

    def make_durable(self) -> int:
        """After ``drain``: flush the destination's WAL (a write committed with ``synchronous_commit = local`` flushes
        every commit before it, without waiting for a synchronous standby that may be down), so that everything
        applied may be reported; returns the reportable position."""
        dst = self._dst
        if not self.feedback.settled:
            with dst.transaction():
                dst.execute("SET LOCAL synchronous_commit = local")  # the local flush; never a standby
                self._sync._touch_progress(dst)  # a commit that wrote nothing would not wait for the flush
            self.feedback.flushed(_wal_lsn(dst, "pg_current_wal_flush_lsn"))
            dst.rollback()
        return self.feedback.position

    def close(self, timeout: float = 60.0) -> None:
        """Stop after the item being written (the caller closes the connection afterwards)."""
        if self._thread.is_alive():
            try:
                self._queue.put(None, timeout=timeout)
            except queue.Full:
                return
            self._thread.join(timeout)

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            try:
                if self.error is None:
                    self._write(item)
            except BaseException as exc:  # noqa: BLE001 - handed to the reading thread, which raises it
                self.error = exc
            finally:
                with self._done:
                    self._pending -= 1
                    self._done.notify_all()

    def _write(self, item: tuple[Any, ...]) -> None:
        sync, dst = self._sync, self._dst
        if item[0] == "partial":
            sync._apply_partial(dst, self._applier, item[1])
            self._uncommitted += item[1].changes
            return
        _, batch, end_lsn, commit_time = item
        if batch is None:
            sync._record_progress(dst, end_lsn, commit_time)
            dst.commit()
        else:
            sync._apply_batch(dst, self._applier, batch, end_lsn, commit_time)
            self._uncommitted += batch.changes
        self._result.changes += self._uncommitted
        self._uncommitted = 0
        self.applied = end_lsn
        self.feedback.committed(end_lsn, _wal_lsn(dst, "pg_current_wal_insert_lsn"))
        dst.rollback()  # the read above opened a transaction
        if commit_time is not None:
            self._result.last_commit_time = pg_time(commit_time).isoformat()


class IncrementalSync:
    def __init__(self, config: MigrationConfig, source: ConnectionInfo, destination: ConnectionInfo, *,
                 log: Callable[[str], None] = lambda message: None) -> None:
        self.config = config
        self.source = source
        self.destination = destination
        self.log = log
        self.state = MigrationState(destination, config.state_schema, config.name)
        caps = config.throttling.incremental
        self.throttle = Throttle(mb_per_second=caps.mb_per_second, rows_per_second=caps.rows_per_second)
        self.tables: dict[int, TableTarget | None] = {}
        self.relations: dict[int, Relation] = {}
        self._destination_shapes: dict[QualifiedName, tuple[list[str], set[str]]] = {}

    # -- setup ---------------------------------------------------------------------------------------------------

    def _progress_table(self) -> sql.Identifier:
        return sql.Identifier(self.config.state_schema, "apply_progress")

    def _ensure_progress(self, conn: psycopg.Connection) -> int:
        self.state.ensure(conn)
        conn.execute(sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} (migration text PRIMARY KEY, applied_lsn pg_lsn NOT NULL, "
            "source_commit_time timestamptz, applied_at timestamptz NOT NULL DEFAULT now())"
        ).format(self._progress_table()))
        row = conn.execute(sql.SQL("SELECT applied_lsn::text FROM {} WHERE migration = %s").format(
            self._progress_table()), (self.config.name,)).fetchone()
        return lsn_to_int(row[0]) if row else 0

    def _table_target(self, rel: Relation, start_lsns: dict[str, int], dst: psycopg.Connection) -> TableTarget | None:
        name = QualifiedName(rel.schema, rel.name)
        if not self._selector(name):
            return None
        mapper = NameMapper(self.config.mapping)
        target = mapper.table(name)
        wanted = None
        for table_key, cols in self.config.objects.columns.items():
            if parse_qualified_name(table_key) == name:
                wanted = set(cols)
        existing, generated = self._destination_columns(dst, target, name)
        columns: list[tuple[int, str]] = []
        for i, col in enumerate(rel.columns):
            if wanted is not None and col.name not in wanted:
                continue
            mapped = mapper.column(name, col.name)
            if mapped in generated:
                continue  # sent by PostgreSQL 18+ (publish_generated_columns); the destination computes its own
            if mapped not in existing:
                raise SyncError(f"DDL on the source: {name} has a column {col.name!r} that the destination table "
                                f"{target} lacks (added after the full load?). Incremental sync stopped before "
                                "applying anything of it: add the column on the destination (or re-run the "
                                "migration), then resume")
            columns.append((i, mapped))
        expected = {mapper.column(name, c) for c in (wanted or [c.name for c in rel.columns])}
        dropped = [c for c in existing if c not in expected and (wanted is None or c in
                                                                 {mapper.column(name, w) for w in wanted})]
        if dropped and wanted is None and not self._added_on_source_later(name, mapper, dropped):
            raise SyncError(f"DDL on the source: {name} no longer has column(s) {', '.join(dropped)} that the "
                            f"destination table {target} has (dropped after the full load?). Incremental sync "
                            "stopped: apply the same change on the destination, then resume")
        self._check_type_changes(rel, name, target, [rel.columns[i].name for i, _ in columns], mapper, dst)
        if rel.replica_identity == "n":
            raise SyncError(f"{name} has REPLICA IDENTITY NOTHING: its updates and deletes are not published. "
                            f"ALTER TABLE {name} REPLICA IDENTITY FULL (or add a primary key)")
        key = [] if rel.replica_identity == "f" else [i for i, c in enumerate(rel.columns) if c.key]
        key_names = [mapper.column(name, rel.columns[i].name) for i in key]
        row_filter = safe_row_filter(self.config, name, dst, "destination", self._ancestors.get(name, ()))
        if row_filter:
            rewriter = DefinitionRewriter(mapper, {name: [c.name for c in rel.columns]}, {name: "r"})
            from pglast import parse_sql
            from pglast.stream import RawStream

            stmt: Any = parse_sql(f"SELECT 1 WHERE {row_filter}")[0].stmt
            rewriter._columns_in(stmt.whereClause, name)
            row_filter = RawStream()(stmt.whereClause)
        upsert = bool(row_filter) or self.config.conflicting_tables == "ignore"
        return TableTarget(name, target, columns, key, key_names, upsert, row_filter,
                           start_lsns.get(name.key, start_lsns.get(str(name), 0)))

    def _destination_columns(self, dst: psycopg.Connection, target: QualifiedName,
                             name: QualifiedName) -> tuple[list[str], set[str]]:
        """A destination table's columns that changes write, and its generated ones (looked up once per run)."""
        shape = self._destination_shapes.get(target)
        if shape is None:
            ident = sql.Identifier(target.schema, target.name).as_string(dst)
            rows = dst.execute("SELECT attname, attgenerated <> '' FROM pg_attribute WHERE attrelid = to_regclass(%s) "
                               "AND attnum > 0 AND NOT attisdropped ORDER BY attnum", (ident,)).fetchall()
            # A table without columns exists all the same (CREATE TABLE t ()): ask the catalog, not its columns.
            if not rows and dst.execute("SELECT to_regclass(%s)", (ident,)).fetchone() == (None,):
                raise SyncError(f"destination table {target} (for {name}) does not exist: run the schema and full "
                                "load steps first")
            shape = ([n for n, gen in rows if not gen], {n for n, gen in rows if gen})
            self._destination_shapes[target] = shape
        return shape

    def _check_type_changes(self, rel: Relation, name: QualifiedName, target: QualifiedName, migrated: list[str],
                            mapper: NameMapper, dst: psycopg.Connection) -> None:
        """Stop when a migrated column's type on the source differs from its type at the full load, unless the
        destination column has been given the new type too (then the change was applied on both sides)."""
        recorded = self._planned_types.get(name)
        if not recorded:
            return
        by_name = {c.name: c for c in rel.columns}
        pairs = {c: (by_name[c].type_oid, by_name[c].typmod) for c in migrated}
        unknown = sorted({p for p in pairs.values() if p not in self._type_names})
        if unknown:  # once per type and run, not once per table
            with connect(self.source) as src:
                rows = src.execute("SELECT t, m, format_type(t, m) FROM unnest(%s::oid[], %s::int[]) AS u(t, m)",
                                   ([t for t, _ in unknown], [m for _, m in unknown])).fetchall()
            self._type_names.update({(int(t), int(m)): str(name) for t, m, name in rows})
        now = {c: self._type_names[p] for c, p in pairs.items()}
        changed = {c: (recorded[c], now[c]) for c in migrated if c in recorded and recorded[c] != now[c]}
        if not changed:
            return
        at_destination: dict[str, str] = dict(dst.execute(
            "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = to_regclass(%s) "
            "AND attnum > 0 AND NOT attisdropped", (sql.Identifier(target.schema, target.name).as_string(dst),)))
        pending = {c: v for c, v in changed.items()
                   if _unqualified(at_destination.get(mapper.column(name, c))) != _unqualified(v[1])}
        if pending:
            details = ", ".join(f"{c!r} from {before} to {after}" for c, (before, after) in pending.items())
            raise SyncError(f"DDL on the source: {name} changed the type of column(s) {details} after the full "
                            f"load. Incremental sync stopped before applying anything of it: change the same "
                            f"column(s) of {target} on the destination (ALTER TABLE ... ALTER COLUMN ... TYPE ...), "
                            "then resume")

    def _added_on_source_later(self, name: QualifiedName, mapper: NameMapper, columns: list[str]) -> bool:
        """Whether the source table has ``columns`` (destination names) now: the relation described changes made
        before they were added (and the destination got them as the DDL message asked), not a dropped column."""
        with connect(self.source) as src:
            now = {mapper.column(name, r[0]) for r in src.execute(
                "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attnum > 0 "
                "AND NOT attisdropped AND attgenerated = ''", (sql.Identifier(name.schema, name.name).as_string(src),))}
        return all(c in now for c in columns)

    # -- replication protocol ------------------------------------------------------------------------------------

    @staticmethod
    def _now_micros() -> int:
        return int((time.time() - 946684800) * 1_000_000)

    def _send_feedback(self, repl: psycopg.Connection, written: int, flushed: int, reply: bool = False) -> None:
        message = b"r" + struct.pack("!QQQqB", written, flushed, flushed, self._now_micros(), 1 if reply else 0)
        self._feedback = (written, flushed)  # what the read-ahead repeats when it asks the source for a keepalive
        repl.pgconn.put_copy_data(message)
        repl.pgconn.flush()

    @staticmethod
    def _read(repl: psycopg.Connection, timeout: float) -> bytes | None:
        """One CopyData message, or None when nothing came within ``timeout``."""
        pgconn = repl.pgconn
        deadline = time.monotonic() + timeout
        while True:
            size, data = pgconn.get_copy_data(1)
            if size > 0:
                return bytes(data)
            if size == -1:
                result = pgconn.get_result()
                message = pgconn.get_error_message() or (result.error_message if result is not None else b"")
                raise SyncError(f"the source ended the replication stream: "
                                f"{message.decode(errors='replace') if isinstance(message, bytes) else message}")
            if size == -2:
                raise SyncError(f"replication stream failed: {pgconn.get_error_message()!r}")
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([pgconn.socket], [], [], min(left, 0.2))
            if ready:
                pgconn.consume_input()

    # -- pace and lag --------------------------------------------------------------------------------------------

    def _batch_limits(self, window_seconds: float) -> tuple[int, int, int, int]:
        """Changes and bytes at which a batch is written in the middle of a transaction, and at a commit.

        Under a cap, a batch holds at most ``PACE_SECONDS`` of it (half the window, if shorter): a lump of a whole
        batch then stays small against the cap over any few seconds, and paying for one never outlasts the window.
        """
        part_changes, part_bytes, commit_changes, commit_bytes = BATCH_CHANGES, BATCH_BYTES, BATCH_CHANGES, \
            BATCH_BYTES // 2
        pace = min(PACE_SECONDS, window_seconds / 2) if window_seconds > 0 else PACE_SECONDS
        rows, nbytes = self.throttle.rows_per_second, self.throttle.bytes_per_second
        if rows:
            part_changes = commit_changes = min(BATCH_CHANGES, max(1, int(rows * pace)))
        if nbytes:
            part_bytes = min(BATCH_BYTES, max(1, int(nbytes * pace)))
            commit_bytes = min(commit_bytes, part_bytes)
        return part_changes, part_bytes, commit_changes, commit_bytes

    def _warn_overrun(self, window_seconds: float, txn: _Txn | None) -> None:
        what = (f"its first transaction (committed at {pg_time(txn.begin.commit_time).isoformat()}, "
                f"LSN {int_to_lsn(txn.begin.commit_lsn)})" if txn is not None else "its first batch")
        self.log(f"incremental warning: this poke runs past its window of {window_seconds:g} s: {what} needs "
                 "longer than that at throttling.incremental's caps, so no window would ever carry it; it is applied "
                 "whole at the caps and the poke ends after its commit. Raise throttling.incremental.rows_per_second "
                 "or mb_per_second, or the sensor's window_seconds, so that one window carries it")

    def _measure_lag_seconds(self, result: SyncResult, repl: psycopg.Connection, unapplied_time: int | None,
                             samples: tuple[_WalSample, _WalSample], accounted: int, applied: int) -> None:
        """Set ``lag_seconds``: the age, on the source's clock at the end of the poke, of the oldest transaction
        committed on the source and not applied (docs/incremental.md, "Lag and not delayed").

        ``unapplied_time`` is that commit's time when the poke read it and left it (the caps, a stop LSN); else,
        with WAL past ``accounted`` (everything before it is applied or has nothing for us), the stream is read
        ahead to the next commit. If it gets neither there nor to the end of the WAL in time, the age of the WAL it
        did not read stands in, from the insert position sampled at the start and the end of the poke.
        """
        start, end = samples
        reached = accounted
        if unapplied_time is None and end.lsn > accounted:
            unapplied_time, reached = self._read_ahead(repl, applied, end.lsn, accounted)
        now = end.source_now()
        if unapplied_time is not None:
            commit = pg_time(unapplied_time)
            result.lag_basis = "oldest_unapplied_commit"
            result.oldest_unapplied_commit_time = commit.isoformat()
            lag = (now - commit).total_seconds()
        elif reached >= end.lsn:
            result.lag_basis, lag = "nothing_unapplied", 0.0
        else:
            seen = start if start.lsn > reached else end  # the first sample of the insert position past `reached`
            result.lag_basis = "unread_wal_age"
            lag = (now - seen.clock).total_seconds()
        result.lag_seconds = round(max(0.0, lag), 3)

    def _read_ahead(self, repl: psycopg.Connection, applied: int, until: int, reached: int) -> tuple[int | None, int]:
        """Read the stream on, applying nothing, to the first transaction not applied yet.

        Returns its commit time (the first Begin or stream commit at or past ``applied``: the stream delivers
        transactions in commit order), or None once a keepalive says the source decoded up to ``until`` without
        one, or after ``READ_AHEAD_SECONDS``; and the position the keepalives reported. Keepalives are asked for
        with the same positions as the poke's last feedback.
        """
        written, flushed = self._feedback
        stop = time.monotonic() + READ_AHEAD_SECONDS
        asked = 0.0
        try:
            while (left := stop - time.monotonic()) > 0:
                if time.monotonic() - asked >= 0.2:
                    self._send_feedback(repl, written, flushed, reply=True)
                    asked = time.monotonic()
                message = self._read(repl, min(left, 0.2))
                if message is None:
                    continue
                if message[0] == 107:  # 'k': keepalive, with the position the source has decoded to
                    reached = max(reached, struct.unpack_from("!Q", message, 1)[0])
                    if reached >= until:
                        return None, reached
                elif message[0] == 119 and message[25] in (66, 99):  # 'B' begin, 'c' stream commit
                    commit_lsn, commit_time = struct.unpack_from("!QQ" if message[25] == 66 else "!Q8xQ", message,
                                                                 26 if message[25] == 66 else 31)
                    if commit_lsn >= applied:
                        return commit_time, reached
        except (SyncError, psycopg.Error) as exc:  # the next poke meets the failure; the lag falls back meanwhile
            self.log(f"incremental warning: reading ahead for the lag failed: {str(exc).strip()[:200]}")
        return None, reached

    # -- the loop -----------------------------------------------------------------------------------------------

    def run(self, *, window_seconds: float = 60.0, stop_when_caught_up: bool = True,
            target_lsn: str | None = None, stop_before_lsn: str | None = None,
            take_lock: bool = True) -> SyncResult:
        """Stream and apply for up to ``window_seconds``; stop once caught up with ``target_lsn`` (default: the
        source's WAL position now). With ``stop_before_lsn``, apply every transaction committed before that LSN and
        none after (verification brings the destination exactly to a snapshot this way). ``take_lock=False`` when
        the caller holds the migration's applier lock already."""
        with _cyclic_gc_paused():
            return self._run(window_seconds, stop_when_caught_up, target_lsn, stop_before_lsn, take_lock)

    def _run(self, window_seconds: float, stop_when_caught_up: bool, target_lsn: str | None,
             stop_before_lsn: str | None, take_lock: bool) -> SyncResult:
        config = self.config
        started = time.monotonic()
        version, confirmed, start_sample = self._source_at_start()
        target = lsn_to_int(target_lsn) if target_lsn else start_sample.lsn
        stop_at = lsn_to_int(stop_before_lsn) if stop_before_lsn else None
        if stop_at is not None:
            target = stop_at
        lock_conn = self._applier_lock(take_lock)
        dst = connect(self.destination, autocommit=False)
        lookup = connect(self.destination)  # catalog lookups of the reading thread; dst belongs to the writer
        repl = connect(self.source, replication=True)
        spills: dict[int, _Spill] = {}
        writer: _Writer | None = None
        applied = 0
        try:
            with dst.transaction():
                applied = self._ensure_progress(dst)
                full_load = self.state.read(dst, "full_load") or {}
            start_lsns = {k: lsn_to_int(v) for k, v in (full_load.get("table_start_lsn") or {}).items() if v}
            self._type_names = {}
            self._planned_types = {parse_qualified_name(p["source"]): p.get("column_types") or {}
                                   for p in full_load.get("plan") or []}
            self._selector = _synced_tables(config, full_load)
            self._start_lsns = start_lsns
            self._replica_role = self._set_replica_role(dst)
            result = SyncResult(applied_lsn=int_to_lsn(applied), target_lsn=int_to_lsn(target))
            self._start_stream(repl, version, applied)
            decoder = Decoder()
            unpack_from = struct.unpack_from
            tables = self.tables  # relation oid -> target (None: not migrated); a new Relation message resets one
            txn_commit_lsn = 0
            writer = _Writer(self, dst, Applier(dst, count_rows=self._replica_role), result, applied, confirmed)
            batch = self.new_batch()
            batch_last_end = 0
            batch_commit_time: int | None = None
            batch_started = 0.0
            received = applied
            position = applied
            last_feedback = 0.0
            txn: _Txn | None = None
            oldest_unapplied: int | None = None
            stream_xid: int | None = None
            deadline = started + window_seconds
            self._feedback = (applied, writer.feedback.position)  # until the first feedback replaces it
            pace = _Pace(self, window_seconds, deadline, lambda: self._send_feedback(repl, *self._feedback))
            part_changes, part_bytes, commit_changes, commit_bytes = pace.limits
            parted = False  # a part of the transaction being read was written (flushed at its commit)

            def write_part() -> bool:
                """A large transaction: write what we have into the open destination transaction, if the caps let
                it be paid within the window."""
                nonlocal batch, parted
                if not pace.paid(batch, oldest_unapplied, txn):
                    return False
                writer.submit(("partial", batch))
                batch = self.new_batch()
                parted = True
                return True

            # Transactions without changes for us (other tables only) move the applied position too, recorded with
            # the next batch or by the next flush: never one destination commit each.
            progress_pending = False

            def flush() -> None:
                nonlocal batch, oldest_unapplied, batch_started, progress_pending, parted
                batch_started = 0.0  # the next transaction opens a new batch window
                if pace.over:
                    return
                if batch:
                    if not pace.paid(batch, oldest_unapplied, txn):
                        return
                    writer.submit(("commit", batch, batch_last_end, batch_commit_time))
                    batch = self.new_batch()
                elif progress_pending:
                    writer.submit(("progress", None, batch_last_end, batch_commit_time))
                else:
                    return
                pace.committed(result.transactions)
                progress_pending = parted = False
                oldest_unapplied = None

            while True:
                if pace.over:
                    break
                now = time.monotonic()
                if now - last_feedback >= FEEDBACK_SECONDS:
                    done = writer.flushed(lookup)
                    # Idle: nothing read is waiting to be committed (no batch, no transaction recorded only as
                    # pending progress, no partial write, nothing in the writer's hands, every commit durable):
                    # only then may the position the source reported be confirmed as flushed.
                    idle = (txn is None and not batch and not progress_pending and stream_xid is None and not spills
                            and writer.idle and writer.feedback.settled)
                    writer.check()  # after reading idle: a writer that failed meanwhile stops us here
                    self._send_feedback(repl, received, done if not idle else max(done, position),
                                        reply=stop_when_caught_up)
                    last_feedback = now
                # Cheapest tests first: this runs once per message.
                if txn is None and batch_started and now - batch_started >= BATCH_SECONDS and (batch or progress_pending):
                    flush()
                if stop_when_caught_up and position >= target and txn is None and not spills and not batch:
                    writer.drain()
                    result.caught_up = True
                    break
                if now >= deadline and txn is None:
                    flush()
                    writer.drain()
                    break
                message = self._read(repl, 0.2)
                if message is None:
                    if txn is None and (batch or progress_pending):
                        flush()
                    continue
                kind = message[0]
                if kind == 107:  # 'k': keepalive
                    wal_end, _, reply = unpack_from("!QQB", message, 1)
                    if txn is None and not batch and stream_xid is None and not spills:
                        position = max(position, wal_end)
                    if reply:
                        self._send_feedback(repl, received, writer.feedback.position)
                        last_feedback = time.monotonic()
                    continue
                if kind != 119:  # 'w': XLogData
                    continue
                data_start = unpack_from("!Q", message, 1)[0]
                if data_start > received:
                    received = data_start
                tag = message[25]
                if stream_xid is not None and tag in SPILLED_TAGS:
                    spills.setdefault(stream_xid, _Spill()).add(message[25:])
                    continue
                if tag in ROW_TAGS:
                    # The hot path: one row change of an ordinary transaction.
                    if txn is None or txn.skip:
                        continue
                    change = decode_row_change(message, 25)
                    rel = change.relation
                    table = tables[rel] if rel in tables else self._target(rel, lookup)
                    if table is None or txn_commit_lsn < table.start_lsn:
                        continue
                    batch.add(change.relation, table, change, len(message) - 25)
                    if batch.bytes >= part_bytes or batch.changes >= part_changes:
                        write_part()
                    continue
                item = decoder.decode(message, 25)
                item_type = type(item)
                if item_type is Begin:
                    if stop_at is not None and item.commit_lsn >= stop_at:
                        flush()
                        writer.drain()
                        result.caught_up = not pace.over
                        pace.left_at(item.commit_time)
                        break  # committed at or after the stop point: left for later
                    if pace.first_alone(bool(batch) or progress_pending):
                        flush()
                    txn = _Txn(item, skip=item.commit_lsn < applied)
                    txn_commit_lsn = item.commit_lsn
                    continue
                if item_type is Relation:
                    self.relations[item.oid] = item
                    self.tables.pop(item.oid, None)
                    if stream_xid is not None:
                        spills.setdefault(stream_xid, _Spill())
                    continue
                if item_type is StreamStart:
                    stream_xid = item.xid
                    continue
                if item_type is StreamStop:
                    stream_xid = None
                    continue
                if item_type is StreamAbort:
                    spill = spills.get(item.xid)
                    if spill is not None:
                        if item.subxid == item.xid:
                            spill.close()
                            del spills[item.xid]
                        else:
                            spill.aborted.add(item.subxid)
                    continue
                if (item_type is Change or item_type is Truncate) and txn is not None:
                    if txn.skip:
                        continue
                    self._add(batch, txn, item, len(message) - 25, lookup)
                    if batch.bytes >= part_bytes or batch.changes >= part_changes:
                        write_part()
                    continue
                if item_type is Commit or item_type is StreamCommit:
                    if isinstance(item, StreamCommit) and stop_at is not None and item.commit_lsn >= stop_at:
                        flush()
                        writer.drain()
                        result.caught_up = not pace.over
                        pace.left_at(item.commit_time)
                        break
                    if isinstance(item, StreamCommit):
                        if pace.first_alone(bool(batch) or progress_pending):
                            flush()
                        spill = spills.pop(item.xid, None)
                        txn = _Txn(Begin(item.commit_lsn, item.commit_time, item.xid),
                                   skip=item.commit_lsn < applied)
                        if spill is not None and not txn.skip:
                            sub = Decoder()
                            sub.in_stream = True
                            for raw in spill.messages():
                                change = sub.decode(raw)
                                if isinstance(change, (Change, Truncate)) and change.xid not in spill.aborted:
                                    self._add(batch, txn, change, len(raw), lookup)
                                    if (batch.bytes >= part_bytes or batch.changes >= part_changes) \
                                            and not write_part():
                                        break
                            spill.close()
                    end_lsn = item.end_lsn
                    received = max(received, end_lsn)
                    position = max(position, end_lsn)
                    if txn is not None and txn.skip:
                        result.skipped_transactions += 1
                    else:
                        result.transactions += 1
                        if oldest_unapplied is None:
                            oldest_unapplied = item.commit_time
                        if not batch_started:
                            batch_started = time.monotonic()
                        batch_last_end = end_lsn
                        batch_commit_time = item.commit_time
                        if not batch:
                            progress_pending = True
                        if parted or batch.changes >= commit_changes or batch.bytes >= commit_bytes:
                            flush()
                    txn = None
                    continue
            flush()
            writer.drain()
            self._end_of_run(result, writer, repl, pace, start_sample, received, position,
                             unsettled=bool(spills) or txn is not None)
        except psycopg.Error as exc:
            # Nothing of the failed batch committed: the recorded position is the writer's last commit.
            raise SyncError(sync_failure_message(exc, int_to_lsn(writer.applied if writer is not None else applied))
                            ) from None
        finally:
            if writer is not None:
                writer.close()
            for spill in spills.values():
                spill.close()
            for conn in (repl, lookup, dst, lock_conn):
                try:
                    conn.close()
                except Exception:  # noqa: BLE001 - closing on the way out
                    pass
        result.seconds = round(time.monotonic() - started, 3)
        self._log_result(result)
        return result

    def _source_at_start(self) -> tuple[int, int, _WalSample]:
        """The source's version, the slot's confirmed position and the WAL insert position now; stops when the slot
        is gone or a partition was added after the full load."""
        slot = self.config.slot_name
        with connect(self.source) as src:
            version = catalog.server_version_num(src)
            slot_row = src.execute("SELECT confirmed_flush_lsn::text, active FROM pg_replication_slots "
                                   "WHERE slot_name = %s", (slot,)).fetchone()
            if slot_row is None:
                raise SyncError(f"replication slot {slot} does not exist on the source: it was dropped, or the "
                                "source failed over to a standby that does not have it. Drop any orphaned slot on "
                                "the new primary and restart the migration from a fresh full load")
            self._check_new_partitions(src, version)
            self._ancestors = catalog.partition_ancestors(src)  # a partitioned table's filter applies to its partitions
            return version, lsn_to_int(slot_row[0]) if slot_row[0] else 0, _wal_sample(src)

    def _applier_lock(self, take_lock: bool) -> psycopg.Connection:
        """The destination session that holds the migration's applier lock (taken here unless the caller holds it)."""
        name = self.config.name
        lock_conn = connect(self.destination)
        if take_lock:
            locked = lock_conn.execute("SELECT pg_try_advisory_lock(hashtext(%s))", (f"pgmigrate:{name}",)).fetchone()
            if not locked or not locked[0]:
                lock_conn.close()
                raise SyncError(f"another applier of migration {name} is running on the destination")
        return lock_conn

    def _start_stream(self, repl: psycopg.Connection, version: int, applied: int) -> None:
        options = ["proto_version '2'", "streaming 'on'"] if version >= 140000 else ["proto_version '1'"]
        options.append(f"publication_names {sql.Literal(self.config.publication_name).as_string(repl)}")
        repl.execute(f"START_REPLICATION SLOT {sql.Identifier(self.config.slot_name).as_string(repl)} LOGICAL "
                     f"{int_to_lsn(applied)} ({', '.join(options)})")

    def _end_of_run(self, result: SyncResult, writer: _Writer, repl: psycopg.Connection, pace: _Pace,
                    start_sample: _WalSample, received: int, position: int, *, unsettled: bool) -> None:
        """After the writer drained: the applied position, the lag, and the last feedback to the source (the
        position read only when nothing read is unsettled: no transaction or streamed one still open)."""
        applied = writer.applied
        if pace.over:
            # Read but not written: nothing after the last commit may be confirmed, counted or measured, and
            # parts of a transaction written before the caps stopped the run go back with the open transaction
            # (the writer is idle after drain).
            writer.roll_back()
            position = applied
            result.transactions = pace.transactions
            result.throttled = True
        result.applied_lsn = int_to_lsn(applied)
        with connect(self.source) as src:
            end_sample = _wal_sample(src)
        result.lag_bytes = max(0, end_sample.lsn - max(applied, position))
        durable = writer.make_durable()
        self._send_feedback(repl, received, durable if unsettled else max(durable, position))
        self._measure_lag_seconds(result, repl, pace.unapplied_time, (start_sample, end_sample),
                                  max(applied, position), applied)

    def _log_result(self, result: SyncResult) -> None:
        self.log(f"incremental applied_lsn={result.applied_lsn} transactions={result.transactions} "
                 f"changes={result.changes} skipped={result.skipped_transactions} caught_up={result.caught_up} "
                 f"lag_bytes={result.lag_bytes} lag_s={result.lag_seconds:.1f} lag_basis={result.lag_basis} "
                 f"throttled={result.throttled} seconds={result.seconds}")

    def _check_new_partitions(self, src: psycopg.Connection, version: int) -> None:
        """Stop when a partition was added on the source after the full load: the publication lists the partitions
        that existed then, so rows routed to a new one would never reach the destination (a silent loss)."""
        if version < 120000:
            return
        publication = self.config.publication_name
        rows = src.execute(
            """
            SELECT n.nspname, c.relname, rn.nspname, rc.relname
              FROM (SELECT DISTINCT pg_partition_root(pr.prrelid) AS root
                      FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid
                     WHERE p.pubname = %(pub)s) roots
              CROSS JOIN LATERAL pg_partition_tree(roots.root) tree
              JOIN pg_class c ON c.oid = tree.relid JOIN pg_namespace n ON n.oid = c.relnamespace
              JOIN pg_class rc ON rc.oid = roots.root JOIN pg_namespace rn ON rn.oid = rc.relnamespace
             WHERE roots.root IS NOT NULL AND tree.isleaf AND NOT EXISTS (
                   SELECT 1 FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid
                    WHERE p.pubname = %(pub)s
                      AND pr.prrelid IN (SELECT relid FROM pg_partition_ancestors(c.oid)))
             ORDER BY 1, 2
            """, {"pub": publication}).fetchall()
        excluded = TableSelector(self.config.objects).exclude
        without_rows = tables_without_rows(src, self.config.objects.exclude_data)  # rows that do not migrate
        new = [(QualifiedName(schema, name), QualifiedName(root_schema, root)) for schema, name, root_schema, root in rows
               if not any(p.match(QualifiedName(schema, name).key) for p in excluded)
               and QualifiedName(schema, name) not in without_rows]
        if new:
            names = ", ".join(f"{name} (of {root})" for name, root in new)
            raise SyncError(f"DDL on the source: partition(s) {names} were created after the full load and are not "
                            f"in publication {publication}, so their rows would not reach the destination. "
                            "Incremental sync stopped. Restart the migration from a fresh full load (release, then "
                            "run the DAG again), or exclude the partition(s) with objects.exclude if their rows must "
                            "not migrate")

    _selector: Callable[[QualifiedName], bool]
    _ancestors: dict[QualifiedName, list[QualifiedName]]
    _planned_types: dict[QualifiedName, dict[str, str]]
    #: Source type names by (type oid, typmod), resolved once per run for the type-change check.
    _type_names: dict[tuple[int, int], str]
    _start_lsns: dict[str, int]
    _replica_role: bool

    def _set_replica_role(self, dst: psycopg.Connection) -> bool:
        """Destination triggers and foreign keys must not fire for replicated changes."""
        try:
            with dst.transaction():
                dst.execute("SET session_replication_role = replica")
            return True
        except psycopg.errors.InsufficientPrivilege:
            self.log("incremental warning: the destination account may not set session_replication_role; "
                     "triggers fire and foreign keys are checked, so changes are applied one by one in source order "
                     "(GRANT SET ON PARAMETER session_replication_role TO <account> on PostgreSQL 15+)")
            return False

    @staticmethod
    def _in_dst_transaction(dst: psycopg.Connection) -> bool:
        return dst.pgconn.transaction_status != psycopg.pq.TransactionStatus.IDLE

    def _target(self, rel: int, dst: psycopg.Connection) -> TableTarget | None:
        if rel not in self.tables:
            relation = self.relations.get(rel)
            if relation is None:
                raise SyncError(f"a change arrived for relation {rel} before its description")
            self.tables[rel] = self._table_target(relation, self._start_lsns, dst)
        return self.tables[rel]

    def _add(self, batch: Batch, txn: _Txn, item: Change | Truncate, size: int, dst: psycopg.Connection) -> None:
        commit_lsn = txn.begin.commit_lsn if txn.begin is not None else 0
        if isinstance(item, Truncate):
            targets = [t for t in (self._target(r, dst) for r in item.relations) if t is not None
                       and commit_lsn >= t.start_lsn]
            batch.truncate(item.relations, targets, item.restart_identity)
            return
        table = self._target(item.relation, dst)
        if table is None or commit_lsn < table.start_lsn:
            return
        batch.add(item.relation, table, item, size)

    def _record_progress(self, dst: psycopg.Connection, end_lsn: int, commit_time: int | None) -> None:
        dst.execute(sql.SQL(
            "INSERT INTO {} (migration, applied_lsn, source_commit_time) VALUES (%s, %s::pg_lsn, %s) "
            "ON CONFLICT (migration) DO UPDATE SET applied_lsn = EXCLUDED.applied_lsn, "
            "source_commit_time = EXCLUDED.source_commit_time, applied_at = now()"
        ).format(self._progress_table()), (self.config.name, int_to_lsn(end_lsn),
                                           pg_time(commit_time) if commit_time is not None else None))

    def _touch_progress(self, dst: psycopg.Connection) -> None:
        dst.execute(sql.SQL("UPDATE {} SET applied_at = now() WHERE migration = %s").format(self._progress_table()),
                    (self.config.name,))

    def _apply_partial(self, dst: psycopg.Connection, applier: Applier, batch: Batch) -> None:
        """Part of a transaction too large to hold: written, not committed (its commit records progress)."""
        self._write(dst, applier, batch)

    def _apply_batch(self, dst: psycopg.Connection, applier: Applier, batch: Batch, end_lsn: int,
                     commit_time: int | None) -> None:
        self._write(dst, applier, batch)
        self._record_progress(dst, end_lsn, commit_time)
        dst.commit()

    def _write(self, dst: psycopg.Connection, applier: Applier, batch: Batch) -> None:
        """Write a batch set-based inside a savepoint; on failure, roll back to it and replay one by one."""
        savepoint = "pgm_batch"
        staging = applier.staging_mark()
        try:
            dst.execute(f"SAVEPOINT {savepoint}")
            applier.apply(batch)
            dst.execute(f"RELEASE SAVEPOINT {savepoint}")
        except ApplyError:
            dst.rollback()
            raise
        except (psycopg.Error, RowsNotMatched) as exc:
            # Set-based writes can trip over transient unique conflicts, and a set-based UPDATE or DELETE that
            # missed a row does not say which change it was: replay the batch in source order.
            dst.execute(f"ROLLBACK TO SAVEPOINT {savepoint}")
            applier.staging_rolled_back(staging)  # staging tables created since the savepoint are gone
            self.log(f"incremental batch replayed one change at a time after: {str(exc).strip()[:200]}")
            applier.replay(batch)
            dst.execute(f"RELEASE SAVEPOINT {savepoint}")

    def new_batch(self) -> Batch:
        return Batch(collapse=self._replica_role)


def slot_lag(config: MigrationConfig, source: ConnectionInfo) -> dict[str, Any]:
    """The slot's retained WAL and confirmed position, read on the source (no streaming)."""
    with connect(source) as src:
        row = src.execute(
            "SELECT confirmed_flush_lsn::text, pg_wal_lsn_diff(pg_current_wal_insert_lsn(), restart_lsn)::bigint, "
            "active FROM pg_replication_slots WHERE slot_name = %s", (config.slot_name,)).fetchone()
    if row is None:
        return {"slot": config.slot_name, "exists": False}
    return {"slot": config.slot_name, "exists": True, "confirmed_flush_lsn": row[0], "retained_wal_bytes": row[1],
            "active": row[2]}


def release(config: MigrationConfig, source: ConnectionInfo, *, log: Callable[[str], None] = print) -> dict[str, bool]:
    """Drop the migration's slot and publication on the source (after cutover, or on abort); a publication named in
    the config belongs to its owner and is kept."""
    dropped = {"slot": False, "publication": False}
    with connect(source) as src:
        src.execute("SET default_transaction_read_only = off")  # the cutover may have frozen the database
        row = src.execute("SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s",
                          (config.slot_name,)).fetchone()
        if row is not None:
            if row[0] is not None:
                src.execute("SELECT pg_terminate_backend(%s)", (row[0],))
                time.sleep(0.5)
            src.execute("SELECT pg_drop_replication_slot(%s)", (config.slot_name,))
            dropped["slot"] = True
        dropped["publication"] = drop_publication(src, config, log)
    log(f"release slot={config.slot_name} dropped={dropped['slot']} publication={config.publication_name} "
        f"dropped={dropped['publication']}")
    return dropped


def _synced_tables(config: MigrationConfig, full_load: dict[str, Any]) -> Callable[[QualifiedName], bool]:
    """Whether changes of a source table are applied: the full load's tables (partitions of a selected partitioned
    table included: they are the publication's) and selected tables, but never one whose rows do not migrate
    (``objects.exclude_data``, recorded by the full load)."""
    planned = {parse_qualified_name(p["source"]) for p in full_load.get("plan") or []}
    without_rows = {parse_qualified_name(t) for t in full_load.get("definition_only") or []}
    selector = TableSelector(config.objects)
    return lambda name: name not in without_rows and (name in planned or selector(name))


def run_incremental(config: MigrationConfig, source: ConnectionInfo, destination: ConnectionInfo,
                    **kwargs: Any) -> SyncResult:
    log = kwargs.pop("log", lambda message: None)
    return IncrementalSync(config, source, destination, log=log).run(**kwargs)


__all__ = ["DurableFeedback", "IncrementalSync", "SyncError", "SyncResult", "release", "run_incremental", "slot_lag"]
