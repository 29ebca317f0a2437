"""What kind of failure stopped a step, so that it is retried for the right time, or not at all.

- ``connection``: a server is unreachable, restarted, or dropped the session (retried for
  ``retry.connection_failures_minutes``);
- ``transient``: the server answered with an error that can pass by itself (a statement timeout, a read-only or full
  destination, a lock conflict, another applier still running) (retried for ``retry.other_errors_minutes``);
- ``permanent``: retrying cannot help until a person acts (the slot is gone, DDL on the source, a missing table).
"""

from __future__ import annotations

from typing import Literal

import psycopg

from airflow_pgmigrate.engine.connection import ConnectFailed
from airflow_pgmigrate.exceptions import SyncError

FailureKind = Literal["connection", "transient", "permanent"]

#: SQLSTATEs of a session ended by the server: admin_shutdown, crash_shutdown, cannot_connect_now.
_ENDED_SESSION_STATES = ("57P01", "57P02", "57P03")
#: How a SyncError says that the replication or destination connection broke (engine/incremental/__init__.py).
_SYNC_CONNECTION_PHRASES = ("connection lost", "the source ended the replication stream", "replication stream failed")
#: The server ended the replication stream because the session or the server ended: a connection failure.
_STREAM_ENDED_BY_SHUTDOWN = ("terminating connection", "server closed the connection", "shutting down",
                             "administrator command", "no connection to the server")
#: The source cannot give the slot's changes any more (mid-stream): the slot was invalidated or dropped.
_SLOT_GONE_PHRASES = ("does not exist", "can no longer", "cannot read from logical replication slot",
                      "has already been removed", "invalidated")
#: SyncErrors that pass by themselves.
_SYNC_TRANSIENT_PHRASES = ("another applier", "applying changes failed on the destination",
                           "replication slot is in use by another session")


def is_connection_failure(exc: BaseException) -> bool:
    """Whether ``exc`` means the session could not be opened or was lost (rather than a statement failing)."""
    if isinstance(exc, ConnectFailed):
        return True
    if isinstance(exc, psycopg.Error):
        state = exc.sqlstate
        if state is None:
            return isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError))
        return state.startswith("08") or state in _ENDED_SESSION_STATES
    return False


def failure_kind(exc: BaseException) -> FailureKind:
    """Classify a failure of incremental sync (see the module docstring)."""
    if is_connection_failure(exc):
        return "connection"
    if isinstance(exc, SyncError):
        text = str(exc)
        if any(phrase in text for phrase in _SYNC_CONNECTION_PHRASES):
            if "ended the replication stream" in text and not any(p in text for p in _STREAM_ENDED_BY_SHUTDOWN):
                return "permanent" if any(p in text for p in _SLOT_GONE_PHRASES) else "transient"
            return "connection"
        if any(phrase in text for phrase in _SYNC_TRANSIENT_PHRASES):
            return "transient"
        return "permanent"
    if isinstance(exc, psycopg.Error):
        return "transient"
    return "permanent"


def describe_database_error(exc: psycopg.Error) -> str:
    """One line for a server error: its primary message and SQLSTATE (never connection parameters)."""
    message = (exc.diag.message_primary or str(exc)).strip().splitlines()[0] if str(exc) else type(exc).__name__
    return f"{message} (SQLSTATE {exc.sqlstate})" if exc.sqlstate else message


def sync_failure_message(exc: psycopg.Error, applied_lsn: str) -> str:
    """The message of a SyncError for a server error met while streaming and applying. The batch being written was
    rolled back with its transaction, so the recorded position (``applied_lsn``) is still the truth."""
    # 0/0: the failure came before the recorded position was read (or nothing is recorded yet).
    where = f"nothing after applied_lsn={applied_lsn} is recorded as applied; the next attempt resumes there" \
        if applied_lsn != "0/0" else "the recorded applied position is unchanged; the next attempt resumes from it"
    if is_connection_failure(exc):
        return f"connection lost during incremental sync: {str(exc).strip()}; {where}"
    text = str(exc)
    if "replication slot" in text:  # the source refused to stream the slot (START_REPLICATION)
        if exc.sqlstate == "55006":
            return (f"the source's replication slot is in use by another session ({describe_database_error(exc)}): "
                    f"a killed worker's session ends within the source's wal_sender_timeout; {where}")
        detail = (exc.diag.message_detail or "").strip()
        return (f"the source can no longer stream the migration's replication slot: {describe_database_error(exc)}"
                f"{' ' + detail if detail else ''}. The changes it held are gone (the source removed WAL the slot "
                "still needed, for example past max_slot_wal_keep_size, or the slot was dropped), so incremental "
                "sync cannot continue: release the slot (the DAG's release task, or pg_drop_replication_slot) and "
                "restart the migration from a fresh full load")
    return f"applying changes failed on the destination: {describe_database_error(exc)}. The batch was rolled " \
           f"back: {where}"


__all__ = ["FailureKind", "describe_database_error", "failure_kind", "is_connection_failure",
           "sync_failure_message"]
