"""Replication slot chores of the full load: naming what a slot's creation waits for, and clearing a slot left by an
attempt that died before recording it.

Waiting.

``CREATE_REPLICATION_SLOT`` cannot finish while a transaction that wrote (holds an xid) and started before it is still
open, in any database of the source: the walsender waits on each such transaction's lock in turn. A long report, a
session left idle in transaction or a forgotten prepared transaction stalls the full load with no sign of life. While
the create call waits, a thread polls, on a separate ordinary connection, the sessions that block the walsender
(``pg_blocking_pids``) and logs each one: pid, application_name, user, database, state, xact_start and the start of
its query; a prepared transaction (pid 0) is named by its gid. The wait itself is left alone: ending the blocking
session is the user's decision, and the message says how.

Leftovers. A worker killed while its slot was being created leaves a walsender that goes on waiting (it notices the
client is gone only when the wait ends) and then may finish creating the slot. The retry ends that session and drops
the slot before creating its own.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg

from airflow_pgmigrate.engine.connection import ConnectionInfo, connect
from airflow_pgmigrate.exceptions import PgMigrateError

#: How often the blockers are read; a line is logged when they change, and at least every REPORT_SECONDS.
POLL_SECONDS = 1.0
REPORT_SECONDS = 10.0
#: Characters of the blocking session's query shown.
QUERY_EXCERPT = 120

_BLOCKERS = """
SELECT a.pid, a.application_name, a.usename, a.datname, a.state, a.xact_start, a.query,
       extract(epoch FROM now() - a.xact_start)::int
  FROM pg_stat_activity a
 WHERE a.pid = ANY(pg_blocking_pids(%(pid)s))
 ORDER BY a.xact_start
"""
_PREPARED = """
SELECT gid, owner, database, prepared, extract(epoch FROM now() - prepared)::int
  FROM pg_prepared_xacts ORDER BY prepared
"""
#: When the walsender is not (yet) waiting on a lock: the writing transactions older than the create call.
_OLDER_WRITERS = """
SELECT a.pid, a.application_name, a.usename, a.datname, a.state, a.xact_start, a.query,
       extract(epoch FROM now() - a.xact_start)::int
  FROM pg_stat_activity a
 WHERE a.backend_xid IS NOT NULL AND a.pid <> %(pid)s AND a.pid <> pg_backend_pid()
   AND a.xact_start < now() - make_interval(secs => %(waited)s)
 ORDER BY a.xact_start
"""


def _excerpt(query: str | None) -> str:
    text = " ".join((query or "").split())
    return text if len(text) <= QUERY_EXCERPT else text[:QUERY_EXCERPT - 3] + "..."


def blocking_sessions(conn: psycopg.Connection, walsender_pid: int, waited: float) -> list[str]:
    """One description per transaction the slot's creation waits for (empty: none found)."""
    lines: list[str] = []
    rows = conn.execute(_BLOCKERS, {"pid": walsender_pid}).fetchall()
    prepared = conn.execute("SELECT 0 = ANY(pg_blocking_pids(%s))", (walsender_pid,)).fetchone()
    if not rows and not (prepared and prepared[0]):
        rows = conn.execute(_OLDER_WRITERS, {"pid": walsender_pid, "waited": waited}).fetchall()
    for pid, app, user, db, state, xact_start, query, seconds in rows:
        lines.append(f"pid={pid} application_name={app!r} user={user} database={db} state={state!r} "
                     f"xact_start={xact_start.isoformat() if xact_start else None} open_s={seconds} "
                     f"query={_excerpt(query)!r} (it ends when that session commits or rolls back; "
                     f"SELECT pg_terminate_backend({pid}) ends it now)")
    if prepared and prepared[0]:
        for gid, owner, db, at, seconds in conn.execute(_PREPARED).fetchall():
            lines.append(f"prepared transaction gid={gid!r} owner={owner} database={db} "
                         f"prepared_at={at.isoformat()} open_s={seconds} (COMMIT PREPARED or ROLLBACK PREPARED "
                         f"{gid!r} in database {db} ends it)")
    return lines


def watch_slot_creation(source: ConnectionInfo, walsender_pid: int, slot: str,
                        log: Callable[[str], None]) -> threading.Event:
    """Start the watcher for the creation of ``slot`` on the walsender ``walsender_pid``; set the returned event
    once the create call returned (or failed) to stop it."""
    done = threading.Event()
    started = time.monotonic()

    def watch() -> None:
        conn: Any = None
        reported: tuple[str, ...] = ()
        last_report = 0.0
        try:
            while not done.wait(POLL_SECONDS):
                try:
                    if conn is None or conn.closed:
                        conn = connect(source)
                    waited = time.monotonic() - started
                    lines = tuple(blocking_sessions(conn, walsender_pid, waited))
                except Exception:  # noqa: BLE001 - the watcher must never break the load
                    conn = None
                    continue
                if done.is_set() or not lines:
                    continue
                now = time.monotonic()
                if lines != reported or now - last_report >= REPORT_SECONDS:
                    for line in lines:
                        log(f"full_load waiting for slot={slot} waited_s={waited:.0f}: replication slot creation "
                            f"waits for every transaction that was writing when it started to end; blocked by "
                            f"{line}")
                    reported, last_report = lines, now
        finally:
            if conn is not None:
                try:
                    conn.close()
                except Exception:  # noqa: BLE001 - closing on the way out
                    pass

    threading.Thread(target=watch, daemon=True, name="slot-creation-watcher").start()
    return done


class SlotInUse(PgMigrateError):
    """A slot left by an earlier attempt is still held by a session that would not end."""


def drop_leftover_slot(conn: psycopg.Connection, slot: str, log: Callable[[str], None],
                       timeout: float = 30.0) -> bool:
    """Drop ``slot`` (created by an attempt that recorded nothing), ending the session still holding it, if any.
    Returns whether a slot was there. ``conn`` is an ordinary autocommit connection to the source."""
    deadline = time.monotonic() + timeout
    found = False
    while True:
        row = conn.execute("SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s", (slot,)).fetchone()
        if row is None:
            return found
        found = True
        if row[0] is None:
            try:
                conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
                log(f"full_load dropped slot={slot} left by an attempt that recorded nothing")
                return True
            except (psycopg.errors.ObjectInUse, psycopg.errors.UndefinedObject):
                pass  # taken again, or gone meanwhile: look again
        else:
            conn.execute("SELECT pg_terminate_backend(%s)", (row[0],))
            log(f"full_load ended pid={row[0]} that held slot={slot} for an earlier attempt (a worker that died "
                "while the slot was being created)")
        if time.monotonic() > deadline:
            raise SlotInUse(f"replication slot {slot} is held by pid {row[0]} and could not be dropped within "
                            f"{timeout:.0f} s: end that session (SELECT pg_terminate_backend({row[0]})), then retry")
        time.sleep(0.2)


__all__ = ["SlotInUse", "blocking_sessions", "drop_leftover_slot", "watch_slot_creation"]
