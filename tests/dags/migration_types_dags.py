"""One DAG per migration-type combination DTS offers, for tests/integration/test_migration_types.py."""

from __future__ import annotations

from airflow_pgmigrate.config import MigrationConfig
from airflow_pgmigrate.operators.verify import VerifyOperator
from airflow_pgmigrate.templates.migration_dag import build_migration_dag

COMBINATIONS = {
    "schema": ["schema"],
    "full": ["full"],
    "schema_full": ["schema", "full"],
    "incremental": ["incremental"],
    "schema_incremental": ["schema", "incremental"],
    "full_incremental": ["full", "incremental"],
    "all": ["schema", "full", "incremental"],
}

for _key, _types in COMBINATIONS.items():
    _config = MigrationConfig.from_dict({
        "name": f"it_types_{_key}",
        "source": {"conn_id": "pgm_source"},
        "destination": {"conn_id": "pgm_destination"},
        "migration_types": _types,
        "cutover": {"approval": "automatic", "freeze_source": True},
    })
    _dag = build_migration_dag(_config)
    if _types == ["full"]:  # DTS "data verification" after a full load: no slot involved
        with _dag:
            _verify = VerifyOperator(task_id="verify", config=_config.to_dict())
        _dag.task_dict["full_load"] >> _verify
    for _task in _dag.tasks:
        if hasattr(_task, "window_seconds"):
            _task.poke_interval = 0.5
            _task.window_seconds = 3
            _task.mode = "reschedule"  # dag.test() runs one task at a time (see migration_dags.py)
    globals()[_dag.dag_id] = _dag
