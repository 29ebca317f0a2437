"""StartIncrementalOperator: the start of incremental sync when no full load creates the slot."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import Context

from airflow_pgmigrate.engine.start import start_incremental
from airflow_pgmigrate.operators.base import MigrationBaseOperator


class StartIncrementalOperator(MigrationBaseOperator):
    """Create the publication and the replication slot, and record the LSN where incremental sync starts, for a
    destination loaded by other means (migration types without ``full``). Idempotent."""

    template_fields: Sequence[str] = ("config",)
    ui_color = "#e8daef"

    def execute(self, context: Context) -> dict[str, Any]:
        self.skip_unless_wanted("incremental")
        if self.migration.wants("full"):
            from airflow.sdk.exceptions import AirflowSkipException

            raise AirflowSkipException("the full load creates the slot and records where incremental sync starts")
        return start_incremental(self.migration, self.source_info, self.destination_info,
                                 log=lambda message: self.log.info("%s", message))


__all__ = ["StartIncrementalOperator"]
