"""How a failure of incremental sync is classified (connection / can pass / needs a person): no server needed.

The integration cases raise these failures for real; this pins the rules for every kind the product knows."""

from __future__ import annotations

import psycopg
import pytest

from airflow_pgmigrate.engine.connection import ConnectFailed
from airflow_pgmigrate.engine.failures import failure_kind, is_connection_failure, sync_failure_message
from airflow_pgmigrate.engine.incremental import SyncError

pytestmark = pytest.mark.hardening


@pytest.mark.parametrize("exc, kind", [
    (ConnectFailed("cannot connect to u@h:5432/db: connection refused"), "connection"),
    (psycopg.OperationalError("consuming input failed: server closed the connection unexpectedly"), "connection"),
    (psycopg.errors.AdminShutdown("terminating connection due to administrator command"), "connection"),
    (psycopg.errors.CannotConnectNow("the database system is starting up"), "connection"),
    (psycopg.errors.QueryCanceled("canceling statement due to statement timeout"), "transient"),
    (psycopg.errors.DiskFull("could not extend file: No space left on device"), "transient"),
    (psycopg.errors.ReadOnlySqlTransaction("cannot execute INSERT in a read-only transaction"), "transient"),
    (psycopg.errors.LockNotAvailable("could not obtain lock"), "transient"),
    (SyncError("connection lost during incremental sync: server closed the connection"), "connection"),
    (SyncError("the source ended the replication stream: FATAL: terminating connection due to administrator "
               "command"), "connection"),
    (SyncError("the source ended the replication stream: ERROR: requested WAL segment 0001 has already been "
               "removed"), "permanent"),
    (SyncError("another applier of migration shop is running on the destination"), "transient"),
    (SyncError("applying changes failed on the destination: canceling statement due to statement timeout"),
     "transient"),
    (SyncError("replication slot pgmigrate_shop does not exist on the source: it was dropped"), "permanent"),
    (SyncError("DDL on the source: public.items has a column 'price' that the destination table lacks"), "permanent"),
    (ValueError("a bug"), "permanent"),
])
def test_failure_kinds(exc, kind):
    assert failure_kind(exc) == kind


def test_a_statement_error_is_not_a_lost_connection():
    assert not is_connection_failure(psycopg.errors.QueryCanceled("canceling statement due to statement timeout"))
    message = sync_failure_message(psycopg.errors.QueryCanceled("canceling statement due to statement timeout"),
                                   "0/16B3748")
    assert message.startswith("applying changes failed on the destination: canceling statement")
    assert "nothing after applied_lsn=0/16B3748 is recorded as applied" in message
    assert failure_kind(SyncError(message)) == "transient"


def test_slot_errors_name_the_source_side():
    busy = sync_failure_message(psycopg.errors.ObjectInUse('replication slot "s" is active for PID 42'), "0/1")
    assert busy.startswith("the source's replication slot is in use") and failure_kind(SyncError(busy)) == "transient"
    gone = sync_failure_message(psycopg.errors.ObjectNotInPrerequisiteState(
        'cannot read from logical replication slot "s"'), "0/1")
    assert "fresh full load" in gone and failure_kind(SyncError(gone)) == "permanent"
