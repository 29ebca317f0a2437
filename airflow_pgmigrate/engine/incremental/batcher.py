"""The batcher of the incremental sync: changes of many source transactions gathered into one destination write
(their net effect, :class:`~airflow_pgmigrate.engine.incremental.apply.Batch`), cut by size, age and the throttle's caps.

A batch is handed to the writer when it holds enough changes or bytes, has waited ``BATCH_SECONDS``, or the stream
went quiet; inside one transaction too large to hold, it is written (not committed) in parts. Transactions with
nothing for us move the applied position too: recorded with the next batch, or by a progress row alone. Under a cap
(:class:`Pace`), every write is paid for first, and a write the caps would allow only after the window is not made.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from airflow_pgmigrate.engine.incremental.apply import Batch, TableTarget
from airflow_pgmigrate.engine.incremental.ddl import DdlStep
from airflow_pgmigrate.engine.incremental.pgoutput import Begin, Change, Value
from airflow_pgmigrate.engine.incremental.positions import PositionTracker
from airflow_pgmigrate.engine.incremental.writer import Writer
from airflow_pgmigrate.engine.throttle import Throttle


@dataclass(frozen=True)
class BatchLimits:
    """Changes and bytes at which a batch is written in the middle of a transaction (``part_*``) and at a commit
    (``commit_*``), and how long a batch waits for more transactions (``seconds``)."""

    part_changes: int
    part_bytes: int
    commit_changes: int
    commit_bytes: int
    seconds: float


class Pace:
    """The caps' use in one run: payments that never wait past the window's end.

    The run's first commit is paid whatever the window: a transaction larger than any window carries at the caps
    must still be applied (the run then ends after its commit, later than its window, and says so through
    ``overrun``). Past it, a write the caps would allow only after the window is not written: ``over`` is set, the
    run stops, and what was read after the last commit (from the transaction committed at ``unapplied_time`` on) is
    left for the next run.
    """

    def __init__(self, throttle: Throttle, deadline: float, keep_alive: Callable[[], None],
                 overrun: Callable[[Begin | None], None]) -> None:
        self.throttle, self.deadline, self.keep_alive, self.overrun = throttle, deadline, keep_alive, overrun
        self.capped = throttle.rows_per_second is not None or throttle.bytes_per_second is not None
        self.over = False
        self.unapplied_time: int | None = None
        self.commits = 0  # commits handed to the writer
        self.transactions = 0  # transactions read up to the last of them
        self._told = False

    def paid(self, part: Batch, oldest_unapplied: int | None, txn: Begin | None) -> bool:
        """Pay for writing ``part``; False (and ``over``) when the caps allow it only after the window."""
        if self.over:
            return False
        first = not self.commits
        if self.throttle.pay(part.changes, part.bytes, None if first else self.deadline, self._sleep):
            if first and not self._told and time.monotonic() > self.deadline:
                self._told = True
                self.overrun(txn)
            return True
        self.over = True
        self.left_at(oldest_unapplied if oldest_unapplied is not None else
                     txn.commit_time if txn is not None else None)
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


class Batcher:
    """The batch being filled, what it covers, and when it goes to the writer.

    ``transactions`` counts the transactions read for us (not skipped), up to the last one read.
    """

    def __init__(self, writer: Writer, pace: Pace, positions: PositionTracker, limits: BatchLimits, *,
                 collapse: bool) -> None:
        self.writer, self.pace, self.positions, self.limits = writer, pace, positions, limits
        self.collapse = collapse
        self._part_changes, self._part_bytes = limits.part_changes, limits.part_bytes  # read once per change
        self.batch = Batch(collapse=collapse)
        self.transactions = 0
        self._last_end = 0  # end LSN of the last transaction read into the batch (its progress row)
        self._commit_time: int | None = None
        self._started = 0.0  # when the batch's first transaction was read (0: none)
        #: Transactions without changes for us are read since the last hand-over: recorded with the next batch or
        #: by the next flush, never one destination commit each.
        self._progress_pending = False
        self._parted = False  # a part of the transaction being read was written (flushed at its commit)
        self._oldest_unapplied: int | None = None

    @property
    def pending(self) -> bool:
        """Something read waits to be handed to the writer."""
        return bool(self.batch) or self._progress_pending

    def due(self, now: float) -> bool:
        """The batch has waited long enough for more transactions."""
        return bool(self._started) and now - self._started >= self.limits.seconds and self.pending

    def add(self, rel: int, table: TableTarget, change: Change, size: int, txn: Begin | None) -> bool:
        """Add a row change; a full batch is written as a part. False: the caps stopped the run."""
        batch = self.batch
        batch.add(rel, table, change, size)
        if batch.bytes >= self._part_bytes or batch.changes >= self._part_changes:
            return self.write_part(txn)
        return True

    def add_insert(self, rel: int, table: TableTarget, new: list[Value], size: int, txn: Begin | None) -> bool:
        """An insert, as its new row (see :meth:`Batch.add_insert`); like :meth:`add`."""
        batch = self.batch
        batch.add_insert(rel, table, new, size)
        if batch.bytes >= self._part_bytes or batch.changes >= self._part_changes:
            return self.write_part(txn)
        return True

    def truncate(self, rels: list[int], tables: list[TableTarget], restart_identity: bool, txn: Begin | None) -> None:
        batch = self.batch
        batch.truncate(rels, tables, restart_identity)
        if batch.bytes >= self.limits.part_bytes or batch.changes >= self.limits.part_changes:
            self.write_part(txn)

    def mark(self) -> tuple[int, int]:
        """The batch being filled and its size now (see :meth:`flush_before`)."""
        return id(self.batch), self.batch.changes

    def flush_before(self, mark: tuple[int, int]) -> None:
        """Commit what was read before the transaction being read, if that transaction added nothing since
        ``mark`` (its first changes would otherwise go with the earlier ones), and wait for it."""
        if not self._parted and mark == self.mark():
            self.flush()
            self.writer.drain()

    def ddl(self, step: DdlStep, txn: Begin | None) -> bool:
        """Replicated DDL inside the transaction being read: what was read before it is written first, then the DDL,
        in the same destination transaction (committed with the source transaction's commit), and waited for.
        False: the caps stopped the run before it."""
        if self.batch and not self.write_part(txn):
            return False
        self.writer.submit(("ddl", step))
        self._parted = True
        self.writer.drain()
        return True

    def write_part(self, txn: Begin | None) -> bool:
        """A large transaction: write what we have into the open destination transaction, if the caps let it be
        paid within the window."""
        if not self.pace.paid(self.batch, self._oldest_unapplied, txn):
            return False
        self.writer.submit(("partial", self.batch))
        self.batch = Batch(collapse=self.collapse)
        self._parted = True
        return True

    def transaction_read(self, end_lsn: int, commit_time: int, txn: Begin | None) -> None:
        """A transaction for us was read whole (its changes, if any, are in the batch)."""
        self.transactions += 1
        if self._oldest_unapplied is None:
            self._oldest_unapplied = commit_time
        if not self._started:
            self._started = time.monotonic()
        self._last_end = end_lsn
        self._commit_time = commit_time
        batch = self.batch
        if not batch:
            self._progress_pending = True
        limits = self.limits
        if self._parted or batch.changes >= limits.commit_changes or batch.bytes >= limits.commit_bytes:
            self.flush(txn)

    def flush(self, txn: Begin | None = None) -> None:
        """Hand what was read to the writer (a commit, or a progress row alone), unless the caps stopped the run."""
        self._started = 0.0  # the next transaction opens a new batch window
        if self.pace.over:
            return
        if self.batch:
            if not self.pace.paid(self.batch, self._oldest_unapplied, txn):
                return
            self.writer.submit(("commit", self.batch, self._last_end, self._commit_time))
            self.batch = Batch(collapse=self.collapse)
        elif self._progress_pending:
            self.writer.submit(("progress", None, self._last_end, self._commit_time))
        else:
            return
        self.positions.handed()
        self.pace.committed(self.transactions)
        self._progress_pending = self._parted = False
        self._oldest_unapplied = None


__all__ = ["BatchLimits", "Batcher", "Pace"]
