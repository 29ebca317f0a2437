"""The writer of the incremental sync: batches into the destination, in a thread of its own, with the progress row.

The last applied source commit is recorded in the destination (``<state_schema>.apply_progress``) in the same
transaction as the changes it covers, so a restart at any instant resumes exactly after it. Each commit is told to
the position tracker with the destination's WAL position after it: the tracker alone decides what the source may be
told is flushed.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql

from airflow_pgmigrate.engine.incremental.apply import Applier, ApplyError, Batch, RowsNotMatched
from airflow_pgmigrate.engine.incremental.ddl import apply_ddl
from airflow_pgmigrate.engine.incremental.pgoutput import int_to_lsn, lsn_to_int, pg_time
from airflow_pgmigrate.engine.incremental.positions import PositionTracker
from airflow_pgmigrate.engine.state import MigrationState


def wal_lsn(conn: psycopg.Connection, function: str) -> int:
    """The destination's WAL position from ``function`` (``pg_current_wal_insert_lsn``, ``..._flush_lsn``)."""
    row = conn.execute(f"SELECT {function}()::text").fetchone()
    assert row is not None
    return lsn_to_int(row[0])


class ProgressTable:
    """The row of ``apply_progress`` that records the migration's last applied source commit."""

    def __init__(self, state: MigrationState, schema: str, migration: str) -> None:
        self.state, self.migration = state, migration
        self.table = sql.Identifier(schema, "apply_progress")

    def ensure(self, conn: psycopg.Connection) -> int:
        """Create the table if needed; the recorded position (0: none yet)."""
        self.state.ensure(conn)
        conn.execute(sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} (migration text PRIMARY KEY, applied_lsn pg_lsn NOT NULL, "
            "source_commit_time timestamptz, applied_at timestamptz NOT NULL DEFAULT now())"
        ).format(self.table))
        row = conn.execute(sql.SQL("SELECT applied_lsn::text FROM {} WHERE migration = %s").format(self.table),
                           (self.migration,)).fetchone()
        return lsn_to_int(row[0]) if row else 0

    def record(self, dst: psycopg.Connection, end_lsn: int, commit_time: int | None) -> None:
        dst.execute(sql.SQL(
            "INSERT INTO {} (migration, applied_lsn, source_commit_time) VALUES (%s, %s::pg_lsn, %s) "
            "ON CONFLICT (migration) DO UPDATE SET applied_lsn = EXCLUDED.applied_lsn, "
            "source_commit_time = EXCLUDED.source_commit_time, applied_at = now()"
        ).format(self.table), (self.migration, int_to_lsn(end_lsn),
                               pg_time(commit_time) if commit_time is not None else None))

    def touch(self, dst: psycopg.Connection) -> None:
        dst.execute(sql.SQL("UPDATE {} SET applied_at = now() WHERE migration = %s").format(self.table),
                    (self.migration,))


def write_batch(dst: psycopg.Connection, applier: Applier, batch: Batch, log: Callable[[str], None]) -> None:
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
        log(f"incremental batch replayed one change at a time after: {str(exc).strip()[:200]}")
        applier.replay(batch)
        dst.execute(f"RELEASE SAVEPOINT {savepoint}")


class WriteCounts:
    """What the writer's commits applied: changes, and the source commit time of the last one (ISO text)."""

    def __init__(self) -> None:
        self.changes = 0
        self.last_commit_time: str | None = None


class Writer:
    """Writes on the destination in a thread of its own, in order, while the stream is read and decoded.

    The destination's work (and the wait for it) overlaps decoding. Items: ``("commit", batch, end_lsn, time)``
    writes a batch and commits it with its progress row; ``("partial", batch)`` writes part of a large transaction
    into the open destination transaction; ``("progress", None, end_lsn, time)`` only moves the progress row. One
    item waits while another is written, so memory stays bounded. Each commit is told to the position tracker. The
    first error stops the writer; the reading thread raises it at its next ``submit``, ``check`` or ``drain``.
    """

    def __init__(self, dst: psycopg.Connection, applier: Applier, progress: ProgressTable,
                 positions: PositionTracker, counts: WriteCounts, log: Callable[[str], None]) -> None:
        self._dst, self._applier, self._progress, self._positions = dst, applier, progress, positions
        self.counts, self._log = counts, log
        self.error: BaseException | None = None
        self._queue: queue.Queue[tuple[Any, ...] | None] = queue.Queue(maxsize=1)
        self._pending = 0  # items submitted and not finished
        self._uncommitted = 0  # changes written by partial items, counted when their transaction commits
        self._done = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="pgmigrate-writer", daemon=True)
        self._thread.start()

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

    def roll_back(self) -> None:
        """After ``drain``: roll back the open destination transaction (parts of a transaction not committed)."""
        self._dst.rollback()

    def make_durable(self) -> None:
        """After ``drain``: flush the destination's WAL (a write committed with ``synchronous_commit = local`` flushes
        every commit before it, without waiting for a synchronous standby that may be down), so that everything
        applied may be reported."""
        dst = self._dst
        if self._positions.needs_flush_lsn:
            with dst.transaction():
                dst.execute("SET LOCAL synchronous_commit = local")  # the local flush; never a standby
                self._progress.touch(dst)  # a commit that wrote nothing would not wait for the flush
            self._positions.durable.flushed(wal_lsn(dst, "pg_current_wal_flush_lsn"))
            dst.rollback()

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
        dst = self._dst
        if item[0] == "ddl":  # replicated DDL, inside the open destination transaction
            step = item[1]
            apply_ddl(dst, step, self._log)
            self._applier.forget(step.tables)
            return
        if item[0] == "partial":  # part of a transaction too large to hold: written, not committed
            write_batch(dst, self._applier, item[1], self._log)
            self._uncommitted += item[1].changes
            return
        _, batch, end_lsn, commit_time = item
        if batch is not None:
            write_batch(dst, self._applier, batch, self._log)
            self._uncommitted += batch.changes
        self._progress.record(dst, end_lsn, commit_time)
        dst.commit()
        self.counts.changes += self._uncommitted
        self._uncommitted = 0
        self._positions.committed(end_lsn, wal_lsn(dst, "pg_current_wal_insert_lsn"))
        dst.rollback()  # the read above opened a transaction
        if commit_time is not None:
            self.counts.last_commit_time = pg_time(commit_time).isoformat()


__all__ = ["ProgressTable", "WriteCounts", "Writer", "wal_lsn", "write_batch"]
