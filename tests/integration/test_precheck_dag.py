"""PrecheckOperator through real Airflow: ``dag.test()`` on a SQLite metadata DB, against real servers."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

DAGS = Path(__file__).resolve().parents[1] / "dags"


def _run(dag_id: str):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS))
    assert not bag.import_errors
    dag = bag.get_dag(dag_id)
    return dag.test()


def _xcom(dag_run, task_id: str, key: str = "return_value"):
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.scalars(XComModel.get_many(run_id=dag_run.run_id, dag_ids=dag_run.dag_id, task_ids=task_id,
                                                 key=key)).first()
        return None if row is None else XComModel.deserialize_value(row)


def _states(dag_run) -> dict[str, str]:
    return {ti.task_id: ti.state for ti in dag_run.get_task_instances()}


def test_precheck_task_passes_and_pushes_the_report(migration_env, airflow_db):
    migration_env.src("CREATE TABLE public.orders (id bigint PRIMARY KEY, amount numeric)")
    dag_run = _run("pgmigrate_it_precheck")
    assert dag_run.state == "success"
    report = _xcom(dag_run, "precheck")
    assert report["passed"] is True
    assert report["migration"] == "it_precheck"
    assert {r["name"]: r["status"] for r in report["results"]}["primary_keys"] == "passed"


def test_precheck_task_fails_with_one_report(migration_env, airflow_db):
    migration_env.src("CREATE TABLE public.orders (id bigint PRIMARY KEY); CREATE TABLE public.nokey (a int)")
    migration_env.dst("CREATE TABLE public.orders (id bigint PRIMARY KEY)")
    dag_run = _run("pgmigrate_it_precheck")
    assert dag_run.state == "failed"
    assert _states(dag_run) == {"precheck": "failed"}
    report = _xcom(dag_run, "precheck", key="precheck_report")
    failed = sorted(r["name"] for r in report["results"] if r["status"] == "failed")
    assert failed == ["name_conflicts", "primary_keys"]
