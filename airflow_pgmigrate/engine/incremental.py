"""Incremental sync: stream the slot over the replication protocol, decode pgoutput, apply exactly once.

One ``run()`` streams and applies for a bounded window (or until caught up) and returns the lag. The last applied
source commit is recorded in the destination in the same transaction as the changes it covers, and the source is told
(flush LSN) only what is committed there: a restart at any instant skips what was applied and loses nothing.
Rolled-back transactions never reach us (the server decodes committed ones only; streamed ones that abort are
dropped). Streamed in-progress transactions (protocol 2) spill to a temporary file, so memory stays bounded.
"""

from __future__ import annotations

import select
import struct
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, BinaryIO

import psycopg
from psycopg import sql

from airflow_pgmigrate.engine import catalog
from airflow_pgmigrate.engine.apply import Applier, ApplyError, Batch, TableTarget
from airflow_pgmigrate.engine.connection import ConnectionInfo, connect
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
    int_to_lsn,
    lsn_to_int,
    pg_time,
)
from airflow_pgmigrate.engine.rewrite import DefinitionRewriter
from airflow_pgmigrate.engine.sqlfilter import safe_row_filter
from airflow_pgmigrate.engine.state import MigrationState
from airflow_pgmigrate.engine.throttle import Throttle
from airflow_pgmigrate.exceptions import PgMigrateError

if TYPE_CHECKING:
    from airflow_pgmigrate.config import MigrationConfig

#: A batch is applied when it holds this many changes or bytes, or has waited this long.
BATCH_CHANGES = 50_000
BATCH_BYTES = 64 * 1024 * 1024
BATCH_SECONDS = 1.0
FEEDBACK_SECONDS = 1.0
#: Changes of a streamed transaction kept in memory before spilling to disk.
SPILL_BYTES = 32 * 1024 * 1024


