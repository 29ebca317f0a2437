"""DAGs for the integration tests: the migration template over connections the test rig points at fresh databases."""

from __future__ import annotations

from datetime import timedelta

from airflow_pgmigrate.config import MigrationConfig
from airflow_pgmigrate.templates.migration_dag import build_migration_dag

precheck_only = build_migration_dag(
    MigrationConfig.from_dict(
        {"name": "it_precheck", "source": {"conn_id": "pgm_source"}, "destination": {"conn_id": "pgm_destination"},
         "cutover": {"approval": "automatic", "freeze_source": True}}
    )
)

precheck_with_rds = build_migration_dag(
    MigrationConfig.from_dict(
        {
            "name": "it_precheck_rds",
            "source": {"conn_id": "pgm_source"},
            "destination": {"conn_id": "pgm_destination"},
            "rds": {"db_instance_identifier": "shop-prod", "region": "us-east-1",
                    "worker_cidrs": ["203.0.113.0/24"], "manage_security_group": True},
            "migration_types": ["schema", "full"],
        }
    )
)

schema_only = build_migration_dag(
    MigrationConfig.from_dict(
        {
            "name": "it_schema",
            "source": {"conn_id": "pgm_source"},
            "destination": {"conn_id": "pgm_destination"},
            "migration_types": ["schema"],
            "mapping": {"tables": {"public.orders": "orders_v2"}, "columns": {"public.orders": {"amount": "total"}}},
        }
    )
)

whole_migration = build_migration_dag(
    MigrationConfig.from_dict(
        {
            "name": "it_whole",
            "source": {"conn_id": "pgm_source"},
            "destination": {"conn_id": "pgm_destination"},
            "mapping": {"tables": {"public.orders": "orders_v2"}},
            "cutover": {"approval": "automatic", "freeze_source": True},
        }
    )
)


def _fast(dag):
    """Short pokes for tests. dag.test() runs one task at a time in one thread: a poke-mode wait beside the cutover
    question would never let the answered question resume, so there the waits reschedule (the real scheduler runs
    them in poke mode: tests/real_airflow)."""
    for task in dag.tasks:
        if hasattr(task, "window_seconds"):
            task.poke_interval = 0.5
            task.window_seconds = 3
            task.mode = "reschedule"
        if task.task_id == "cutover_question":
            task.retry_delay = timedelta(seconds=0.5)
    return dag


cutover_automatic = _fast(build_migration_dag(
    MigrationConfig.from_dict(
        {
            "name": "it_cut_auto",
            "source": {"conn_id": "pgm_source"},
            "destination": {"conn_id": "pgm_destination"},
            "cutover": {"approval": "automatic", "freeze_source": True, "sequence_offset": 10},
        }
    )
))

cutover_manual = _fast(build_migration_dag(
    MigrationConfig.from_dict(
        {
            "name": "it_cut_manual",
            "source": {"conn_id": "pgm_source"},
            "destination": {"conn_id": "pgm_destination"},
            "cutover": {"approval": "manual", "freeze_source": True},
        }
    )
))

# The sync beside the question fails (DDL on the source); the person then answers Abort.
cutover_manual_sync_fails = _fast(build_migration_dag(
    MigrationConfig.from_dict(
        {
            "name": "it_cut_sync_fails",
            "source": {"conn_id": "pgm_source"},
            "destination": {"conn_id": "pgm_destination"},
            "cutover": {"approval": "manual"},
        }
    )
))

rds_abort = _fast(build_migration_dag(
    MigrationConfig.from_dict(
        {
            "name": "it_rds_abort",
            "source": {"conn_id": "pgm_source"},
            "destination": {"conn_id": "pgm_destination"},
            "rds": {"db_instance_identifier": "shop-prod", "region": "us-east-1",
                    "worker_cidrs": ["203.0.113.0/24"], "manage_security_group": True},
            "cutover": {"approval": "manual"},
        }
    )
))

for _dag in (precheck_only, precheck_with_rds, schema_only, whole_migration):
    _fast(_dag)
