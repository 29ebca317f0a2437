"""The positions of an incremental sync, and the one rule for what the source is told.

Four positions, all source LSNs (integers):

- ``received``: the furthest the stream has delivered (the write LSN of the feedback);
- ``position``: everything before it is read, and is either applied, handed to the writer, or nothing for the
  migration (transactions of other tables, skipped ones, WAL a keepalive said holds nothing more);
- ``applied``: the end LSN of the source transaction of the writer's last destination commit;
- ``durable``: the end LSN of the last source transaction whose destination commit is flushed on the destination
  (the flush LSN of the feedback).

:class:`PositionTracker` is the only object that moves them and the only producer of the feedback sent to the
source; the stream sends what it produces. The flush LSN never passes ``durable``, except when nothing read is
waiting (no transaction or streamed transaction open, nothing read and not committed, every commit durable): then
``position`` may be reported, which lets the source free WAL that held nothing for us.
"""

from __future__ import annotations

import collections
import threading
from dataclasses import dataclass


class DurableFeedback:
    """The end LSN of the last source transaction whose destination commit is durable, never more.

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


@dataclass(frozen=True)
class Feedback:
    """One standby status update: what the stream received (write LSN) and what may be reported flushed."""

    written: int
    flushed: int


@dataclass(frozen=True)
class StopConditions:
    """When a run stops reading, as inputs rather than branches of the loop.

    ``deadline``: the end of the window (``time.monotonic()``), honoured between transactions; ``target``: the
    source LSN that counts as caught up once read through with nothing open or waiting; ``when_caught_up``: whether
    reaching it ends the run; ``before``: a source LSN (verification's snapshot) from which no transaction committed
    at or after it is applied: the run ends before it, with everything earlier applied.
    """

    deadline: float
    target: int
    when_caught_up: bool = True
    before: int | None = None

    def excludes(self, commit_lsn: int) -> bool:
        """Whether a transaction committed at ``commit_lsn`` is left for later (at or past ``before``)."""
        return self.before is not None and commit_lsn >= self.before


class PositionTracker:
    """Owner of the sync's positions (see the module's docstring) and of the feedback they allow.

    The reading side tells it what it read (``received``, ``begin``, ``end``, the streamed transactions, the
    keepalives) and what it handed to the writer; the writer tells it each destination commit (``committed``, from
    its own thread). ``applied`` is where the run started (the destination's recorded progress); ``confirmed`` is the
    slot's confirmed position: a recorded position past it may come from a run that died before its commits were
    flushed, so it is durable only once the destination's flush position passes ``recorded_at`` (the destination's
    WAL insert position when the run started). The flush position reported never moves back.
    """

    def __init__(self, applied: int, confirmed: int, recorded_at: int | None = None) -> None:
        self.received = applied
        self.position = applied
        self.applied = applied
        self.durable = DurableFeedback(min(confirmed, applied))
        if applied > confirmed:
            if recorded_at is None:
                raise ValueError("a recorded position past the slot's needs the destination's WAL position")
            self.durable.committed(applied, recorded_at)
        self.last = Feedback(applied, self.durable.position)  # what a keep-alive repeats
        self._open = False  # a transaction is being read (Begin seen, Commit not yet)
        self._streaming = False  # inside a StreamStart ... StreamStop block
        self._streamed: set[int] = set()  # streamed transactions with content read and not committed or aborted
        self._read_end = applied  # end LSN of the last transaction read that the writer must commit
        self._handed_end = applied  # end LSN of the last transaction handed to the writer
        self._changes_waiting = False  # changes read (of ended transactions) and not handed to the writer

    # -- what was read ---------------------------------------------------------------------------------------------

    def receive(self, wal_start: int) -> None:
        """The stream delivered a message starting at ``wal_start``."""
        if wal_start > self.received:
            self.received = wal_start

    def begin(self) -> None:
        self._open = True

    def end(self, end_lsn: int, *, skipped: bool, changes_waiting: bool) -> None:
        """A transaction ending at ``end_lsn`` was read whole. A skipped one (already in the destination) or one with
        nothing for us is accounted for at once; any other waits for the writer's commit of ``end_lsn``.
        ``changes_waiting``: the batch being filled holds changes after it (not handed to the writer yet)."""
        self._open = False
        if end_lsn > self.received:
            self.received = end_lsn
        if end_lsn > self.position:
            self.position = end_lsn
        if not skipped:
            self._read_end = end_lsn
            self._changes_waiting = changes_waiting

    def stream_started(self) -> None:
        self._streaming = True

    def stream_stopped(self) -> None:
        self._streaming = False

    def streamed_read(self, xid: int) -> None:
        """Content of streamed transaction ``xid`` was read (kept until its commit or abort)."""
        self._streamed.add(xid)

    def streamed_done(self, xid: int) -> None:
        """Streamed transaction ``xid`` committed (its changes are now read like any transaction's) or aborted."""
        self._streamed.discard(xid)

    def keepalive(self, wal_end: int) -> None:
        """The source says it decoded up to ``wal_end``: nothing for us lies between the last message and it, so it is
        accounted for, unless a transaction (streamed or not) is open or changes read wait for the writer."""
        if not self._open and not self._streaming and not self._streamed and not self._changes_waiting:
            self.position = max(self.position, wal_end)

    def handed(self) -> None:
        """Everything read so far was handed to the writer (a commit, or a progress row)."""
        self._handed_end = self._read_end
        self._changes_waiting = False

    def discard_unapplied(self) -> None:
        """What was read after the last commit is left for the next run (the caps stopped this one): nothing after
        ``applied`` may be reported or counted as accounted for."""
        self.position = self._read_end = self._handed_end = self.applied
        self._changes_waiting = False

    # -- what the writer did ---------------------------------------------------------------------------------------

    def committed(self, end_lsn: int, destination_lsn: int) -> None:
        """The writer committed source transactions up to ``end_lsn``; its destination WAL position is after it."""
        self.applied = end_lsn
        self.durable.committed(end_lsn, destination_lsn)

    # -- what may be said --------------------------------------------------------------------------------------------

    @property
    def accounted(self) -> int:
        """Everything before it is applied or has nothing for us."""
        return max(self.applied, self.position)

    @property
    def open(self) -> bool:
        """A transaction or a streamed transaction is read and not complete."""
        return self._open or bool(self._streamed)

    @property
    def idle(self) -> bool:
        """Nothing read is waiting: no transaction or streamed transaction open, every transaction read committed by
        the writer, every commit durable."""
        return (not self._open and not self._streaming and not self._streamed and self._read_end <= self.applied
                and self.durable.settled)

    def caught_up_with(self, target: int) -> bool:
        """Read through ``target`` with nothing open or waiting to be handed to the writer."""
        return self.position >= target and not self._open and not self._streamed and not self._changes_waiting

    def feedback(self, destination_flushed: int | None = None) -> Feedback:
        """The feedback to send now. ``destination_flushed``: the destination's ``pg_current_wal_flush_lsn()`` just
        read (None: use what is known durable). Flushed is the durable position, or ``position`` when idle."""
        if destination_flushed is not None:
            self.durable.flushed(destination_flushed)
        durable = self.durable.position
        flushed = max(durable, self.position) if self.idle else durable
        self.last = Feedback(self.received, max(flushed, self.last.flushed))
        return self.last

    @property
    def needs_flush_lsn(self) -> bool:
        """Whether a commit's durability is unknown (the destination's flush position should be read)."""
        return not self.durable.settled


__all__ = ["DurableFeedback", "Feedback", "PositionTracker", "StopConditions"]
