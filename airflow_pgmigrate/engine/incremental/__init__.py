"""Incremental sync: stream the slot over the replication protocol, decode pgoutput, apply exactly once.

One ``run()`` streams and applies for a bounded window (or until caught up) and returns the lag. It is a pipeline of
stages, each in its own module: the **stream** (engine/incremental/stream.py: replication connection, keepalives, standby status)
-> the **decoder** (engine/incremental/pgoutput.py) -> the **transaction assembler** (engine/incremental/assembler.py: begin/commit, streamed
and spilled transactions, skipped transactions, table targets from engine/incremental/targets.py) -> the **batcher**
(engine/incremental/batcher.py: net effect, sizes, the throttle's pace) -> the **writer** (engine/incremental/writer.py: the destination
transaction and its progress row, in a thread of its own). The **position tracker** (engine/incremental/positions.py) is the only
owner of the positions and the only producer of the feedback sent to the source: nothing is reported flushed before
the destination has made it durable, so a restart, or a crash of the destination whatever its
``synchronous_commit``, at any instant skips what was applied and loses nothing. When a run stops is an input
(:class:`~airflow_pgmigrate.engine.incremental.positions.StopConditions`: the window, the target LSN, the stop-before LSN).
Rolled-back transactions never reach us (the server decodes committed ones only; streamed ones that abort are
dropped). Streamed in-progress transactions (protocol 2) spill to a temporary file, so memory stays bounded.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import psycopg

from airflow_pgmigrate.engine import catalog
from airflow_pgmigrate.engine.connection import ConnectionInfo, connect
from airflow_pgmigrate.engine.ddl_capture import remove_capture
from airflow_pgmigrate.engine.definition_only import tables_without_rows
from airflow_pgmigrate.engine.failures import sync_failure_message
from airflow_pgmigrate.engine.incremental.apply import Applier
from airflow_pgmigrate.engine.incremental.assembler import Assembler, DdlContext
from airflow_pgmigrate.engine.incremental.batcher import Batcher, BatchLimits, Pace
from airflow_pgmigrate.engine.incremental.ddl import DdlPlanner, ddl_done_by_hand, source_resolver
from airflow_pgmigrate.engine.incremental.pgoutput import LOOPS, Begin, int_to_lsn, lsn_to_int, pg_time
from airflow_pgmigrate.engine.incremental.positions import DurableFeedback, PositionTracker, StopConditions
from airflow_pgmigrate.engine.incremental.stream import KEEPALIVE, XLOG_DATA, ReplicationStream, keepalive_of
from airflow_pgmigrate.engine.incremental.targets import TableTargets
from airflow_pgmigrate.engine.incremental.writer import ProgressTable, WriteCounts, Writer, wal_lsn
from airflow_pgmigrate.engine.names import QualifiedName, TableSelector
from airflow_pgmigrate.engine.publication import drop_publication
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
#: Messages read in one go (those libpq already holds): the loop's housekeeping runs once per chunk.
READ_CHUNK = 256
#: Under a throttle, a batch holds at most this long's worth of the caps (half the window, if that is shorter): each
#: payment to the caps is short, the applied rate holds over a few seconds, and a window always carries a batch.
PACE_SECONDS = 0.2
#: At the end of a poke with WAL left unread, how long the stream is read ahead (nothing applied) for the commit time
#: of the oldest transaction not applied yet.
READ_AHEAD_SECONDS = 1.0
#: The writer of a run (a name of this module, so that a test can wrap its methods).
_Writer = Writer


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


@dataclass
class _Connections:
    """A run's sessions: the applier lock's, the writer's (``dst``), the reading thread's catalog lookups on the
    destination, and the source's replication connection."""

    lock: psycopg.Connection
    dst: psycopg.Connection
    lookup: psycopg.Connection
    repl: psycopg.Connection

    def close(self) -> None:
        for conn in (self.repl, self.lookup, self.dst, self.lock):
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - closing on the way out
                pass


