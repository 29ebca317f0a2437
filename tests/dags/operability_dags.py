"""A migration DAG with alerts and a report, for the operability tests: its files go to $PGMIGRATE_TEST_OPS_DIR."""

from __future__ import annotations

import os
import tempfile

from airflow_pgmigrate.config import MigrationConfig
from airflow_pgmigrate.templates.migration_dag import build_migration_dag

_OUT = os.environ.get("PGMIGRATE_TEST_OPS_DIR") or os.path.join(tempfile.gettempdir(), "pgmigrate-test-ops")

operability = build_migration_dag(
    MigrationConfig.from_dict(
        {
            "name": "it_ops",
            "source": {"conn_id": "pgm_source"},
            "destination": {"conn_id": "pgm_destination"},
            "cutover": {"approval": "automatic", "freeze_source": True},
            "alerts": {
                "notifiers": [
                    {"notifier": "tests.hardening.notifiers.BrokenNotifier",
                     "kwargs": {"text": "[{severity}] {message}"}},
                    {"notifier": "file", "kwargs": {"path": os.path.join(_OUT, "alerts.jsonl")}},
                ],
            },
            "report": {"directory": os.path.join(_OUT, "reports")},
        }
    )
)

for _task in operability.tasks:
    if hasattr(_task, "window_seconds"):
        _task.poke_interval = 0.5
        _task.window_seconds = 3
