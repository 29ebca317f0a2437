"""SyncUntilAnsweredSensor: keep the destination in sync for as long as the cutover question waits.

Why poke mode (one running task holding its worker slot) and not reschedule mode: a reschedule-mode sensor ends its
process after every poke and is queued again; under the LocalExecutor a short poke interval lets the scheduler see
the previous try's "success" while the next one is already queued, and it fails the task ("finished with state
success, but the task instance's state attribute is queued"). A task that keeps running is never in that window.
The slot it holds is busy anyway: it applies changes the whole time. A scheduler restart ends the worker that runs
it; the task is then retried and sync resumes exactly where the destination's applied position says.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import psycopg
from airflow.sdk import Context, PokeReturnValue
from airflow.sdk.exceptions import AirflowFailException

from airflow_pgmigrate.engine.incremental.pgoutput import lsn_to_int
from airflow_pgmigrate.engine.question import (
    WAITING_KEY,
    SourceActivity,
    WaitingFigures,
    decision_key,
    lag_from_slot,
)
from airflow_pgmigrate.engine.state import MigrationState
from airflow_pgmigrate.exceptions import PgMigrateError
from airflow_pgmigrate.sensors.incremental import IncrementalSyncSensor
from airflow_pgmigrate.sensors.retry_window import RetryWindow


class SyncUntilAnsweredSensor(IncrementalSyncSensor):
    """Applies changes in short windows while the cutover question waits; done once Cut over or Abort is recorded
    (by the question task, in the migration state). After each window it records the lag, the apply rate and the
    source's write rate for the question, and every ``verify_every_seconds`` it verifies every table.

    :param verify_every_seconds: how often to verify while waiting (0: never; the cutover always verifies).
    """

    def __init__(self, *, window_seconds: float = 10.0, poke_interval: float = 1.0, mode: str = "poke",
                 verify_every_seconds: float = 600.0, timeout: float = timedelta(days=30).total_seconds(),
                 **kwargs: Any) -> None:
        super().__init__(window_seconds=window_seconds, poke_interval=poke_interval, mode=mode, timeout=timeout,
                         **kwargs)
        self.verify_every_seconds = verify_every_seconds

    def poke(self, context: Context) -> PokeReturnValue:
        config = self.migration
        state = MigrationState(self.destination_info, config.state_schema, config.name)
        key = decision_key(context["run_id"])
        try:
            decision = state.get(key)
        except (PgMigrateError, psycopg.Error) as exc:
            return self.retry_or_fail(exc, RetryWindow.of(context))
        if decision is not None:
            self.log.info("cutover question answered: %s by %s; the next step takes over", decision.get("answer"),
                          decision.get("by"))
            return PokeReturnValue(is_done=True, xcom_value=decision)
        before = self.__dict__.get("_activity")
        if before is None:  # the first window measures the write and apply rates too
            try:
                before = SourceActivity.read(self.source_info)
                start = lag_from_slot(config, self.source_info)
                self.__dict__["_applied_lsn"] = start.applied_lsn if start is not None else None
            except (PgMigrateError, psycopg.Error):
                before = None
        self.__dict__["_in_window"] = True
        try:
            outcome = super().poke(context)
        except AirflowFailException:
            if state.get(key) is not None:
                return PokeReturnValue(is_done=True)  # the answer came meanwhile (an abort released the slot)
            raise
        finally:
            self.__dict__["_in_window"] = False
        if isinstance(outcome.xcom_value, dict):
            self._record(state, outcome.xcom_value, before)
            self._verify_now_and_then(state)
        return PokeReturnValue(is_done=False)

    def refresh_report(self, *, force: bool = False) -> None:
        """While waiting, every window is "not delayed": rewrite the report every ``report_interval`` seconds, not
        after each window; the task's end still rewrites it."""
        super().refresh_report(force=force and not self.__dict__.get("_in_window"))

    def _record(self, state: MigrationState, data: dict[str, Any], before: SourceActivity | None) -> None:
        """Keep what this window measured for the question (best effort: the sync itself went well)."""
        try:
            now = SourceActivity.read(self.source_info)
            self.__dict__["_activity"] = now
            rates = now.rates_since(before) if before is not None else None
            apply_rate = self.__dict__.get("_apply_rate")
            previous_lsn = self.__dict__.get("_applied_lsn")
            seconds = float(data.get("seconds") or 0.0)
            if previous_lsn is not None and seconds >= 0.5:
                advance = lsn_to_int(data["applied_lsn"]) - lsn_to_int(previous_lsn)
                if advance > 0 and int(data.get("transactions") or 0) > 0:
                    apply_rate = max(apply_rate or 0.0, advance / seconds)
            self.__dict__["_apply_rate"] = apply_rate
            self.__dict__["_applied_lsn"] = data["applied_lsn"]
            windows = int(self.__dict__.get("_windows", 0)) + 1
            self.__dict__["_windows"] = windows
            figures = WaitingFigures(lag_bytes=int(data["lag_bytes"]), lag_seconds=float(data["lag_seconds"]),
                                     applied_lsn=str(data["applied_lsn"]), apply_bytes_per_second=apply_rate,
                                     source_wal_bytes_per_second=rates[0] if rates else None,
                                     source_commits_per_second=rates[1] if rates else None, windows=windows)
            state.put(WAITING_KEY, figures.to_dict())
        except (PgMigrateError, psycopg.Error, KeyError, ValueError) as exc:
            self.log.warning("cutover question figures not recorded: %s", exc)

    def _verify_now_and_then(self, state: MigrationState) -> None:
        if not self.verify_every_seconds:
            return
        last = self.__dict__.get("_verified_at")
        if last is None:
            self.__dict__["_verified_at"] = time.monotonic()  # the step before the question has just verified
            return
        if time.monotonic() - last < self.verify_every_seconds:
            return
        from airflow_pgmigrate.engine.verify import verify_migration

        self.__dict__["_verified_at"] = time.monotonic()
        try:
            report = verify_migration(self.migration, self.source_info, self.destination_info,
                                      log=lambda message: self.log.info("%s", message))
        except (PgMigrateError, psycopg.Error) as exc:
            self.log.warning("verification while waiting did not run: %s", exc)
            return
        state.put("verification", report)


__all__ = ["SyncUntilAnsweredSensor"]
