"""DAGs for the security tests: a whole migration run by least-privilege accounts over their own connections."""

from __future__ import annotations

from airflow_pgmigrate.config import MigrationConfig
from airflow_pgmigrate.templates.migration_dag import build_migration_dag

#: The publication the owner of the source tables creates beforehand (the source account may not create it).
OWNER_PUBLICATION = "pgm_owner_pub"

least_privilege = build_migration_dag(
    MigrationConfig.from_dict(
        {
            "name": "it_secure",
            "source": {"conn_id": "pgm_sec_source"},
            "destination": {"conn_id": "pgm_sec_destination"},
            "incremental": {"publication": OWNER_PUBLICATION},
            # A source account that does not own the database cannot freeze it: a person's approval is the word
            # that writes stopped (the test stops its writes, then answers the cutover question).
            "cutover": {"approval": "manual", "freeze_source": False, "sequence_offset": 5},
        }
    )
)

for _task in least_privilege.tasks:
    if hasattr(_task, "window_seconds"):
        _task.poke_interval = 0.5
        _task.window_seconds = 3
        _task.mode = "reschedule"  # dag.test() runs one task at a time (see migration_dags.py)
