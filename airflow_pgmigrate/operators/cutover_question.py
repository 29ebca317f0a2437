"""CutoverQuestionOperator: the one cutover question, asked in the Airflow UI for as long as needed.

The question is a human-in-the-loop branch: "Cut over" leads to the cutover task, "Abort" to the release task.
"Keep syncing" changes nothing: the answer is recorded and the question is asked again, with fresh figures, as the
task's next try (Airflow keeps one question per try, and each try's question and answer stay in its history). While
it waits, :class:`~airflow_pgmigrate.sensors.cutover_wait.SyncUntilAnsweredSensor` keeps the destination in sync.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from airflow.providers.standard.operators.hitl import HITLBranchOperator
from airflow.sdk import Context
from airflow.sdk.exceptions import AirflowException

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

#: How many times the question can come back after "Keep syncing" (each time is a try of the task).
MAX_ASKS = 10_000


class AskAgain(AirflowException):
    """ "Keep syncing" was answered: the question comes back, with fresh figures, as the task's next try."""


class CutoverQuestionOperator(MigrationTaskMixin, HITLBranchOperator):
    """Ask whether to cut over, showing the lag, the write rate, the estimated drain and the last verification.

    :param config: the migration.
    :param cut_over_task_id: the task "Cut over" leads to.
    :param abort_task_id: the task "Abort" leads to.
    :param ask_again_after: how soon the question comes back after "Keep syncing".
    """

    template_fields: Sequence[str] = ("config",)
    ui_color = "#fcf3cf"

    def __init__(self, *, config: ConfigArg, cut_over_task_id: str = "cutover", abort_task_id: str = "release",
                 ask_again_after: timedelta = timedelta(seconds=2), **kwargs: Any) -> None:
        kwargs.setdefault("retries", MAX_ASKS)
        super().__init__(subject="Cut over the migration?", options=list(OPTIONS),
                         options_mapping={CUT_OVER: cut_over_task_id, ABORT: abort_task_id},
                         retry_delay=ask_again_after, **kwargs)
        self.config = config

    def _figures(self, state: MigrationState) -> WaitingFigures | None:
        figures = WaitingFigures.from_dict(state.get(WAITING_KEY))
        if figures is None:
            figures = lag_from_slot(self.migration, self.source_info)
        return figures

    def execute(self, context: Context) -> Any:
        from airflow_pgmigrate.links import report_link

        config = self.migration
        state = MigrationState(self.destination_info, config.state_schema, config.name)
        figures = self._figures(state)
        ti = context["ti"]
        self.subject = f"Cut over migration {config.name}?"
        self.body = question_body(config, figures, state.get("verification"),
                                  report_link=report_link(config) if config.report.enabled else "",
                                  asked=int(getattr(ti, "try_number", 1) or 1))
        if figures is not None:
            self.log.info("cutover question asked lag_bytes=%d lag_s=%.1f", figures.lag_bytes, figures.lag_seconds)
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
            raise AskAgain(f"{KEEP_SYNCING} (answered by {entry['by']}): the destination keeps following the "
                           "source; the question comes back with fresh figures")
        return super().execute_complete(context, event)


__all__ = ["AskAgain", "CutoverQuestionOperator", "MAX_ASKS"]
