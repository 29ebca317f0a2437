"""FullLoadOperator: the consistent, parallel, resumable copy of the selected tables."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import Context

from airflow_pgmigrate.engine.full_load import run_full_load
from airflow_pgmigrate.engine.watchdog import RetainedWalStop
from airflow_pgmigrate.operators.base import MigrationBaseOperator
from airflow_pgmigrate.operators.monitoring import CopyWatch


class FullLoadOperator(MigrationBaseOperator):
    """Copy every selected table from the source to the destination, between the schema pre_data and post_data.

    With incremental migration it creates the publication and the replication slot first and copies inside the
    slot's exported snapshot, so that incremental sync continues exactly where the copy ends. Retries resume:
    committed chunks are not copied again. Returns a summary (rows, bytes, MB/s, consistent LSN, per table).

    :param config: the migration (MigrationConfig, dict or YAML path).
    :param parallel_jobs: copy workers; None takes ``full_load.parallel_jobs`` from the config.
    :param watchdog_interval: seconds between two retained-WAL checks while copying (nothing consumes the slot
        during the full load; above ``incremental.retained_wal_stop`` the load stops safely, docs/monitoring.md).
    """

    template_fields: Sequence[str] = ("config",)
    ui_color = "#fdebd0"

    def __init__(self, *, parallel_jobs: int | None = None, watchdog_interval: float = 10.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.parallel_jobs = parallel_jobs
        self.watchdog_interval = watchdog_interval

    def execute(self, context: Context) -> dict[str, Any]:
        self.skip_unless_wanted("full")
        watch = CopyWatch(self, context, self.watchdog_interval)

        def metric(name: str, value: float, tags: dict[str, str]) -> None:
            self._metric(name, value, tags)
            watch.check()  # between chunks: nothing consumes the slot while the copy runs

        try:
            watch.check(force=True)  # a slot left by an earlier attempt may hold WAL already
            report = run_full_load(self.migration, self.source_info, self.destination_info, jobs=self.parallel_jobs,
                                   log=lambda message: self.log.info("%s", message), metric=metric)
            watch.check(force=True)
        except RetainedWalStop as stop:
            self.safe_stop(context, stop.verdict, stop.alerts)
        summary = {k: v for k, v in report.items() if k != "plan"}
        return summary

    @staticmethod
    def _metric(name: str, value: float, tags: dict[str, str]) -> None:
        try:
            from airflow.sdk.observability.stats import Stats
        except ImportError:  # pragma: no cover - older task SDK
            return
        Stats.incr(name, int(value), tags=tags)


__all__ = ["FullLoadOperator"]
