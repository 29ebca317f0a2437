"""The replication stream of the incremental sync: START_REPLICATION, CopyData messages, keepalives and standby
status updates on the source's replication connection.

The stream only carries: what it sends as feedback is produced by the position tracker (engine/incremental/positions.py), and
:meth:`ReplicationStream.report` is the one place that sends it.
"""

from __future__ import annotations

import select
import struct
import time
from collections.abc import Callable

import psycopg
from psycopg import sql

from airflow_pgmigrate.engine.incremental.pgoutput import int_to_lsn
from airflow_pgmigrate.engine.incremental.positions import Feedback
from airflow_pgmigrate.exceptions import SyncError

#: Message kinds (first byte of a CopyData message).
KEEPALIVE = 107  # 'k'
XLOG_DATA = 119  # 'w'
#: Where the pgoutput payload starts in an XLogData message (after 'w', start, end and send time).
PAYLOAD = 25


def now_micros() -> int:
    """Now, in microseconds since 2000-01-01 (PostgreSQL's epoch), as the standby status update carries it."""
    return int((time.time() - 946684800) * 1_000_000)


def keepalive_of(message: bytes) -> tuple[int, bool]:
    """A keepalive's WAL end (the position the source has decoded to) and whether it asks for a reply."""
    wal_end, _, reply = struct.unpack_from("!QQB", message, 1)
    return wal_end, bool(reply)


class ReplicationStream:
    """One replication connection streaming a logical slot with pgoutput."""

    def __init__(self, repl: psycopg.Connection) -> None:
        self.repl = repl

    def start(self, slot: str, publication: str, version: int, start: int) -> None:
        """START_REPLICATION from ``start``: protocol 2 with streaming of in-progress transactions on 14+."""
        repl = self.repl
        options = ["proto_version '2'", "streaming 'on'"] if version >= 140000 else ["proto_version '1'"]
        options.append(f"publication_names {sql.Literal(publication).as_string(repl)}")
        repl.execute(f"START_REPLICATION SLOT {sql.Identifier(slot).as_string(repl)} LOGICAL "
                     f"{int_to_lsn(start)} ({', '.join(options)})")

    def report(self, feedback: Feedback, reply: bool = False) -> None:
        """Send a standby status update: the tracker's write and flush positions (apply = flush)."""
        message = b"r" + struct.pack("!QQQqB", feedback.written, feedback.flushed, feedback.flushed, now_micros(),
                                     1 if reply else 0)
        self.repl.pgconn.put_copy_data(message)
        self.repl.pgconn.flush()

    def read(self, timeout: float) -> bytes | None:
        """One CopyData message, or None when nothing came within ``timeout``."""
        pgconn = self.repl.pgconn
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

    def read_chunk(self, timeout: float, limit: int) -> list[bytes]:
        """The next CopyData message (waiting up to ``timeout``) and those libpq holds already behind it, up to
        ``limit`` in all; empty when nothing came. The reading thread pays its per-message housekeeping once per
        chunk instead of once per message."""
        first = self.read(timeout)
        if first is None:
            return []
        messages = [first]
        append = messages.append
        get = self.repl.pgconn.get_copy_data
        for _ in range(limit - 1):
            size, data = get(1)
            if size <= 0:
                break  # nothing buffered (0), or the end or an error, which the next read() reports
            append(bytes(data))
        return messages

    def read_ahead(self, last: Feedback, applied: int, until: int, reached: int, seconds: float,
                   log: Callable[[str], None]) -> tuple[int | None, int]:
        """Read the stream on, applying nothing, to the first transaction not applied yet.

        Returns its commit time (the first Begin or stream commit at or past ``applied``: the stream delivers
        transactions in commit order), or None once a keepalive says the source decoded up to ``until`` without
        one, or after ``seconds``; and the position the keepalives reported. Keepalives are asked for with the
        feedback ``last`` sent (nothing new is confirmed).
        """
        stop = time.monotonic() + seconds
        asked = 0.0
        try:
            while (left := stop - time.monotonic()) > 0:
                if time.monotonic() - asked >= 0.2:
                    self.report(last, reply=True)
                    asked = time.monotonic()
                message = self.read(min(left, 0.2))
                if message is None:
                    continue
                if message[0] == KEEPALIVE:
                    reached = max(reached, keepalive_of(message)[0])
                    if reached >= until:
                        return None, reached
                elif message[0] == XLOG_DATA and message[PAYLOAD] in (66, 99):  # 'B' begin, 'c' stream commit
                    commit_lsn, commit_time = struct.unpack_from("!QQ" if message[25] == 66 else "!Q8xQ", message,
                                                                 26 if message[25] == 66 else 31)
                    if commit_lsn >= applied:
                        return commit_time, reached
        except (SyncError, psycopg.Error) as exc:  # the next poke meets the failure; the lag falls back meanwhile
            log(f"incremental warning: reading ahead for the lag failed: {str(exc).strip()[:200]}")
        return None, reached


__all__ = ["KEEPALIVE", "PAYLOAD", "XLOG_DATA", "ReplicationStream", "keepalive_of", "now_micros"]
