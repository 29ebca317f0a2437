"""What every migration task shares: the ``config=`` argument, loaded and validated at run time, and hooks."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

from airflow.sdk import BaseOperator

from airflow_pgmigrate.config import MigrationConfig, load_config
from airflow_pgmigrate.engine.connection import ConnectionInfo
from airflow_pgmigrate.hooks.postgres import PostgresEndpointHook
from airflow_pgmigrate.operators.monitoring import MonitoredTaskMixin

ConfigArg = MigrationConfig | Mapping[str, Any] | str | Path


class MigrationTaskMixin(MonitoredTaskMixin):
    """The migration config (validated lazily, at run time) and the two endpoints' hooks, built on first use; the
    journal, alerts, watchdog and report of :class:`MonitoredTaskMixin`."""

    config: ConfigArg

    @cached_property
    def migration(self) -> MigrationConfig:
        """The validated migration config (raises ConfigError naming every bad field)."""
        return load_config(self.config)

    @cached_property
    def source_hook(self) -> PostgresEndpointHook:
        endpoint = self.migration.source
        return PostgresEndpointHook(postgres_conn_id=endpoint.conn_id, database=endpoint.database)

    @cached_property
    def destination_hook(self) -> PostgresEndpointHook:
        endpoint = self.migration.destination
        return PostgresEndpointHook(postgres_conn_id=endpoint.conn_id, database=endpoint.database)

    @property
    def source_info(self) -> ConnectionInfo:
        return self.source_hook.connection_info

    @property
    def destination_info(self) -> ConnectionInfo:
        return self.destination_hook.connection_info

    def skip_unless_wanted(self, migration_type: str) -> None:
        """Skip this task when the migration does not include ``migration_type`` (configs given at run time)."""
        if not self.migration.wants(migration_type):
            from airflow.sdk.exceptions import AirflowSkipException

            raise AirflowSkipException(f"migration {self.migration.name} does not include {migration_type} "
                                       "migration")


class MigrationBaseOperator(MigrationTaskMixin, BaseOperator):
    """Base of the migration operators.

    :param config: the migration: a MigrationConfig, a dict (for example ``"{{ params.config }}"`` with
        ``render_template_as_native_obj=True``) or the path of a YAML file. Stored as given and validated when the
        task runs, so parsing the DAG does no I/O.
    """

    template_fields: Sequence[str] = ("config",)
    ui_color = "#d4e6f1"

    def __init__(self, *, config: ConfigArg, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.config = config
        self.add_monitoring_callbacks()


__all__ = ["ConfigArg", "MigrationBaseOperator", "MigrationTaskMixin"]
