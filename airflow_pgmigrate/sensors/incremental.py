"""IncrementalSyncSensor: keep the destination in sync and succeed once incremental sync is "not delayed"."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import psycopg
from airflow.sdk import BaseSensorOperator, Context, PokeReturnValue
from airflow.sdk.exceptions import AirflowFailException

from airflow_pgmigrate.config import parse_size
from airflow_pgmigrate.engine.failures import failure_kind
from airflow_pgmigrate.engine.incremental import run_incremental
from airflow_pgmigrate.exceptions import PgMigrateError
from airflow_pgmigrate.operators.base import ConfigArg, MigrationTaskMixin
from airflow_pgmigrate.operators.monitoring import PokeRecord
from airflow_pgmigrate.sensors.retry_window import RetryWindow


class IncrementalSyncSensor(MigrationTaskMixin, BaseSensorOperator):
    """Stream the slot and apply changes for a bounded window per poke; done when the lag is under the thresholds.

    Each poke applies for at most ``window_seconds`` (or until caught up), reports the lag (bytes and seconds) in
    the log, as ``Stats`` gauges and in XCom, then gives the worker slot back (reschedule mode). The sensor succeeds
    when incremental sync is "not delayed": lag under ``incremental.max_lag_seconds`` and ``max_lag_bytes``.

    Failures (see ``engine/failures.py``): a server that cannot be reached makes the poke return "not yet" for up to
    ``retry.connection_failures_minutes`` since the first failure of the streak; another error that can pass (a
    statement timeout, a full or read-only destination, another applier) for up to ``retry.other_errors_minutes``.
    Past the window, or at once for an error that retrying cannot fix (the slot is gone, DDL on the source), the task
    fails without Airflow retries, with a message that says what to do. Nothing is lost either way: the slot stays
    on the source and the applied position in the destination.

    After each poke: lag alerts (``alerts``), the retained-WAL watchdog (``incremental.retained_wal_*``, which may
    stop the migration safely), a journal event and sample, and the report (see docs/monitoring.md).

    :param config: the migration (MigrationConfig, dict or YAML path).
    :param window_seconds: the longest a poke streams and applies.
    """

    template_fields: Sequence[str] = ("config",)
    ui_color = "#e8daef"
    journal_task_steps: ClassVar[bool] = False  # each poke is journaled instead
    report_interval: ClassVar[float] = 30.0

    def __init__(self, *, config: ConfigArg, window_seconds: float = 60.0, mode: str = "reschedule",
                 poke_interval: float = 5.0, timeout: float = timedelta(days=7).total_seconds(),
                 **kwargs: Any) -> None:
        super().__init__(mode=mode, poke_interval=poke_interval, timeout=timeout, **kwargs)
        self.config = config
        self.window_seconds = window_seconds
        self.add_monitoring_callbacks()

    def poke(self, context: Context) -> PokeReturnValue:
        self.skip_unless_wanted("incremental")
        config = self.migration
        window = RetryWindow.of(context)
        started = datetime.now(UTC)
        try:
            result = run_incremental(config, self.source_info, self.destination_info,
                                     window_seconds=self.window_seconds,
                                     log=lambda message: self.log.info("%s", message))
        except (PgMigrateError, psycopg.Error) as exc:
            outcome = "unreachable" if failure_kind(exc) == "connection" else "failed"
            self.record_poke(context, PokeRecord(started, outcome, error=str(exc)))
            return self.retry_or_fail(exc, window)
        window.reset()
        max_bytes = parse_size(config.incremental.max_lag_bytes)
        not_delayed = result.lag_bytes <= max_bytes and result.lag_seconds <= config.incremental.max_lag_seconds
        data = {**result.to_dict(), "not_delayed": not_delayed}
        self.log.info("incremental lag_bytes=%d lag_s=%.1f applied_lsn=%s not_delayed=%s", result.lag_bytes,
                      result.lag_seconds, result.applied_lsn, not_delayed)
        self._metrics(config.name, data)
        self.observe(context, kind="incremental",
                     poke=PokeRecord(started, "not_delayed" if not_delayed else "delayed", result))
        self.refresh_report(force=not_delayed)
        return PokeReturnValue(is_done=not_delayed, xcom_value=data)

    def retry_or_fail(self, exc: BaseException, window: RetryWindow) -> PokeReturnValue:
        """"Not yet" while the failure's retry window lasts; fail the task (no Airflow retry) after it, or at once
        when retrying cannot help."""
        config = self.migration
        kind = failure_kind(exc)
        keep = (f"Nothing is lost: the slot {config.slot_name} stays on the source (it retains WAL meanwhile: watch "
                "the source's disk) and the applied position in the destination; once the cause is fixed, clear this "
                "task and sync resumes where it stopped (or run the release to abandon the migration)")
        if kind == "permanent":
            window.reset()
            raise AirflowFailException(f"incremental sync stopped; retrying cannot fix this: {exc}. {keep}") from None
        field = "connection_failures_minutes" if kind == "connection" else "other_errors_minutes"
        minutes = float(getattr(config.retry, field))
        now = datetime.now(UTC)
        failing = (now - window.started(kind, now)).total_seconds()
        what = "a server cannot be reached" if kind == "connection" else "an error that can pass"
        if failing >= minutes * 60:
            window.reset()
            raise AirflowFailException(
                f"incremental sync gave up: {what} for {failing:.0f} s, longer than retry.{field} ({minutes:g} min). "
                f"Last error: {exc}. {keep}") from None
        self.log.warning("incremental sync: %s (%s); failing for %.0f s of the %g min allowed by retry.%s; trying "
                         "again at the next poke", what, exc, failing, minutes, field)
        return PokeReturnValue(is_done=False)

    @staticmethod
    def _metrics(name: str, data: dict[str, Any]) -> None:
        try:
            from airflow.sdk.observability.stats import Stats
        except ImportError:  # pragma: no cover - older task SDK
            return
        tags = {"migration": name}
        Stats.gauge("pgmigrate.incremental.lag_bytes", data["lag_bytes"], tags=tags)
        Stats.gauge("pgmigrate.incremental.lag_seconds", data["lag_seconds"], tags=tags)
        Stats.incr("pgmigrate.incremental.transactions", data["transactions"], tags=tags)
        Stats.incr("pgmigrate.incremental.changes", data["changes"], tags=tags)


__all__ = ["IncrementalSyncSensor"]
