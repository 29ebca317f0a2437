"""PrecheckOperator: the first step of a migration, every check that applies, one report."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import Context
from airflow.sdk.exceptions import AirflowFailException

from airflow_pgmigrate.engine.precheck import run_precheck
from airflow_pgmigrate.engine.state import MigrationState
from airflow_pgmigrate.exceptions import PrecheckFailed
from airflow_pgmigrate.operators.base import MigrationBaseOperator

#: Items whose failure may pass by itself: a retry of the task can help.
TRANSIENT_ITEMS = frozenset({"source_connection", "destination_connection"})


class PrecheckOperator(MigrationBaseOperator):
    """Check both databases (and Amazon RDS, when configured) before a migration starts.

    Runs every item that applies to the migration types, logs the report as a table, returns it (XCom
    ``return_value``) and fails with ONE error listing every failed item with its fix. Warnings do not fail the task
    unless ``fail_on_warning``. A failure that only concerns connectivity is retried like any error; any other
    failure is final (retrying cannot fix a missing primary key).

    :param config: the migration (MigrationConfig, dict or YAML path).
    :param skip_checks: item names to skip, added to ``precheck.skip`` of the config.
    :param fail_on_warning: fail on warnings too; None takes ``precheck.fail_on_warning`` from the config.
    """

    template_fields: Sequence[str] = ("config", "skip_checks")
    ui_color = "#fcf3cf"

    def __init__(self, *, skip_checks: Sequence[str] = (), fail_on_warning: bool | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.skip_checks = skip_checks
        self.fail_on_warning = fail_on_warning

    def execute(self, context: Context) -> dict[str, Any]:
        config = self.migration
        rds = None
        if config.rds is not None:
            from airflow_pgmigrate.engine.rds import RdsInspector
            from airflow_pgmigrate.hooks.rds import rds_client_factory

            rds = RdsInspector(client_factory=rds_client_factory(config.rds))
        from airflow_pgmigrate.engine.rds_ledger import IngressLedger

        ledger = IngressLedger(MigrationState(self.destination_info, config.state_schema, config.name))
        self.log.info("precheck migration=%s types=%s source=%s destination=%s", config.name,
                      ",".join(config.migration_types), self.source_info.describe(), self.destination_info.describe())
        report = run_precheck(config, self.source_info, self.destination_info, rds=rds, skip=list(self.skip_checks),
                              record_rules=ledger.add)
        self.log.info("precheck report\n%s", report.format_table())
        self._emit_metrics(report.to_dict())
        result = report.to_dict()
        fail_on_warning = config.precheck.fail_on_warning if self.fail_on_warning is None else self.fail_on_warning
        bad = report.failures + (report.warnings if fail_on_warning else [])
        if not bad:
            return result
        context["ti"].xcom_push(key="precheck_report", value=result)
        lines = [f"precheck failed for migration {config.name}: {len(bad)} item(s) to fix"]
        lines += [f"- {r.name} [{r.status}]: {r.detail}" + (f"\n    fix: {r.fix}" if r.fix else "") for r in bad]
        message = "\n".join(lines)
        if {r.name for r in bad} <= TRANSIENT_ITEMS:
            raise PrecheckFailed(message, result)
        raise AirflowFailException(message)

    @staticmethod
    def _emit_metrics(report: dict[str, Any]) -> None:
        try:
            from airflow.sdk.observability.stats import Stats
        except ImportError:  # pragma: no cover - older task SDK
            return
        for status, count in report["counts"].items():
            Stats.gauge(f"pgmigrate.precheck.{status}", count, tags={"migration": report["migration"]})


__all__ = ["PrecheckOperator"]
