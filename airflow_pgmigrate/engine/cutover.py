"""Cutover: stop writes on the source, drain, check that writes stopped, set sequences, verify, check again,
release, report.

0. Statistics (:mod:`~airflow_pgmigrate.engine.statistics`): the migrated tables the destination still has no
   planner statistics for are analyzed, before the freeze.
1. Freeze (when ``cutover.freeze_source``, see :mod:`~airflow_pgmigrate.engine.freeze`): prepared transactions block
   it; CONNECT is revoked from every role but the migration's, the database is set read-only for new transactions,
   the other sessions are ended and the source is checked quiet. Otherwise the approval is the user's word that
   writes stopped, and the cutover checks it (3).
2. Drain: changes are applied until the applied LSN reaches the source's WAL position at the freeze.
3. Writes stopped: the slot is watched for ``cutover.writes_stopped_check_seconds``; a change to a migrated table
   that still arrives stops the cutover (slot kept) with how many arrived and the sessions that wrote. Then
   materialized views get the source's state: refreshed from the complete tables if populated on the source (a
   REFRESH there sends no row change), unpopulated otherwise.
4. Non-streamed state (:mod:`airflow_pgmigrate.engine.nonstreamed`): every migrated sequence is set from the source
   (``cutover.sequence_offset`` away from the used values, in the sequence's direction), and the large objects
   created, changed or deleted during sync are brought over.
5. Verify what the migration moves (rows of every table and partitioned table, partitions, sequences, large
   objects, materialized views); a difference stops the cutover, naming the object, unless
   ``cutover.allow_differences``.
6. Final check, right before the release: no change arrived since the drain (nor during verification), nothing
   prepared, no other session holding a transaction id.
7. Release the slot and the publication; remove the security-group rule the precheck added, if any.
8. Record the report (times of each step, downtime window, rows, LSNs, verification) in the migration state.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from psycopg import sql

from airflow_pgmigrate.engine.connection import ConnectionInfo, connect
from airflow_pgmigrate.engine.freeze import (
    STATE_KEY,
    FreezeError,
    freeze_source,
    prepared_transactions,
    quiet_problems,
    unfreeze_statements,
    writers,
)
from airflow_pgmigrate.engine.incremental import IncrementalSync, SyncError, SyncResult, release
from airflow_pgmigrate.engine.matviews import sync_materialized_views
from airflow_pgmigrate.engine.nonstreamed import LargeObjectRoles, sync_large_objects_between, sync_sequences
from airflow_pgmigrate.engine.state import MigrationState
from airflow_pgmigrate.engine.statistics import analyze_missing, statistics_next_steps
from airflow_pgmigrate.engine.verify import compare, differences, verify_migration
from airflow_pgmigrate.exceptions import PgMigrateError

if TYPE_CHECKING:
    from airflow_pgmigrate.config import MigrationConfig


class CutoverError(PgMigrateError):
    """The cutover stopped before finishing; the report says where and what to do."""

    def __init__(self, message: str, report: dict[str, Any]) -> None:
        super().__init__(message)
        self.report = report


def unfreeze_command(source: ConnectionInfo, state: MigrationState | None = None) -> str:
    """The statements that undo the freeze (exactly what it changed, as recorded in the migration state), in one
    read-write transaction (the frozen database starts every other one read-only)."""
    record = (state.get(STATE_KEY) if state is not None else None) or {"database": source.dbname}
    return " ".join(["BEGIN READ WRITE;", *unfreeze_statements(record), "COMMIT;"])


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

    t0 = time.monotonic()
    step("statistics", t0, **_update_statistics(config, source, destination, report, log))

    frozen = config.cutover.freeze_source
    t0 = time.monotonic()
    if frozen:
        _freeze(config, source, state, report, log)
    step("freeze" if frozen else "writes_stopped_by_user", t0)
    downtime_start = time.monotonic()

    t0 = time.monotonic()
    with connect(source) as src:
        freeze_lsn = src.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()[0]  # type: ignore[index]
    report["freeze_lsn"] = freeze_lsn
    drained = _drain(config, source, destination, freeze_lsn, report, log)
    report["applied_lsn"] = drained.applied_lsn
    step("drain", t0, transactions=drained.transactions, applied_lsn=drained.applied_lsn)

    # The cutover sees for itself that writes stopped: changes that still arrive are counted, never released.
    t0 = time.monotonic()
    time.sleep(config.cutover.writes_stopped_check_seconds)
    _check_writes_stopped(config, source, destination, state, report, started, log, "after the drain")
    step("writes_stopped", t0, seconds_watched=config.cutover.writes_stopped_check_seconds)

    t0 = time.monotonic()
    report["materialized_views"] = refresh_materialized_views(config, source, destination, log)
    step("materialized_views", t0, refreshed=sum(1 for v in report["materialized_views"]
                                                 if v["action"] == "refreshed"))

    t0 = time.monotonic()
    report["sequences"] = sync_sequences(config, source, destination, offset=config.cutover.sequence_offset,
                                         log=log)
    step("sequences", t0, count=len(report["sequences"]))

    t0 = time.monotonic()  # logical decoding does not carry large objects: those changed during sync come now
    report["large_objects"] = sync_large_objects_between(source, destination, roles=LargeObjectRoles.of(config),
                                                         log=log)
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

    t0 = time.monotonic()
    _check_writes_stopped(config, source, destination, state, report, started, log,
                          "since the writes-stopped check (during verification or right before the release)",
                          already=int(verification.get("changes_applied") or 0))
    step("final_check", t0)

    report["downtime_seconds"] = round(time.monotonic() - downtime_start, 3) if frozen else None
    report["rows_verified"] = verification["rows"]
    report["status"] = "releasing"  # verified: from here on a retry finishes the cutover instead of redoing it
    state.put("cutover", report)
    t0 = time.monotonic()
    _release(config, source, state, report, remove_rules, log)
    step("release", t0, **report["released"])

    report["seconds"] = round(time.monotonic() - started, 3)
    return _completed(config, source, destination, state, report, log)


def _update_statistics(config: MigrationConfig, source: ConnectionInfo, destination: ConnectionInfo,
                       report: dict[str, Any], log: Callable[[str], None]) -> dict[str, Any]:
    """Before the freeze: analyze the migrated tables still without statistics (the verification before the question
    did, unless the approval is automatic). The changes written meanwhile are drained after the freeze with the rest:
    a drain here could wait on the destination's locks before the source is frozen."""
    report["statistics"] = analyze_missing(config, source, destination, log)
    return {k: len(v) for k, v in report["statistics"].items()}


