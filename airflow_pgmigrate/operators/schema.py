"""SchemaMigrateOperator: object definitions, in the DTS order (pre_data before the full load, post_data after)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import Context

from airflow_pgmigrate.engine.schema import PHASES, SchemaMigrationError, migrate_schema
from airflow_pgmigrate.engine.state import MigrationState
from airflow_pgmigrate.operators.base import MigrationBaseOperator


class SchemaMigrateOperator(MigrationBaseOperator):
    """Migrate object definitions from the source to the destination, one phase per task.

    ``pre_data``: schemas, extensions, types, domains, sequences, tables, views, functions, rules and comments, in one
    destination transaction. ``post_data``: primary keys, unique and exclusion constraints and indexes built in
    parallel, then triggers, foreign keys and the rest; materialized views refreshed. Re-running a phase changes
    nothing. The report (created per type, skipped and why, differing objects, objects to review) is the XCom value.

    :param config: the migration (MigrationConfig, dict or YAML path).
    :param phase: ``pre_data`` or ``post_data``.
    """

    template_fields: Sequence[str] = ("config", "phase")
    ui_color = "#d5f5e3"

    def __init__(self, *, phase: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.phase = phase

    def execute(self, context: Context) -> dict[str, Any]:
        if self.phase not in PHASES:
            raise SchemaMigrationError(f"phase must be one of {', '.join(PHASES)}, got {self.phase!r}")
        self.skip_unless_wanted("schema")
        config = self.migration
        state = MigrationState(self.destination_info, config.state_schema, config.name)
        try:
            report = migrate_schema(config, self.source_info, self.destination_info, self.phase, state=state,
                                    log=lambda message: self.log.info("%s", message))
        except SchemaMigrationError as exc:
            if exc.report:
                context["ti"].xcom_push(key="schema_report", value=exc.report)
            raise
        data = report.to_dict()
        for item in data["differing"]:
            self.log.warning("schema differs object=%s (kept as it is in the destination)", item["object"])
        for item in data["review"]:
            self.log.warning("schema review object=%s reason=%s", item["object"], item["reason"])
        return data


__all__ = ["SchemaMigrateOperator"]
