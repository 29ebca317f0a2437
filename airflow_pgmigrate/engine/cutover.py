"""Cutover: stop writes on the source, drain, set sequences, verify, release, report.

1. Freeze (when ``cutover.freeze_source``): the source database is set read-only for new transactions and the
   sessions still connected to it are ended, so no write can slip in. Otherwise the approval is the user's word that
   writes stopped, and verification still reads a snapshot so a late write cannot produce a false "equal".
2. Drain: changes are applied until the applied LSN reaches the source's WAL position at the freeze.
3. Non-streamed state (:mod:`airflow_pgmigrate.engine.nonstreamed`): every migrated sequence is set from the source
   (``cutover.sequence_offset`` away from the used values, in the sequence's direction), and the large objects
   created, changed or deleted during sync are brought over.
4. Verify what the migration moves (rows of every table and partitioned table, partitions, sequences, large
   objects); a difference stops the cutover, naming the object, unless ``cutover.allow_differences``.
5. Release the slot and the publication; remove the security-group rule the precheck added, if any.
6. Record the report (times of each step, downtime window, rows, LSNs, verification) in the migration state.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from psycopg import sql

from airflow_pgmigrate.engine.connection import ConnectionInfo, connect
from airflow_pgmigrate.engine.incremental import SyncError, release, run_incremental
from airflow_pgmigrate.engine.nonstreamed import sync_large_objects_between, sync_sequences
from airflow_pgmigrate.engine.state import MigrationState
from airflow_pgmigrate.engine.verify import compare, differences, verify_migration
from airflow_pgmigrate.exceptions import PgMigrateError

if TYPE_CHECKING:
    from airflow_pgmigrate.config import MigrationConfig


class CutoverError(PgMigrateError):
    """The cutover stopped before finishing; the report says where and what to do."""

    def __init__(self, message: str, report: dict[str, Any]) -> None:
        super().__init__(message)
        self.report = report


def freeze_source(source: ConnectionInfo, log: Callable[[str], None]) -> int:
    """Set the source database read-only for new transactions and end the sessions still using it."""
    with connect(source) as src:
        src.execute("SET default_transaction_read_only = off")  # a retry finds the database frozen already
        src.execute(sql.SQL("ALTER DATABASE {} SET default_transaction_read_only = on").format(
            sql.Identifier(source.dbname)))
        ended = src.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND backend_type = 'client backend'").fetchone()
    count = int(ended[0]) if ended else 0
    log(f"cutover froze source database={source.dbname} sessions_ended={count}")
    return count


def unfreeze_command(source: ConnectionInfo) -> str:
    return sql.SQL("ALTER DATABASE {} RESET default_transaction_read_only;").format(
        sql.Identifier(source.dbname)).as_string(None)


def _now() -> str:
    return datetime.now(UTC).isoformat()


def run_cutover(config: MigrationConfig, source: ConnectionInfo, destination: ConnectionInfo, *,
                remove_rules: Callable[[list[dict[str, Any]]], list[Any]] | None = None,
                log: Callable[[str], None] = lambda message: None) -> dict[str, Any]:
    state = MigrationState(destination, config.state_schema, config.name)
    previous = state.get("cutover") or {}
    if previous.get("status") in ("releasing", "completed") and not _slot_exists(config, source):
        # A retry after the worker died once the cutover had verified everything: finish it, never redo it (the
        # slot is gone, so there is nothing left to drain).
        return _finish_released(config, source, destination, state, previous, remove_rules, log)
    report: dict[str, Any] = {"migration": config.name, "started_at": _now(), "steps": []}
    started = time.monotonic()

    def step(name: str, t0: float, **detail: Any) -> None:
        entry = {"step": name, "seconds": round(time.monotonic() - t0, 3), **detail}
        report["steps"].append(entry)
        log(f"cutover step={name} seconds={entry['seconds']} " + " ".join(f"{k}={v}" for k, v in detail.items()))

    frozen = config.cutover.freeze_source
    t0 = time.monotonic()
    if frozen:
        report["sessions_ended"] = freeze_source(source, log)
        report["frozen_at"] = _now()
    step("freeze" if frozen else "writes_stopped_by_user", t0)
    downtime_start = time.monotonic()

    t0 = time.monotonic()
    with connect(source) as src:
        freeze_lsn = src.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()[0]  # type: ignore[index]
    report["freeze_lsn"] = freeze_lsn
    transactions = 0
    waited_until = time.monotonic() + 180
    for _ in range(100):
        try:
            result = run_incremental(config, source, destination, window_seconds=300, target_lsn=freeze_lsn,
                                     log=log)
        except SyncError as exc:
            # The sensor that kept the destination in sync while the question waited stops within one poke.
            if "another applier" not in str(exc) or time.monotonic() > waited_until:
                raise
            time.sleep(2)
            continue
        transactions += result.transactions
        if result.caught_up:
            break
    else:
        raise CutoverError(f"the destination did not catch up with the source's LSN {freeze_lsn}", report)
    report["applied_lsn"] = result.applied_lsn
    step("drain", t0, transactions=transactions, applied_lsn=result.applied_lsn)

    t0 = time.monotonic()
    report["sequences"] = sync_sequences(config, source, destination, offset=config.cutover.sequence_offset,
                                         log=log)
    step("sequences", t0, count=len(report["sequences"]))

    t0 = time.monotonic()  # logical decoding does not carry large objects: those changed during sync come now
    report["large_objects"] = sync_large_objects_between(source, destination, log=log)
    step("large_objects", t0, **report["large_objects"])

    t0 = time.monotonic()
    verification = compare(config, source, destination, log=log) if frozen else \
        verify_migration(config, source, destination, log=log)
    report["verification"] = verification
    step("verify", t0, equal=verification["equal"], differences=verification["differences"])
    if not verification["equal"] and not config.cutover.allow_differences:
        report["status"] = "stopped: verification found differences"
        state.put("cutover", report)
        raise CutoverError("cutover stopped: the destination differs from the source: "
                           + "; ".join(differences(verification))
                           + ". The slot is kept: fix the cause, then run the cutover again (or set "
                           "cutover.allow_differences)", report)

    report["downtime_seconds"] = round(time.monotonic() - downtime_start, 3) if frozen else None
    report["rows_verified"] = verification["rows"]
    report["status"] = "releasing"  # verified: from here on a retry finishes the cutover instead of redoing it
    state.put("cutover", report)
    t0 = time.monotonic()
    _release(config, source, state, report, remove_rules, log)
    step("release", t0, **report["released"])

    report["seconds"] = round(time.monotonic() - started, 3)
    return _completed(config, source, destination, state, report, log)


def _slot_exists(config: MigrationConfig, source: ConnectionInfo) -> bool:
    with connect(source) as src:
        return src.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s",
                           (config.slot_name,)).fetchone() is not None


def _release(config: MigrationConfig, source: ConnectionInfo, state: MigrationState, report: dict[str, Any],
             remove_rules: Callable[[list[dict[str, Any]]], list[Any]] | None, log: Callable[[str], None]) -> None:
    """Drop the slot and the publication, remove the security-group rules the precheck added (each idempotent)."""
    report["released"] = release(config, source, log=log)
    rules = state.get("added_ingress_rules") or []
    if rules and remove_rules is not None:
        report["removed_ingress_rules"] = [getattr(r, "to_dict", lambda r=r: r)() for r in remove_rules(rules)]


def _completed(config: MigrationConfig, source: ConnectionInfo, destination: ConnectionInfo, state: MigrationState,
               report: dict[str, Any], log: Callable[[str], None]) -> dict[str, Any]:
    report["finished_at"] = _now()
    report["status"] = "completed"
    report["next_steps"] = [
        f"switch the application's connection string to the destination ({destination.describe()})",
    ]
    if report.get("frozen_at"):
        report["next_steps"].append(f"to roll back, unfreeze the source: {unfreeze_command(source)}")
    if not config.owns_publication:
        report["next_steps"].append(
            f"the publication {config.publication_name} belongs to its owner and was kept: once the source is retired "
            "or no longer needed for rollback, its owner runs " + sql.SQL("DROP PUBLICATION {};").format(
                sql.Identifier(config.publication_name)).as_string(None))
    state.put("cutover", report)
    log(f"cutover done seconds={report.get('seconds')} downtime_s={report.get('downtime_seconds')} "
        f"rows_verified={report.get('rows_verified')} equal={report['verification']['equal']}")
    return report


def _finish_released(config: MigrationConfig, source: ConnectionInfo, destination: ConnectionInfo,
                     state: MigrationState, previous: dict[str, Any],
                     remove_rules: Callable[[list[dict[str, Any]]], list[Any]] | None,
                     log: Callable[[str], None]) -> dict[str, Any]:
    report = dict(previous)
    if report["status"] == "completed":
        log(f"cutover already completed at {report.get('finished_at')}: nothing to do")
        return {**report, "already_completed": True}
    log(f"cutover resuming: verified equal at applied_lsn={report.get('applied_lsn')} before the previous attempt "
        f"stopped while releasing; the slot {config.slot_name} is gone, finishing the release")
    t0 = time.monotonic()
    _release(config, source, state, report, remove_rules, log)
    report["steps"] = [*report.get("steps", []), {"step": "release", "seconds": round(time.monotonic() - t0, 3),
                                                  "resumed": True, **report["released"]}]
    report["resumed"] = True
    return _completed(config, source, destination, state, report, log)


__all__ = ["CutoverError", "freeze_source", "run_cutover", "unfreeze_command"]