def _freeze(config: MigrationConfig, source: ConnectionInfo, state: MigrationState, report: dict[str, Any],
            log: Callable[[str], None]) -> None:
    """Freeze the source (see :mod:`~airflow_pgmigrate.engine.freeze`); a freeze that cannot take hold stops the
    cutover, recorded, with nothing changed."""
    try:
        report["freeze"] = freeze_source(source, state, log=log,
                                         wait_prepared_seconds=config.cutover.prepared_transactions_wait_seconds)
    except FreezeError as exc:
        report["status"] = "stopped: the source could not be frozen"
        state.put("cutover", report)
        raise CutoverError(f"cutover stopped before the freeze took hold: {exc}", report) from None
    report["sessions_ended"] = report["freeze"]["sessions_ended"]
    report["frozen_at"] = _now()


def refresh_materialized_views(config: MigrationConfig, source: ConnectionInfo, destination: ConnectionInfo,
                               log: Callable[[str], None]) -> list[dict[str, Any]]:
    """After the drain, before verification: a REFRESH MATERIALIZED VIEW on the source during sync sends no row
    change, so each materialized view populated on the source is refreshed on the destination from its complete
    tables now, and one the source holds unpopulated is left (or made) unpopulated."""
    from airflow_pgmigrate.engine.schema import read_source_schema

    with connect(source) as src:
        schema = read_source_schema(src, config)
    return sync_materialized_views(config, schema, source, destination, log=log)


def _drain(config: MigrationConfig, source: ConnectionInfo, destination: ConnectionInfo, target_lsn: str,
           report: dict[str, Any], log: Callable[[str], None]) -> SyncResult:
    """Apply every change up to ``target_lsn``; the totals of all rounds are in the result returned."""
    total = SyncResult(applied_lsn="")
    waited_until = time.monotonic() + 180
    sync = IncrementalSync(config, source, destination, log=log)
    for _ in range(100):
        try:
            result = sync.catch_up(target_lsn, window_seconds=300)
        except SyncError as exc:
            # The sensor that kept the destination in sync while the question waited stops within one poke.
            if "another applier" not in str(exc) or time.monotonic() > waited_until:
                raise
            time.sleep(2)
            continue
        total.transactions += result.transactions
        total.changes += result.changes
        total.applied_lsn = result.applied_lsn
        if result.caught_up:
            return total
    raise CutoverError(f"the destination did not catch up with the source's LSN {target_lsn}", report)


def _check_writes_stopped(config: MigrationConfig, source: ConnectionInfo, destination: ConnectionInfo,
                          state: MigrationState, report: dict[str, Any], started: float, log: Callable[[str], None],
                          when: str, already: int = 0) -> None:
    """Drain up to the source's WAL position now: any change to a migrated table that arrives (plus ``already``,
    those verification applied) means something still writes; stop before the release and say what and who."""
    with connect(source) as src:
        now_lsn = src.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()[0]  # type: ignore[index]
    late = _drain(config, source, destination, now_lsn, report, log)
    report["applied_lsn"] = late.applied_lsn
    changes = late.changes + already
    with connect(source) as src:
        # A prepared transaction commits whenever its transaction manager says so, after the release too (and the
        # consistent verification would wait for it): frozen or not, it stops the cutover.
        problems = quiet_problems(src) if config.cutover.freeze_source else \
            [f"prepared transaction {p}" for p in prepared_transactions(src)]
        who = writers(src, time.monotonic() - started + 1, source.application_name) if changes or problems else []
    if not changes and not problems:
        return
    report["late_changes"] = changes
    report["late_writers"] = [s.describe() for s in who]
    report["status"] = "stopped: the source is still being written"
    state.put("cutover", report)
    frozen = config.cutover.freeze_source
    what = [f"{changes} row change(s) to migrated tables arrived {when} (applied to the destination, which is now at "
            f"LSN {late.applied_lsn})"] if changes else []
    sources = ("sessions that wrote lately on the source: " + "; ".join(report["late_writers"])) if who else \
        "no other session is connected to the source now (the writer may have disconnected)"
    fix = ("a superuser session, or a role that is a member of the migration's, writes despite the freeze: end it"
           if frozen else "stop the application's writes (or set cutover.freeze_source: true)")
    if any(p.startswith("prepared transaction") for p in problems):
        fix += "; have the prepared transactions' owner COMMIT PREPARED or ROLLBACK PREPARED them"
    raise CutoverError(f"cutover stopped before the release: the source is still being written: "
                       f"{'; '.join(what + problems)}. {sources}. The slot is kept, nothing is lost: {fix}, then "
                       "run the cutover again", report)


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
        report["next_steps"].append(f"to roll back, unfreeze the source (restores exactly what the freeze changed): "
                                    f"{unfreeze_command(source, state)}")
    report["next_steps"] += statistics_next_steps(report.get("statistics"))
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
