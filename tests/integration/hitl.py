"""Answering the cutover question in tests, as the Airflow UI would: a thread that writes the answer."""

from __future__ import annotations

import os
import threading
import time

_DEBUG = bool(os.environ.get("PGMIGRATE_HITL_DEBUG"))


def prepare_orm() -> None:
    """Load every ORM model in the main thread first: a responder thread doing it concurrently with dag.test()
    deadlocks on import locks and mapper configuration."""
    from airflow.models import import_all_models

    import_all_models()
    import airflow.models.dagrun  # noqa: F401
    import airflow.models.hitl  # noqa: F401
    import airflow.models.trigger  # noqa: F401
    from sqlalchemy.orm import configure_mappers

    configure_mappers()


#: Seconds a question waits before the responder answers it: the task's own pause (its AWAITING_INPUT state and
#: deferral) must be written first, or it overwrites the answer's resume (seen in CI: answered 40 ms after the
#: question, the task stayed AWAITING_INPUT for ever).
SETTLE_SECONDS = 1.0
#: An answered question whose task still waits this long after the answer gets its resume event again.
RESUBMIT_SECONDS = 5.0


class Responder(threading.Thread):
    """Answers HITL tasks of one DAG: ``answers`` lists (task id, option to choose) in the order to give them (a task
    asked again, as the cutover question after "Keep syncing", appears once per answer)."""

    def __init__(self, dag_id: str, answers: list[tuple[str, str]], timeout: float = 240.0) -> None:
        super().__init__(daemon=True)
        self.dag_id = dag_id
        self.answers = list(answers)
        self.answered: list[str] = []
        self.timeout = timeout
        self._halt = threading.Event()
        #: Answered task instances not yet seen leaving AWAITING_INPUT: ti id -> when the resume was last submitted.
        self._unsettled: dict[object, float] = {}

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=10)

    def run(self) -> None:
        from airflow.utils.session import create_session

        deadline = time.monotonic() + self.timeout
        while not self._halt.is_set() and time.monotonic() < deadline and (self.answers or self._unsettled):
            with create_session() as session:
                self._resubmit_lost(session)
                if self.answers:
                    self._answer(session)
            if _DEBUG:
                self._debug()
            time.sleep(0.5)

    def _answer(self, session) -> None:
        from airflow.models.dagrun import DagRun
        from airflow.models.hitl import HITLDetail
        from airflow.models.taskinstance import TaskInstance as TI
        from airflow.sdk import timezone
        from airflow.utils.state import DagRunState, TaskInstanceState
        from sqlalchemy import select

        rows = session.execute(
            select(TI).join(DagRun, (DagRun.dag_id == TI.dag_id) & (DagRun.run_id == TI.run_id))
            .where(TI.dag_id == self.dag_id, TI.task_id == self.answers[0][0],
                   TI.state == TaskInstanceState.AWAITING_INPUT, DagRun.state == DagRunState.RUNNING)
        ).scalars().all()
        for ti in rows:
            detail = session.scalar(select(HITLDetail).where(HITLDetail.ti_id == ti.id))
            if detail is None or detail.responded_at is not None:
                continue
            if _age(detail.created_at, timezone.utcnow()) < SETTLE_SECONDS:
                continue
            choice = self.answers.pop(0)[1]
            detail.chosen_options = [choice]
            detail.params_input = {}
            detail.responded_at = timezone.utcnow()
            detail.responded_by = {"id": "pytest", "name": "pytest"}
            _submit(ti, detail, session)
            self._unsettled[ti.id] = time.monotonic()
            self.answered.append(f"{ti.task_id}={choice}")

    def _resubmit_lost(self, session) -> None:
        """A task still AWAITING_INPUT well after its question was answered lost its resume: submit it again (only
        while its question stays answered: a question asked anew is answered by ``_answer``)."""
        from airflow.models.hitl import HITLDetail
        from airflow.models.taskinstance import TaskInstance as TI
        from airflow.utils.state import TaskInstanceState
        from sqlalchemy import select

        for ti_id, submitted in list(self._unsettled.items()):
            ti = session.get(TI, ti_id)
            detail = session.scalar(select(HITLDetail).where(HITLDetail.ti_id == ti_id))
            if ti is None or ti.state != TaskInstanceState.AWAITING_INPUT or detail is None \
                    or detail.responded_at is None:
                del self._unsettled[ti_id]
            elif time.monotonic() - submitted > RESUBMIT_SECONDS:
                _submit(ti, detail, session)
                self._unsettled[ti_id] = time.monotonic()

    def _debug(self) -> None:
        from airflow.models.taskinstance import TaskInstance as TI
        from airflow.utils.session import create_session
        from sqlalchemy import select

        with create_session() as session:
            states = session.execute(select(TI.task_id, TI.state).where(TI.dag_id == self.dag_id)).all()
        print("responder sees", sorted((t, str(st)) for t, st in states if st is not None), flush=True)


def _submit(ti, detail, session) -> None:
    from airflow.models.trigger import handle_event_submit
    from airflow.triggers.base import TriggerEvent

    handle_event_submit(TriggerEvent(detail.as_resume_event_payload()), task_instance=ti, session=session)


def _age(created_at, now) -> float:
    if created_at.tzinfo is None:
        created_at = created_at.replace(tzinfo=now.tzinfo)
    return (now - created_at).total_seconds()
