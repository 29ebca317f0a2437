"""DAGs the real-Airflow tests run: the migration template, manual cutover, over connections the test points at
fresh databases (``PGMIGRATE_REAL_MIGRATIONS`` lists the migration names; connections ``<name>_src``/``<name>_dst``).

The waits keep the template's poke mode (this is what the LocalExecutor race concerned); only the windows are short.
"""

from __future__ import annotations

import os
from datetime import timedelta

from airflow_pgmigrate.config import MigrationConfig
from airflow_pgmigrate.templates.migration_dag import build_migration_dag

for _name in filter(None, os.environ.get("PGMIGRATE_REAL_MIGRATIONS", "").split(",")):
    _dag = build_migration_dag(MigrationConfig.from_dict({
        "name": _name,
        "source": {"conn_id": f"{_name}_src"},
        "destination": {"conn_id": f"{_name}_dst"},
        "cutover": {"approval": "manual", "freeze_source": True},
    }))
    for _task in _dag.tasks:
        if hasattr(_task, "window_seconds"):
            _task.window_seconds = 3
            _task.poke_interval = 1
        if _task.task_id == "cutover_question":
            _task.retry_delay = timedelta(seconds=1)
    globals()[_dag.dag_id] = _dag
