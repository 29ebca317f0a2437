"""CutoverQuestionOperator: the one cutover question, asked in the Airflow UI for as long as needed.

The question is a human-in-the-loop branch: "Cut over" leads to the cutover task, "Abort" to the release task.
"Keep syncing" changes nothing: the answer is recorded and the same question is open again at once. Airflow keeps one
question text per try of a task instance, so the text carries the figures of when it was first asked, with their
time, and links the migration report, whose figures the sync beside the question refreshes (a retry asks anew, with
fresh figures). While it waits, :class:`~airflow_pgmigrate.sensors.cutover_wait.SyncUntilAnsweredSensor` keeps the destination in sync.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from airflow.providers.standard.operators.hitl import HITLBranchOperator
from airflow.sdk import Context

from airflow_pgmigrate.engine.question import (
    ABORT,
    CUT_OVER,
    KEEP_SYNCING,
    OPTIONS,
    WAITING_KEY,
    WaitingFigures,
    lag_from_slot,
    question_body,
    record_answer,
)
from airflow_pgmigrate.engine.state import MigrationState
from airflow_pgmigrate.operators.base import ConfigArg, MigrationTaskMixin


class CutoverQuestionOperator(MigrationTaskMixin, HITLBranchOperator):
    """Ask whether to cut over, showing the lag, the write rate, the estimated drain and the last verification.

    :param config: the migration.
    :param cut_over_task_id: the task "Cut over" leads to.
    :param abort_task_id: the task "Abort" leads to.
    """

    template_fields: Sequence[str] = ("config",)
    ui_color = "#fcf3cf"
    figures_wait_seconds: float = 20.0

    def __init__(self, *, config: ConfigArg, cut_over_task_id: str = "cutover", abort_task_id: str = "release",
                 **kwargs: Any) -> None:
        super().__init__(subject="Cut over the migration?", options=list(OPTIONS),
                         options_mapping={CUT_OVER: cut_over_task_id, ABORT: abort_task_id}, **kwargs)
        self.config = config

    def _figures(self, state: MigrationState) -> WaitingFigures | None:
        """The figures of the sync beside the question, measured after now (it starts with the question: wait up to
        ``figures_wait_seconds`` for its first window); else the lag read from the slot."""
        asked = datetime.now(UTC).isoformat()
        deadline = time.monotonic() + self.figures_wait_seconds
        while True:
            figures = WaitingFigures.from_dict(state.get(WAITING_KEY))
            fresh = figures is not None and figures.measured_at >= asked
            if fresh and figures is not None and figures.source_wal_bytes_per_second is not None:
                return figures
            if time.monotonic() >= deadline:
                return figures if fresh else lag_from_slot(self.migration, self.source_info)
            time.sleep(1)

    def execute(self, context: Context) -> Any:
        from airflow_pgmigrate.links import report_link

        config = self.migration
        state = MigrationState(self.destination_info, config.state_schema, config.name)
        figures = self._figures(state)
        self.subject = f"Cut over migration {config.name}?"
        self.body = question_body(config, figures, state.get("verification"),
                                  report_link=report_link(config) if config.report.enabled else "")
        if figures is not None:
            self.log.info("cutover question asked lag_bytes=%d lag_s=%s", figures.lag_bytes,
                          "unknown" if figures.lag_seconds is None else f"{figures.lag_seconds:.1f}")
        return super().execute(context)

    def execute_complete(self, context: Context, event: dict[str, Any]) -> Any:
        if "error" in event:
            return super().execute_complete(context, event)
        config = self.migration
        state = MigrationState(self.destination_info, config.state_schema, config.name)
        chosen = list(event.get("chosen_options") or [])
        self.validate_chosen_options(chosen)
        answer = chosen[0] if chosen else KEEP_SYNCING
        entry = record_answer(state, context["run_id"], answer, event.get("responded_by_user"),
                              WaitingFigures.from_dict(state.get(WAITING_KEY)))
        self.log.info("cutover question answered answer=%s by=%s", answer, entry["by"])
        self.refresh_report(force=True)
        if answer == KEEP_SYNCING:
            self.log.info("the destination keeps following the source; the question is open again")
            return super().execute(context)  # the same question, its answer cleared: the task waits again
        return super().execute_complete(context, event)


__all__ = ["CutoverQuestionOperator"]
