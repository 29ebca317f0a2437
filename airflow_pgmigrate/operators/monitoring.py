"""What every migration task does besides its step: record it in the migration journal, watch the WAL the slot
retains on the source, send alerts, and keep the HTML report current (docs/monitoring.md).

All of it is best effort and never fails the task (a destination that cannot be reached for the journal is logged
once per task, an alert that cannot be sent is logged), except the retained-WAL watchdog's safe stop.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar, NoReturn, TypeVar

from airflow.sdk import BaseOperatorLink

from airflow_pgmigrate.engine.connection import ConnectFailed, connect
from airflow_pgmigrate.engine.journal import Journal
from airflow_pgmigrate.engine.state import MigrationState
from airflow_pgmigrate.engine.watchdog import (
    WATCH_KEY,
    Alert,
    RetainedWalStop,
    WalRetention,
    WalVerdict,
    Watch,
    read_retention,
    stop_message,
)
from airflow_pgmigrate.links import MigrationReportLink

if TYPE_CHECKING:
    import psycopg

    from airflow_pgmigrate.config import MigrationConfig
    from airflow_pgmigrate.engine.connection import ConnectionInfo
    from airflow_pgmigrate.engine.incremental import SyncResult

T = TypeVar("T")
#: Seconds a journal or report write waits for the destination before giving up (the step itself waits longer).
JOURNAL_CONNECT_TIMEOUT = 5


def _try_number(context: Any) -> int | None:
    return getattr(context.get("ti"), "try_number", None)


def _error_text(error: BaseException | str | None, secrets: list[str | None]) -> str | None:
    if error is None:
        return None
    text = f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else str(error)
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text[:1000]


class RecordOutcome:
    """Task callback recording how a try ended (``failed``, ``up_for_retry``, ``skipped``) in the journal."""

    def __init__(self, outcome: str) -> None:
        self.outcome = outcome

    def __call__(self, context: Any) -> None:
        task = context.get("task")
        if isinstance(task, MonitoredTaskMixin):
            task.record_outcome(context, self.outcome)

    def __repr__(self) -> str:
        return f"RecordOutcome({self.outcome!r})"


@dataclass
class PokeRecord:
    """One sensor poke for the journal: when it started, how it ended, what it applied."""

    started_at: datetime
    outcome: str
    result: SyncResult | None = None
    error: str | None = None


class MonitoredTaskMixin:
    """Journal, alerts, retained-WAL watchdog and report, shared by the migration operators and sensors."""

    operator_extra_links: Collection[BaseOperatorLink] = (MigrationReportLink(),)
    #: Record one journal event per task try (sensors record their pokes instead).
    journal_task_steps: ClassVar[bool] = True
    #: The task rewrites the report at most this often (seconds) before its end; its end always rewrites it.
    report_interval: ClassVar[float] = 0.0

    if TYPE_CHECKING:
        task_id: str
        log: Any
        on_failure_callback: Any
        on_retry_callback: Any
        on_skipped_callback: Any

        @property
        def migration(self) -> MigrationConfig: ...

        @property
        def source_info(self) -> ConnectionInfo: ...

        @property
        def destination_info(self) -> ConnectionInfo: ...

    def add_monitoring_callbacks(self) -> None:
        """Record failed, retried and skipped tries too (called from ``__init__``)."""
        self.on_failure_callback = [*self.on_failure_callback, RecordOutcome("failed")]
        self.on_retry_callback = [*self.on_retry_callback, RecordOutcome("up_for_retry")]
        self.on_skipped_callback = [*self.on_skipped_callback, RecordOutcome("skipped")]

    # -- journal ------------------------------------------------------------------------------------------------

    def known_secrets(self) -> list[str | None]:
        from airflow_pgmigrate.notifications.migration import known_passwords

        return known_passwords(self)

    def with_journal(self, what: str, action: Callable[[psycopg.Connection, Journal, MigrationState], T]) -> T | None:
        """Run ``action`` on one destination connection; log (never raise) when that is impossible."""
        if self.__dict__.get("_journal_unreachable"):
            return None
        try:
            config = self.migration
            info = self.destination_info
            quick = replace(info, params={**info.params, "connect_timeout": str(JOURNAL_CONNECT_TIMEOUT)})
            journal = self.__dict__.get("_journal")
            if journal is None:  # one per task: its tables are created once
                journal = self.__dict__["_journal"] = Journal(config.state_schema, config.name)
            with connect(quick) as conn:
                return action(conn, journal, MigrationState(info, config.state_schema, config.name))
        except Exception as exc:  # noqa: BLE001 - bookkeeping never fails the migration
            if isinstance(exc, ConnectFailed):
                self.__dict__["_journal_unreachable"] = True  # wait for it once per task, not at every call
            self.log.warning("migration journal: cannot record %s: %s", what,
                             _error_text(str(exc), self.known_secrets()))
            return None

    def pre_execute(self, context: Any) -> None:
        if self.journal_task_steps:
            self.with_journal("the start of the step", lambda conn, journal, _: journal.start_step(
                conn, run_id=context.get("run_id"), step=self.task_id, detail={"try_number": _try_number(context)}))

    def post_execute(self, context: Any, result: Any = None) -> None:
        self.record_outcome(context, "success")

    def record_outcome(self, context: Any, outcome: str) -> None:
        """Close the step's journal event with how the try ended, and rewrite the report."""
        detail = {"try_number": _try_number(context),
                  "error": _error_text(context.get("exception"), self.known_secrets())}
        self.with_journal(f"the end of the step ({outcome})", lambda conn, journal, _: journal.finish_step(
            conn, run_id=context.get("run_id"), step=self.task_id, outcome=outcome, detail=detail))
        self.refresh_report(force=True)

    def record_poke(self, context: Any, poke: PokeRecord) -> None:
        """Journal a poke that did not get to apply anything (a server unreachable, an error)."""
        detail = {"error": _error_text(poke.error, self.known_secrets())}
        self.with_journal("the poke", lambda conn, journal, _: journal.add_event(
            conn, run_id=context.get("run_id"), step=self.task_id, kind="poke", started_at=poke.started_at,
            finished_at=datetime.now(UTC), outcome=poke.outcome, detail=detail))

    # -- report -------------------------------------------------------------------------------------------------

    def refresh_report(self, *, force: bool = False) -> None:
        """Rewrite the migration's HTML report (at most every ``report_interval`` seconds unless ``force``)."""
        from airflow_pgmigrate.engine.report import report_path, write_report

        try:
            config = self.migration
            if not config.report.enabled:
                return
            path = report_path(config)
            if not force and self.report_interval and path.exists() and \
                    time.time() - path.stat().st_mtime < self.report_interval:
                return
            if self.__dict__.get("_journal_unreachable"):
                return
            info = self.destination_info
            quick = replace(info, params={**info.params, "connect_timeout": str(JOURNAL_CONNECT_TIMEOUT)})
            written = write_report(config, quick, secrets=self.known_secrets())
        except Exception as exc:  # noqa: BLE001 - the report never fails the migration
            self.log.warning("migration report not written: %s", _error_text(str(exc), self.known_secrets()))
            return
        self.log.info("migration report written path=%s", written)

    # -- watchdog and alerts ------------------------------------------------------------------------------------

    def send_alerts(self, context: Any, alerts: list[Alert]) -> None:
        from airflow_pgmigrate.notifications.migration import send_alert

        for alert in alerts:
            send_alert(self.migration, alert.to_dict(), context, self.log)

    def observe(self, context: Any, *, kind: str, poke: PokeRecord | None = None,
                defer_stop: bool = False) -> WalVerdict | None:
        """After a poke or a full-load step: lag and retained-WAL checks, journal sample and event, alerts.

        A watchdog stop fails the task here (:meth:`safe_stop`), or with ``defer_stop`` raises
        :class:`RetainedWalStop` for the caller to stop its step first.
        """
        config = self.migration
        retention: WalRetention | None = None
        if config.wants("incremental"):
            try:
                retention = read_retention(config.slot_name, self.source_info)
            except Exception as exc:  # noqa: BLE001 - the next check tries again
                self.log.warning("watchdog: cannot read the slot's retained WAL on the source: %s",
                                 _error_text(str(exc), self.known_secrets()))
        result = poke.result if poke is not None else None
        if retention is None and result is None and poke is None:
            return None

        def work(conn: psycopg.Connection, journal: Journal, state: MigrationState) -> tuple[WalVerdict | None,
                                                                                              list[Alert]]:
            if not self.__dict__.get("_state_ready"):
                state.ensure(conn)
                self.__dict__["_state_ready"] = True
            watch = Watch(config, state.read(conn, WATCH_KEY) or {})
            found = watch.lag(result.lag_bytes, result.lag_seconds) if result is not None else []
            verdict = None
            if retention is not None:
                verdict, wal_alerts = watch.wal(retention)
                found += wal_alerts
            state.write(conn, WATCH_KEY, watch.state)
            retained = retention.retained_bytes if retention is not None and retention.exists else None
            if poke is not None:
                detail: dict[str, Any] = {"retained_wal_bytes": retained}
                if result is not None:
                    detail.update(transactions=result.transactions, changes=result.changes,
                                  lag_bytes=result.lag_bytes, lag_seconds=result.lag_seconds,
                                  caught_up=result.caught_up, applied_lsn=result.applied_lsn)
                journal.add_event(conn, run_id=context.get("run_id"), step=self.task_id, kind="poke",
                                  started_at=poke.started_at, finished_at=datetime.now(UTC),
                                  outcome="stopped" if verdict is not None and verdict.stop else poke.outcome,
                                  detail=detail)
            if retained is None and result is None:
                return verdict, found
            journal.add_sample(
                conn, kind=kind, retained_wal_bytes=retained,
                lag_bytes=result.lag_bytes if result is not None else None,
                lag_seconds=result.lag_seconds if result is not None else None,
                changes_per_second=result.changes / result.seconds if result is not None and result.seconds else None,
                detail={"task_id": self.task_id})
            return verdict, found

        recorded = self.with_journal("the progress sample", work)
        if recorded is None:  # no destination: judge the source's figures alone, with no alert state
            verdict, alerts = Watch(config).wal(retention) if retention is not None else (None, [])
            alerts = [a for a in alerts if a.kind in ("retained_wal_stop", "slot_lost")]
        else:
            verdict, alerts = recorded
        if verdict is not None and verdict.level != "missing":
            level = "warning" if verdict.level in ("warn", "stop", "lost") else "info"
            getattr(self.log, level)("%s", verdict.message)
            self._gauge("pgmigrate.watchdog.retained_wal_bytes", verdict.retention.retained_bytes, config.name)
        if verdict is not None and verdict.stop:
            if defer_stop:
                raise RetainedWalStop(verdict, alerts)
            self.safe_stop(context, verdict, alerts)
        self.send_alerts(context, alerts)
        return verdict

    def safe_stop(self, context: Any, verdict: WalVerdict, alerts: list[Alert]) -> NoReturn:
        """Stop the migration before the source disk fills: drop the slot if configured, alert, fail the task."""
        from airflow.sdk.exceptions import AirflowFailException

        from airflow_pgmigrate.engine.incremental import release

        config = self.migration
        dropped = False
        if config.incremental.drop_slot_on_stop:
            try:
                dropped = release(config, self.source_info, log=lambda message: self.log.info("%s", message))["slot"]
            except Exception as exc:  # noqa: BLE001 - the failure below still stops the migration
                self.log.error("watchdog: could not drop slot %s: %s", config.slot_name,
                               _error_text(str(exc), self.known_secrets()))
        for alert in alerts:
            if alert.kind in ("retained_wal_stop", "slot_lost"):
                alert.details["slot_dropped"] = dropped
                if dropped:
                    alert.message += "; the slot was dropped (incremental.drop_slot_on_stop)"
        self.send_alerts(context, alerts)
        message = stop_message(config, verdict, dropped=dropped)
        self.log.error("%s", message)
        raise AirflowFailException(message)

    @staticmethod
    def _gauge(name: str, value: float | None, migration: str) -> None:
        if value is None:
            return
        try:
            from airflow.sdk.observability.stats import Stats
        except ImportError:  # pragma: no cover - older task SDK
            return
        Stats.gauge(name, value, tags={"migration": migration})


class CopyWatch:
    """The retained-WAL watchdog during the full load: checks between copied chunks (at most every ``interval``
    seconds), through the full load's progress callback. A stop raises :class:`RetainedWalStop` out of the copy."""

    def __init__(self, task: MonitoredTaskMixin, context: Any, interval: float) -> None:
        self.task = task
        self.context = context
        self.interval = interval
        self._lock = threading.Lock()
        self._last = 0.0
        self._stopped = False

    def check(self, *, force: bool = False) -> None:
        with self._lock:
            if self._stopped or (not force and time.monotonic() - self._last < self.interval):
                return
            self._last = time.monotonic()
            try:
                self.task.observe(self.context, kind="full_load", defer_stop=True)
            except RetainedWalStop:
                self._stopped = True
                raise


__all__ = ["CopyWatch", "JOURNAL_CONNECT_TIMEOUT", "MonitoredTaskMixin", "PokeRecord", "RecordOutcome"]
