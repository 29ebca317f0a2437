"""Turn migration configs into DAGs. Pure functions of a validated config: no I/O beyond reading config files."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, Param, chain

from airflow_pgmigrate.config import MigrationConfig
from airflow_pgmigrate.exceptions import ConfigError
from airflow_pgmigrate.operators.full_load import FullLoadOperator
from airflow_pgmigrate.operators.precheck import PrecheckOperator
from airflow_pgmigrate.operators.schema import SchemaMigrateOperator
from airflow_pgmigrate.sensors.incremental import IncrementalSyncSensor

log = logging.getLogger(__name__)

DEFAULT_TAGS = ["pgmigrate"]


def add_migration_tasks(config: MigrationConfig, dag: DAG) -> dict[str, Any]:
    """Add the migration's steps to ``dag`` (task id -> task), in the DTS order, only those its types need:
    precheck -> schema_pre_data -> full_load -> schema_post_data -> incremental_sync."""
    plain = config.to_dict()
    tasks: dict[str, Any] = {}
    with dag:
        tasks["precheck"] = PrecheckOperator(task_id="precheck", config=plain)
        if config.wants("schema"):
            tasks["schema_pre_data"] = SchemaMigrateOperator(task_id="schema_pre_data", config=plain, phase="pre_data")
        if config.wants("full"):
            tasks["full_load"] = FullLoadOperator(task_id="full_load", config=plain, retries=2)
        if config.wants("schema"):
            tasks["schema_post_data"] = SchemaMigrateOperator(task_id="schema_post_data", config=plain,
                                                              phase="post_data")
        if config.wants("incremental"):
            tasks["incremental_sync"] = IncrementalSyncSensor(task_id="incremental_sync", config=plain,
                                                              retries=3)
        chain(*tasks.values())
    return tasks


def build_migration_dag(config: MigrationConfig, **dag_kwargs: Any) -> DAG:
    """One DAG ``pgmigrate_<name>`` for one migration. ``dag_kwargs`` go to ``DAG`` (schedule, tags, ...)."""
    kwargs: dict[str, Any] = {
        "dag_id": config.dag_id,
        "schedule": None,
        "catchup": False,
        "tags": DEFAULT_TAGS,
        "max_active_runs": 1,
        "doc_md": f"Migration **{config.name}**: {', '.join(config.migration_types)} from connection "
        f"`{config.source.conn_id}` to `{config.destination.conn_id}`.",
    }
    kwargs.update(dag_kwargs)
    dag = DAG(**kwargs)
    add_migration_tasks(config, dag)
    return dag


def dags_from_folder(folder: str | Path, **dag_kwargs: Any) -> tuple[dict[str, DAG], dict[str, ConfigError]]:
    """Build one DAG per ``*.yaml``/``*.yml`` file in ``folder``: (dag id -> DAG, file -> its config error)."""
    dags: dict[str, DAG] = {}
    errors: dict[str, ConfigError] = {}
    path = Path(folder)
    if not path.is_dir():
        return dags, errors
    for file in sorted([*path.glob("*.yaml"), *path.glob("*.yml")]):
        try:
            config = MigrationConfig.from_yaml(file)
        except ConfigError as exc:
            errors[str(file)] = exc
            continue
        if config.dag_id in dags:
            errors[str(file)] = ConfigError([], source=f"{file}: migration name {config.name!r} is used twice")
            continue
        dags[config.dag_id] = build_migration_dag(config, **dag_kwargs)
    return dags, errors


def build_adhoc_precheck_dag(dag_id: str = "pgmigrate_adhoc_precheck") -> DAG:
    """A DAG whose trigger form takes a migration config (JSON) and runs the precheck on it."""
    with DAG(
        dag_id=dag_id,
        schedule=None,
        catchup=False,
        tags=DEFAULT_TAGS,
        render_template_as_native_obj=True,
        doc_md="Run the precheck of a migration given in the trigger form (see docs/configuration.md).",
        params={
            "config": Param(
                {"name": "example", "source": {"conn_id": "pgmigrate_source"},
                 "destination": {"conn_id": "pgmigrate_destination"}},
                type="object",
                title="Migration config",
                description="The migration config as JSON: name, source, destination and the optional sections.",
            )
        },
    ) as dag:
        PrecheckOperator(task_id="precheck", config="{{ params.config }}")
    return dag


__all__ = ["add_migration_tasks", "build_adhoc_precheck_dag", "build_migration_dag", "dags_from_folder"]
