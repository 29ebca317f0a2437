"""VerifyOperator: DTS "data verification" as a task of its own, consistent while the source keeps writing."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import Context
from airflow.sdk.exceptions import AirflowFailException

from airflow_pgmigrate.engine.state import MigrationState
from airflow_pgmigrate.engine.statistics import analyze_missing
from airflow_pgmigrate.engine.verify import differences, verify_migration
from airflow_pgmigrate.operators.base import MigrationBaseOperator


class VerifyOperator(MigrationBaseOperator):
    """Compare every selected table between source and destination at one consistent point.

    Incremental sync is paused at a snapshot's LSN for the comparison. Returns the report (per table: rows, buckets,
    missing, extra and different keys); also kept in the migration state (key ``verification``).

    :param fail_on_difference: fail the task when a difference is found.
    :param update_statistics: first ANALYZE the migrated tables the destination has no planner statistics for (the
        migration DAG does it here, before the cutover question, so that the cutover need not do it later); the
        result is in the report under ``statistics``.
    """

    template_fields: Sequence[str] = ("config",)
    ui_color = "#d6eaf8"

    def __init__(self, *, fail_on_difference: bool = True, update_statistics: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fail_on_difference = fail_on_difference
        self.update_statistics = update_statistics

    def execute(self, context: Context) -> dict[str, Any]:
        config = self.migration

        def log(message: str) -> None:
            self.log.info("%s", message)

        statistics = analyze_missing(config, self.source_info, self.destination_info, log) \
            if self.update_statistics else None
        report = verify_migration(config, self.source_info, self.destination_info, log=log)
        if statistics is not None:
            report["statistics"] = statistics
        MigrationState(self.destination_info, config.state_schema, config.name).put("verification", report)
        if not report["equal"] and self.fail_on_difference:
            context["ti"].xcom_push(key="verification", value=report)
            raise AirflowFailException(f"verification found {report['differences']} difference(s): "
                                       + "; ".join(differences(report)))
        return report


__all__ = ["VerifyOperator"]
