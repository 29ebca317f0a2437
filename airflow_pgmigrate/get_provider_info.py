"""Provider metadata read by Airflow's provider discovery. Imports nothing from Airflow."""

from __future__ import annotations

from typing import Any

from airflow_pgmigrate import __version__


def get_provider_info() -> dict[str, Any]:
    return {
        "package-name": "airflow-pgmigrate",
        "name": "PostgreSQL migration",
        "description": "Move a live PostgreSQL database to another PostgreSQL with minimal downtime: precheck, "
        "schema, consistent full load, incremental sync over logical replication, verification and cutover.",
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": "PgMigrate",
                "tags": ["software"],
            }
        ],
        "operators": [
            {
                "integration-name": "PgMigrate",
                "python-modules": [
                    "airflow_pgmigrate.operators.base",
                    "airflow_pgmigrate.operators.cutover",
                    "airflow_pgmigrate.operators.cutover_question",
                    "airflow_pgmigrate.operators.full_load",
                    "airflow_pgmigrate.operators.precheck",
                    "airflow_pgmigrate.operators.rds",
                    "airflow_pgmigrate.operators.schema",
                    "airflow_pgmigrate.operators.start",
                    "airflow_pgmigrate.operators.verify",
                ],
            }
        ],
        "sensors": [
            {"integration-name": "PgMigrate", "python-modules": ["airflow_pgmigrate.sensors.incremental",
                                                                  "airflow_pgmigrate.sensors.cutover_wait"]},
        ],
        "hooks": [
            {
                "integration-name": "PgMigrate",
                "python-modules": ["airflow_pgmigrate.hooks.postgres", "airflow_pgmigrate.hooks.rds"],
            }
        ],
        "extra-links": ["airflow_pgmigrate.links.MigrationReportLink"],
        "notifications": [
            "airflow_pgmigrate.notifications.migration.AlertFileNotifier",
            "airflow_pgmigrate.notifications.migration.AlertLogNotifier",
            "airflow_pgmigrate.notifications.migration.MigrationAlertNotifier",
        ],
        "config": {
            "pgmigrate": {
                "description": "Settings of the airflow-pgmigrate provider.",
                "options": {
                    "config_folder": {
                        "description": "Folder of migration config files (*.yaml); the DAG template in dags/ turns "
                        "each into one DAG. Empty: the 'migrations' folder beside the DAG file.",
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": "/opt/airflow/migrations",
                        "default": "",
                    }
                },
            }
        },
    }


__all__ = ["get_provider_info"]
