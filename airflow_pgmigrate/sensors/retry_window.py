"""The retry windows of a sensor: how long a streak of failures of one kind has lasted, across pokes.

``retry.connection_failures_minutes`` bounds a streak of connection failures, ``retry.other_errors_minutes`` a streak
of other errors that can pass (engine/failures.py says which is which). A poke in reschedule mode is a fresh task
execution, often on another worker, and Airflow clears a task's XComs each time it starts; the source or the
destination may be the server that is down. So the start of each streak is kept in an Airflow Variable (stored by
Airflow's API server, reachable whichever database is down), one per task instance, deleted by the first poke that
succeeds and when the window closes.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

VARIABLE_PREFIX = "pgmigrate.retry"


class RetryWindow:
    """The failure streaks of one sensor task instance (``kind`` -> when the streak began)."""

    def __init__(self, dag_id: str, task_id: str, run_id: str, map_index: int = -1) -> None:
        suffix = f".{map_index}" if map_index >= 0 else ""
        self.key = f"{VARIABLE_PREFIX}.{dag_id}.{task_id}{suffix}.{run_id}"
        self._cache: dict[str, str] | None = None

    @classmethod
    def of(cls, context: Any) -> RetryWindow:
        ti = context["ti"]
        return cls(ti.dag_id, ti.task_id, ti.run_id, getattr(ti, "map_index", -1))

    def _read(self) -> dict[str, str]:
        from airflow.sdk import Variable

        if self._cache is None:
            raw = Variable.get(self.key, default=None)
            self._cache = json.loads(raw) if raw else {}
        return self._cache

    def started(self, kind: str, now: datetime | None = None) -> datetime:
        """When the current streak of ``kind`` failures began; the streak starts now if there was none."""
        from airflow.sdk import Variable

        streaks = self._read()
        if kind not in streaks:
            streaks[kind] = (now or datetime.now(UTC)).isoformat()
            Variable.set(self.key, json.dumps(streaks),
                         description="airflow-pgmigrate: start of a failure streak of a sync task (deleted when the "
                                     "task succeeds or gives up)")
        return datetime.fromisoformat(streaks[kind])

    def reset(self) -> None:
        """The streaks are over (a poke succeeded, or the task gave up)."""
        from airflow.sdk import Variable

        if self._read():
            Variable.delete(self.key)
        self._cache = {}


__all__ = ["RetryWindow", "VARIABLE_PREFIX"]
