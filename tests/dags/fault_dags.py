"""DAGs for the fault tests: the incremental sync sensor alone, with short retry windows."""

from __future__ import annotations

from airflow.sdk import DAG

from airflow_pgmigrate.config import MigrationConfig
from airflow_pgmigrate.sensors.incremental import IncrementalSyncSensor


def _sync_only(name: str, retry: dict[str, float]) -> DAG:
    config = MigrationConfig.from_dict({"name": name, "source": {"conn_id": "pgm_source"},
                                        "destination": {"conn_id": "pgm_destination"}, "retry": retry})
    with DAG(dag_id=config.dag_id, schedule=None, catchup=False) as dag:
        IncrementalSyncSensor(task_id="incremental_sync", config=config.to_dict(), retries=3, poke_interval=0.5,
                              window_seconds=2)
    return dag


#: Windows long enough to ride out a short failure.
ride_out = _sync_only("hf_ride_out", {"connection_failures_minutes": 0.5, "other_errors_minutes": 0.25})
#: Windows short enough to give up within seconds.
give_up = _sync_only("hf_give_up", {"connection_failures_minutes": 0.1, "other_errors_minutes": 0.05})