@dataclass
class _Pipeline:
    """The stages of one run, wired together."""

    stream: ReplicationStream
    positions: PositionTracker
    writer: Writer
    counts: WriteCounts
    batcher: Batcher
    assembler: Assembler
    stops: StopConditions
    result: SyncResult
    start_sample: _WalSample
    lookup: psycopg.Connection


class IncrementalSync:
    """The incremental sync of one migration. ``run`` is the general entry; verification and the cutover use
    :meth:`catch_up` (apply up to an LSN) and :meth:`stop_before` (apply everything committed before an LSN)."""

    def __init__(self, config: MigrationConfig, source: ConnectionInfo, destination: ConnectionInfo, *,
                 log: Callable[[str], None] = lambda message: None) -> None:
        self.config = config
        self.source = source
        self.destination = destination
        self.log = log
        self.state = MigrationState(destination, config.state_schema, config.name)
        self.progress = ProgressTable(self.state, config.state_schema, config.name)
        caps = config.throttling.incremental
        self.throttle = Throttle(mb_per_second=caps.mb_per_second, rows_per_second=caps.rows_per_second)
        self.targets = TableTargets(config, source)

    # -- public API ----------------------------------------------------------------------------------------------

    def catch_up(self, to_lsn: str | None = None, *, window_seconds: float = 300.0,
                 take_lock: bool = True) -> SyncResult:
        """Apply until caught up with ``to_lsn`` (default: the source's WAL position now), for up to
        ``window_seconds``; ``caught_up`` in the result says whether it got there."""
        return self.run(window_seconds=window_seconds, target_lsn=to_lsn, take_lock=take_lock)

    def stop_before(self, lsn: str, *, window_seconds: float = 600.0, take_lock: bool = True) -> SyncResult:
        """Apply every transaction committed before ``lsn`` and none after (a snapshot's LSN: the destination is then
        exactly at it); ``caught_up`` in the result says whether it got there within ``window_seconds``."""
        return self.run(window_seconds=window_seconds, stop_before_lsn=lsn, take_lock=take_lock)

    def run(self, *, window_seconds: float = 60.0, stop_when_caught_up: bool = True,
            target_lsn: str | None = None, stop_before_lsn: str | None = None,
            take_lock: bool = True) -> SyncResult:
        """Stream and apply for up to ``window_seconds``; stop once caught up with ``target_lsn`` (default: the
        source's WAL position now). With ``stop_before_lsn``, apply every transaction committed before that LSN and
        none after (verification brings the destination exactly to a snapshot this way). ``take_lock=False`` when
        the caller holds the migration's applier lock already."""
        with _cyclic_gc_paused():
            return self._run(window_seconds, stop_when_caught_up, target_lsn, stop_before_lsn, take_lock)

    # -- one run -------------------------------------------------------------------------------------------------

    def _run(self, window_seconds: float, stop_when_caught_up: bool, target_lsn: str | None,
             stop_before_lsn: str | None, take_lock: bool) -> SyncResult:
        started = time.monotonic()
        version, confirmed, start_sample, ancestors = self._source_at_start()
        before = lsn_to_int(stop_before_lsn) if stop_before_lsn else None
        target = before if before is not None else lsn_to_int(target_lsn) if target_lsn else start_sample.lsn
        stops = StopConditions(started + window_seconds, target, stop_when_caught_up, before)
        conns = self._connect(take_lock)
        p: _Pipeline | None = None
        applied = 0
        try:
            with conns.dst.transaction():
                applied = self.progress.ensure(conns.dst)
                full_load = self.state.read(conns.dst, "full_load") or {}
                by_hand = ddl_done_by_hand(conns.dst, self.config.state_schema, self.config.name) \
                    if self.replicates_ddl else set()
            self.targets.start_run(full_load, ancestors, conns.lookup)
            p = self._pipeline(conns, version, applied, confirmed, start_sample, stops, window_seconds, by_hand)
            self._pump(p)
            p.batcher.flush(p.assembler.txn.begin if p.assembler.txn is not None else None)
            p.writer.drain()
            self._end_of_run(p)
            result = p.result
        except psycopg.Error as exc:
            # Nothing of the failed batch committed: the recorded position is the writer's last commit.
            raise SyncError(sync_failure_message(exc, int_to_lsn(p.positions.applied if p is not None else applied))
                            ) from None
        finally:
            if p is not None:
                p.writer.close()
                p.assembler.close()
            conns.close()
        result.seconds = round(time.monotonic() - started, 3)
        self._log_result(result)
        return result

    def _connect(self, take_lock: bool) -> _Connections:
        lock = self._applier_lock(take_lock)
        try:
            dst = connect(self.destination, autocommit=False)
            lookup = connect(self.destination)  # catalog lookups of the reading thread; dst belongs to the writer
            return _Connections(lock, dst, lookup, connect(self.source, replication=True))
        except BaseException:
            lock.close()
            raise

    @property
    def replicates_ddl(self) -> bool:
        return self.config.incremental.ddl == "replicate"

    def _pipeline(self, conns: _Connections, version: int, applied: int, confirmed: int, start_sample: _WalSample,
                  stops: StopConditions, window_seconds: float, by_hand: set[int]) -> _Pipeline:
        """Wire the stages of one run, and start the stream at the applied position."""
        dst = conns.dst
        replica_role = self._set_replica_role(dst)
        result = SyncResult(applied_lsn=int_to_lsn(applied), target_lsn=int_to_lsn(stops.target))
        stream = ReplicationStream(conns.repl)
        stream.start(self.config.slot_name, self.config.publication_name, version, applied)
        # The recorded position may come from a run that died before its commits were flushed: durable only once the
        # destination's flush position passes its WAL position now.
        recorded_at = None
        if applied > confirmed:
            recorded_at = wal_lsn(dst, "pg_current_wal_insert_lsn")
            dst.rollback()
        positions = PositionTracker(applied, confirmed, recorded_at)
        counts = WriteCounts()
        writer = _Writer(dst, Applier(dst, count_rows=replica_role), self.progress, positions, counts, self.log)
        pace = Pace(self.throttle, stops.deadline, lambda: stream.report(positions.last),
                    lambda txn: self._warn_overrun(window_seconds, txn))
        batcher = Batcher(writer, pace, positions, self._batch_limits(window_seconds), collapse=replica_role)
        ddl = DdlContext(DdlPlanner(self.config, self.targets.migrates, source_resolver(self.source), self.log),
                         by_hand, dst, self.log) if self.replicates_ddl else None
        assembler = Assembler(self.targets, batcher, positions, stops, applied, ddl)
        return _Pipeline(stream, positions, writer, counts, batcher, assembler, stops, result, start_sample,
                         conns.lookup)

    def _pump(self, p: _Pipeline) -> None:
        """Read, assemble, batch and write until a stop condition holds (the writer drained when it returns after
        catching up, at the window's end or before the stop-before LSN)."""
        positions, batcher, assembler, stream, pace = p.positions, p.batcher, p.assembler, p.stream, p.batcher.pace
        deadline, target, when_caught_up = p.stops.deadline, p.stops.target, p.stops.when_caught_up
        feedback_seconds, chunk = FEEDBACK_SECONDS, READ_CHUNK
        feed = assembler.feed
        last_feedback = 0.0
        while not pace.over:
            # Once per chunk of messages: the cheapest tests first.
            now = time.monotonic()
            if now - last_feedback >= feedback_seconds:
                self._report(p, reply=when_caught_up, ask_destination=True)
                last_feedback = now
            if assembler.txn is None and batcher.due(now):
                batcher.flush()
            if when_caught_up and positions.position >= target and positions.caught_up_with(target):
                p.writer.drain()
                p.result.caught_up = True
                return
            if now >= deadline and assembler.txn is None:
                batcher.flush()
                p.writer.drain()
                return
            messages = stream.read_chunk(0.2, chunk)
            if not messages:
                if assembler.txn is None and batcher.pending:
                    batcher.flush()
                continue
            for message in messages:
                kind = message[0]
                if kind == XLOG_DATA:
                    if feed(message):  # a transaction at or past the stop-before LSN: left for later
                        batcher.flush()
                        p.writer.drain()
                        p.result.caught_up = not batcher.pace.over
                        batcher.pace.left_at(assembler.stopped_at)
                        return
                    if pace.over:
                        break  # the caps stopped the run: what follows is left for the next one
                elif kind == KEEPALIVE:
                    wal_end, reply = keepalive_of(message)
                    positions.keepalive(wal_end)
                    if reply:
                        self._report(p)
                        last_feedback = time.monotonic()

    def _report(self, p: _Pipeline, *, reply: bool = False, ask_destination: bool = False) -> None:
        """Send the position tracker's feedback (asking the destination's flush position first when a commit's
        durability is unknown and ``ask_destination``); a writer that failed meanwhile stops the run here."""
        positions = p.positions
        flushed = wal_lsn(p.lookup, "pg_current_wal_flush_lsn") if ask_destination and positions.needs_flush_lsn \
            else None
        feedback = positions.feedback(flushed)
        p.writer.check()
        p.stream.report(feedback, reply=reply)

    def _end_of_run(self, p: _Pipeline) -> None:
        """After the writer drained: the counts, the applied position, the lag, and the last feedback to the source."""
        result, positions, pace = p.result, p.positions, p.batcher.pace
        if pace.over:
            # Read but not written: nothing after the last commit may be confirmed, counted or measured, and
            # parts of a transaction written before the caps stopped the run go back with the open transaction
            # (the writer is idle after drain).
            p.writer.roll_back()
            positions.discard_unapplied()
            result.transactions = pace.transactions
            result.throttled = True
        else:
            result.transactions = p.batcher.transactions
        result.skipped_transactions = p.assembler.skipped
        result.changes, result.last_commit_time = p.counts.changes, p.counts.last_commit_time
        applied = positions.applied
        result.applied_lsn = int_to_lsn(applied)
        with connect(self.source) as src:
            end_sample = _wal_sample(src)
        result.lag_bytes = max(0, end_sample.lsn - positions.accounted)
        p.writer.make_durable()
        p.stream.report(positions.feedback())
        self._measure_lag_seconds(result, p, pace.unapplied_time, (p.start_sample, end_sample),
                                  positions.accounted, applied)

    def _source_at_start(self) -> tuple[int, int, _WalSample, dict[QualifiedName, list[QualifiedName]]]:
        """The source's version, the slot's confirmed position, the WAL insert position now and the partitions'
        ancestors (a partitioned table's filter applies to its partitions); stops when the slot is gone or a partition
        was added after the full load."""
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
            if self.replicates_ddl:
                self._check_unpublished_tables(src)
            ancestors = catalog.partition_ancestors(src)
            return version, lsn_to_int(slot_row[0]) if slot_row[0] else 0, _wal_sample(src), ancestors

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

    def _log_result(self, result: SyncResult) -> None:
        self.log(f"incremental applied_lsn={result.applied_lsn} transactions={result.transactions} "
                 f"changes={result.changes} skipped={result.skipped_transactions} caught_up={result.caught_up} "
                 f"lag_bytes={result.lag_bytes} lag_s={result.lag_seconds:.1f} lag_basis={result.lag_basis} "
                 f"throttled={result.throttled} seconds={result.seconds} loops={LOOPS}")

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

    def _check_unpublished_tables(self, src: psycopg.Connection) -> None:
        """With replicated DDL, stop when a table whose rows migrate is not in the publication: made by a statement
        no event trigger sees (EXPLAIN ANALYZE CREATE TABLE AS), or before the capture existed. Its rows would never
        be streamed: a silent loss."""
        selector = TableSelector(self.config.objects)
        without_rows = tables_without_rows(src, self.config.objects.exclude_data)
        rows = src.execute(
            """
            SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.relkind = 'r' AND c.relpersistence = 'p' AND n.nspname !~ '^pg_'
               AND n.nspname <> 'information_schema'
               AND NOT EXISTS (SELECT FROM pg_publication_tables p WHERE p.pubname = %s
                                  AND p.schemaname = n.nspname AND p.tablename = c.relname)
               AND NOT EXISTS (SELECT FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                                  AND d.deptype = 'e')
            """, (self.config.publication_name,)).fetchall()
        missing = sorted(name for name in (QualifiedName(s, t) for s, t in rows)
                         if selector(name) and name not in without_rows)
        if missing:
            names = ", ".join(str(m) for m in missing[:10])
            raise SyncError(f"table(s) {names} of the selection are not in publication "
                            f"{self.config.publication_name}, so their rows would not reach the destination: made by a "
                            "statement no event trigger sees (EXPLAIN ANALYZE CREATE TABLE AS), before the DDL capture "
                            "existed, or by a role whose tables the migration's account may not publish. Incremental "
                            "sync stopped. Fix: restart the migration from a fresh full load (release, then run the "
                            "DAG again; for the last case, first have the table's owner run ALTER PUBLICATION "
                            f"{self.config.publication_name} ADD TABLE ... on the source), or exclude the table(s) "
                            "with objects.exclude")

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

    # -- pace and lag --------------------------------------------------------------------------------------------

    def _batch_limits(self, window_seconds: float) -> BatchLimits:
        """Changes and bytes at which a batch is written in the middle of a transaction, and at a commit (read from
        this module's constants at each run).

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
        return BatchLimits(part_changes, part_bytes, commit_changes, commit_bytes, BATCH_SECONDS)

    def _warn_overrun(self, window_seconds: float, txn: Begin | None) -> None:
        what = (f"its first transaction (committed at {pg_time(txn.commit_time).isoformat()}, "
                f"LSN {int_to_lsn(txn.commit_lsn)})" if txn is not None else "its first batch")
        self.log(f"incremental warning: this poke runs past its window of {window_seconds:g} s: {what} needs "
                 "longer than that at throttling.incremental's caps, so no window would ever carry it; it is applied "
                 "whole at the caps and the poke ends after its commit. Raise throttling.incremental.rows_per_second "
                 "or mb_per_second, or the sensor's window_seconds, so that one window carries it")

    def _measure_lag_seconds(self, result: SyncResult, p: _Pipeline, unapplied_time: int | None,
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
            unapplied_time, reached = p.stream.read_ahead(p.positions.last, applied, end.lsn, accounted,
                                                           READ_AHEAD_SECONDS, self.log)
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
    the config belongs to its owner and is kept. The DDL capture (``incremental.ddl: replicate``) goes too: the
    result says ``ddl_capture`` when it was there or the config replicates DDL."""
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
        capture = remove_capture(src, config, log)
        if capture or config.incremental.ddl == "replicate":
            dropped["ddl_capture"] = capture
    log(f"release slot={config.slot_name} dropped={dropped['slot']} publication={config.publication_name} "
        f"dropped={dropped['publication']}")
    return dropped


def run_incremental(config: MigrationConfig, source: ConnectionInfo, destination: ConnectionInfo,
                    **kwargs: Any) -> SyncResult:
    log = kwargs.pop("log", lambda message: None)
    return IncrementalSync(config, source, destination, log=log).run(**kwargs)


__all__ = ["DurableFeedback", "IncrementalSync", "SyncError", "SyncResult", "release", "run_incremental", "slot_lag"]