class SyncError(PgMigrateError):
    """Incremental sync cannot go on (slot lost, DDL on the source, another applier running)."""


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

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


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
        self._destination_columns: dict[QualifiedName, list[str]] = {}

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
        existing = self._destination_columns.get(target)
        if existing is None:
            existing = [r[0] for r in dst.execute(
                "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attnum > 0 "
                "AND NOT attisdropped AND attgenerated = ''", (sql.Identifier(target.schema, target.name)
                                                             .as_string(dst),))]
            if not existing:
                raise SyncError(f"destination table {target} (for {name}) does not exist: run the schema and full "
                                "load steps first")
            self._destination_columns[target] = existing
        columns: list[tuple[int, str]] = []
        for i, col in enumerate(rel.columns):
            if wanted is not None and col.name not in wanted:
                continue
            mapped = mapper.column(name, col.name)
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
        if rel.replica_identity == "n":
            raise SyncError(f"{name} has REPLICA IDENTITY NOTHING: its updates and deletes are not published. "
                            f"ALTER TABLE {name} REPLICA IDENTITY FULL (or add a primary key)")
        key = [] if rel.replica_identity == "f" else [i for i, c in enumerate(rel.columns) if c.key]
        key_names = [mapper.column(name, rel.columns[i].name) for i in key]
        row_filter = safe_row_filter(self.config, name, dst, "destination")
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

    # -- the loop -----------------------------------------------------------------------------------------------

    def run(self, *, window_seconds: float = 60.0, stop_when_caught_up: bool = True,
            target_lsn: str | None = None, stop_before_lsn: str | None = None,
            take_lock: bool = True) -> SyncResult:
        """Stream and apply for up to ``window_seconds``; stop once caught up with ``target_lsn`` (default: the
        source's WAL position now). With ``stop_before_lsn``, apply every transaction committed before that LSN and
        none after (verification brings the destination exactly to a snapshot this way). ``take_lock=False`` when
        the caller holds the migration's applier lock already."""
        config = self.config
        started = time.monotonic()
        slot = config.slot_name
        with connect(self.source) as src:
            version = catalog.server_version_num(src)
            slot_row = src.execute("SELECT confirmed_flush_lsn::text, active FROM pg_replication_slots "
                                   "WHERE slot_name = %s", (slot,)).fetchone()
            if slot_row is None:
                raise SyncError(f"replication slot {slot} does not exist on the source: it was dropped, or the "
                                "source failed over to a standby that does not have it. Drop any orphaned slot on "
                                "the new primary and restart the migration from a fresh full load")
            target = lsn_to_int(target_lsn) if target_lsn else lsn_to_int(
                src.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()[0])  # type: ignore[index]
        stop_at = lsn_to_int(stop_before_lsn) if stop_before_lsn else None
        if stop_at is not None:
            target = stop_at
        lock_conn = connect(self.destination)
        if take_lock:
            locked = lock_conn.execute("SELECT pg_try_advisory_lock(hashtext(%s))",
                                       (f"pgmigrate:{config.name}",)).fetchone()
            if not locked or not locked[0]:
                lock_conn.close()
                raise SyncError(f"another applier of migration {config.name} is running on the destination")
        dst = connect(self.destination, autocommit=False)
        repl = connect(self.source, replication=True)
        spills: dict[int, _Spill] = {}
        try:
            with dst.transaction():
                applied = self._ensure_progress(dst)
                full_load = self.state.read(dst, "full_load") or {}
            start_lsns = {k: lsn_to_int(v) for k, v in (full_load.get("table_start_lsn") or {}).items() if v}
            # The full load's tables (partitions of a selected partitioned table included) are the publication's.
            planned = {parse_qualified_name(p["source"]) for p in full_load.get("plan") or []}
            selector = TableSelector(config.objects)
            self._selector = lambda name: name in planned or selector(name)
            self._start_lsns = start_lsns
            self._replica_role = self._set_replica_role(dst)
            result = SyncResult(applied_lsn=int_to_lsn(applied), target_lsn=int_to_lsn(target))
            options = ["proto_version '2'", "streaming 'on'"] if version >= 140000 else ["proto_version '1'"]
            options.append(f"publication_names {sql.Literal(config.publication_name).as_string(repl)}")
            command = f"START_REPLICATION SLOT {sql.Identifier(slot).as_string(repl)} LOGICAL " \
                      f"{int_to_lsn(applied)} ({', '.join(options)})"
            repl.execute(command)
            decoder = Decoder()
            applier = Applier(dst)
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

            def flush() -> None:
                nonlocal batch, applied, batch_last_end, batch_commit_time, oldest_unapplied, batch_started
                batch_started = 0.0  # the next transaction opens a new batch window
                if not batch:
                    return
                self._apply_batch(dst, applier, batch, batch_last_end, batch_commit_time)
                applied = batch_last_end
                result.changes += batch.changes
                batch = self.new_batch()
                oldest_unapplied = None
                self._send_feedback(repl, received, applied)
                if batch_commit_time is not None:
                    result.last_commit_time = pg_time(batch_commit_time).isoformat()

            while True:
                now = time.monotonic()
                if now - last_feedback >= FEEDBACK_SECONDS:
                    idle = txn is None and not batch and stream_xid is None and not spills
                    self._send_feedback(repl, received, applied if not idle else max(applied, position),
                                        reply=stop_when_caught_up)
                    last_feedback = now
                if batch and now - batch_started >= BATCH_SECONDS and txn is None:
                    flush()
                caught_up = txn is None and not batch and not spills and position >= target
                if stop_when_caught_up and caught_up:
                    result.caught_up = True
                    break
                if now >= deadline and txn is None:
                    flush()
                    break
                message = self._read(repl, 0.2)
                if message is None:
                    if batch and txn is None:
                        flush()
                    continue
                kind = message[:1]
                if kind == b"k":
                    wal_end, _, reply = struct.unpack("!QQB", message[1:18])
                    if txn is None and not batch and stream_xid is None and not spills:
                        position = max(position, wal_end)
                    if reply:
                        self._send_feedback(repl, received, applied)
                        last_feedback = time.monotonic()
                    continue
                if kind != b"w":
                    continue
                data_start, wal_end, _ = struct.unpack("!QQQ", message[1:25])
                payload = message[25:]
                received = max(received, data_start)
                tag = payload[:1]
                if stream_xid is not None and tag in (b"I", b"U", b"D", b"T"):
                    spills.setdefault(stream_xid, _Spill()).add(payload)
                    continue
                item = decoder.decode(payload)
                if isinstance(item, Relation):
                    self.relations[item.oid] = item
                    self.tables.pop(item.oid, None)
                    if stream_xid is not None:
                        spills.setdefault(stream_xid, _Spill())
                    continue
                if isinstance(item, Begin):
                    if stop_at is not None and item.commit_lsn >= stop_at:
                        flush()
                        result.caught_up = True
                        break  # committed at or after the stop point: left for later
                    txn = _Txn(item, skip=item.commit_lsn < applied)
                    continue
                if isinstance(item, StreamStart):
                    stream_xid = item.xid
                    continue
                if isinstance(item, StreamStop):
                    stream_xid = None
                    continue
                if isinstance(item, StreamAbort):
                    spill = spills.get(item.xid)
                    if spill is not None:
                        if item.subxid == item.xid:
                            spill.close()
                            del spills[item.xid]
                        else:
                            spill.aborted.add(item.subxid)
                    continue
                if isinstance(item, (Change, Truncate)) and txn is not None:
                    if txn.skip:
                        continue
                    self._add(batch, txn, item, len(payload), dst)
                    if batch.bytes >= BATCH_BYTES:
                        # A large transaction: write what we have into the open destination transaction.
                        self._apply_partial(dst, applier, batch)
                        batch = self.new_batch()
                    continue
                if isinstance(item, (Commit, StreamCommit)):
                    if isinstance(item, StreamCommit) and stop_at is not None and item.commit_lsn >= stop_at:
                        flush()
                        result.caught_up = True
                        break
                    if isinstance(item, StreamCommit):
                        spill = spills.pop(item.xid, None)
                        txn = _Txn(Begin(item.commit_lsn, item.commit_time, item.xid),
                                   skip=item.commit_lsn < applied)
                        if spill is not None and not txn.skip:
                            sub = Decoder()
                            sub.in_stream = True
                            for raw in spill.messages():
                                change = sub.decode(raw)
                                if isinstance(change, (Change, Truncate)) and change.xid not in spill.aborted:
                                    self._add(batch, txn, change, len(raw), dst)
                                    if batch.bytes >= BATCH_BYTES:
                                        self._apply_partial(dst, applier, batch)
                                        batch = self.new_batch()
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
                        if batch.changes >= BATCH_CHANGES or batch.bytes >= BATCH_BYTES / 4:
                            flush()
                        elif not batch:
                            # A transaction without changes for us still moves the applied position.
                            self._record_progress(dst, end_lsn, item.commit_time)
                            dst.commit()
                            applied = end_lsn
                    txn = None
                    continue
            flush()
            result.applied_lsn = int_to_lsn(applied)
            with connect(self.source) as src:
                current = lsn_to_int(src.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()[0])  # type: ignore[index]
            result.lag_bytes = max(0, current - max(applied, position))
            if result.caught_up or result.lag_bytes == 0:
                result.lag_seconds = 0.0
            elif result.last_commit_time is not None:
                last = datetime.fromisoformat(result.last_commit_time)
                result.lag_seconds = max(0.0, (datetime.now(UTC) - last).total_seconds())
            elif oldest_unapplied is not None:
                result.lag_seconds = max(0.0, (datetime.now(UTC) - pg_time(oldest_unapplied))
                                         .total_seconds())
            self._send_feedback(repl, received, applied if spills or txn else max(applied, position))
        except psycopg.OperationalError as exc:
            raise SyncError(f"connection lost during incremental sync: {str(exc).strip()}") from None
        finally:
            for spill in spills.values():
                spill.close()
            for conn in (repl, dst, lock_conn):
                try:
                    conn.close()
                except Exception:  # noqa: BLE001 - closing on the way out
                    pass
        result.seconds = round(time.monotonic() - started, 3)
        self.log(f"incremental applied_lsn={result.applied_lsn} transactions={result.transactions} "
                 f"changes={result.changes} skipped={result.skipped_transactions} caught_up={result.caught_up} "
                 f"lag_bytes={result.lag_bytes} lag_s={result.lag_seconds:.1f} seconds={result.seconds}")
        return result

    _selector: Callable[[QualifiedName], bool]
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
        self.throttle.on_bytes(batch.bytes)
        self.throttle.on_rows(batch.changes)
        savepoint = "pgm_batch"
        staging = applier.staging_mark()
        try:
            dst.execute(f"SAVEPOINT {savepoint}")
            applier.apply(batch)
            dst.execute(f"RELEASE SAVEPOINT {savepoint}")
        except ApplyError:
            dst.rollback()
            raise
        except psycopg.Error as exc:
            # Set-based writes can trip over transient unique conflicts: replay the batch in source order.
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
    """Drop the migration's slot and publication on the source (after cutover, or on abort)."""
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
        if src.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (config.publication_name,)).fetchone():
            src.execute(sql.SQL("DROP PUBLICATION {}").format(sql.Identifier(config.publication_name)))
            dropped["publication"] = True
    log(f"release slot={config.slot_name} dropped={dropped['slot']} publication={config.publication_name} "
        f"dropped={dropped['publication']}")
    return dropped


def run_incremental(config: MigrationConfig, source: ConnectionInfo, destination: ConnectionInfo,
                    **kwargs: Any) -> SyncResult:
    log = kwargs.pop("log", lambda message: None)
    return IncrementalSync(config, source, destination, log=log).run(**kwargs)


__all__ = ["IncrementalSync", "SyncError", "SyncResult", "release", "run_incremental", "slot_lag"]
