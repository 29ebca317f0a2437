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
    assert _states(dag_run) == {"precheck": "failed", "schema_pre_data": "upstream_failed",
                                "full_load": "upstream_failed", "schema_post_data": "upstream_failed",
                                "incremental_sync": "upstream_failed", "cutover": "upstream_failed"}
    report = _xcom(dag_run, "precheck", key="precheck_report")
    failed = sorted(r["name"] for r in report["results"] if r["status"] == "failed")
    assert failed == ["name_conflicts", "primary_keys"]


def _rds_fixture():
    import boto3

    from tests.unit.test_rds import make_instance, make_sg

    rds, ec2 = boto3.client("rds"), boto3.client("ec2")
    sg_id = make_sg(ec2)
    make_instance(rds, "shop-prod", sg_id)
    return ec2, sg_id


def test_precheck_with_rds_adds_the_ingress_rule_and_the_dag_removes_it(migration_env, airflow_db, aws_env):
    from tests.unit.test_rds import ingress_cidrs

    ec2, sg_id = _rds_fixture()
    migration_env.src("CREATE TABLE public.orders (id bigint PRIMARY KEY)")

    dag_run = _run("pgmigrate_it_precheck_rds")

    assert dag_run.state == "success"
    report = _xcom(dag_run, "precheck")
    statuses = {r["name"]: r["status"] for r in report["results"]}
    assert [statuses[n] for n in ("rds_instance", "rds_public_access", "rds_security_group")] == ["passed"] * 3
    assert statuses["rds_logical_replication"] == "skipped"  # this migration has no incremental sync
    (added,) = report["added_ingress_rules"]
    assert added["group_id"] == sg_id and added["cidr"] == "203.0.113.0/24" and added["rule_id"]
    # A [schema, full] migration has no cutover: its last task, a teardown, removes the rule it added.
    assert _states(dag_run)["remove_ingress_rules"] == "success"
    assert _xcom(dag_run, "remove_ingress_rules")["removed_ingress_rules"] == [added]
    assert ingress_cidrs(ec2, sg_id) == []
    (recorded,) = migration_env.dst("SELECT value FROM pgmigrate.migration_state "
                                    "WHERE migration = 'it_precheck_rds' AND key = 'added_ingress_rules'")[0]
    assert recorded == []


def test_a_failed_migration_still_removes_the_rule(migration_env, airflow_db, aws_env):
    from tests.unit.test_rds import ingress_cidrs

    ec2, sg_id = _rds_fixture()
    migration_env.src("CREATE TABLE public.orders (id bigint PRIMARY KEY)")
    migration_env.dst("CREATE TABLE public.orders (id bigint)")  # a name conflict fails the precheck

    dag_run = _run("pgmigrate_it_precheck_rds")

    assert dag_run.state == "failed"  # the teardown's success does not hide the failed precheck
    states = _states(dag_run)
    assert states["precheck"] == "failed" and states["remove_ingress_rules"] == "success"
    report = _xcom(dag_run, "precheck", key="precheck_report")
    assert len(report["added_ingress_rules"]) == 1
    assert len(_xcom(dag_run, "remove_ingress_rules")["removed_ingress_rules"]) == 1
    assert ingress_cidrs(ec2, sg_id) == []


@pytest.mark.slow  # over 20 s (a whole DAG under dag.test()): make test-slow
def test_an_aborted_migration_removes_the_rule(migration_env, airflow_db, aws_env):
    from tests.integration.hitl import Responder, prepare_orm
    from tests.unit.test_rds import ingress_cidrs

    prepare_orm()
    ec2, sg_id = _rds_fixture()
    migration_env.src("CREATE TABLE public.orders (id bigint PRIMARY KEY); INSERT INTO public.orders VALUES (1)")
    responder = Responder("pgmigrate_it_rds_abort", [("cutover_question", "Abort")])
    responder.start()
    try:
        dag_run = _run("pgmigrate_it_rds_abort")
    finally:
        responder.stop()
    states = _states(dag_run)
    assert dag_run.state == "success", states
    assert states["release"] == "success" and states["cutover"] == "skipped"
    assert states["remove_ingress_rules"] == "success"
    assert len(_xcom(dag_run, "precheck")["added_ingress_rules"]) == 1
    assert ingress_cidrs(ec2, sg_id) == []


def test_schema_phases_run_through_airflow(migration_env, airflow_db):
    migration_env.src("CREATE TABLE public.customers (id bigint PRIMARY KEY, name text);"
                      "CREATE TABLE public.orders (id bigint PRIMARY KEY, customer_id bigint REFERENCES "
                      "public.customers (id), amount numeric CHECK (amount > 0));"
                      "CREATE INDEX orders_amount ON public.orders (amount);"
                      "CREATE VIEW public.big AS SELECT id, amount FROM public.orders WHERE amount > 10;")
    dag_run = _run("pgmigrate_it_schema")
    assert dag_run.state == "success"
    assert _states(dag_run) == {"precheck": "success", "schema_pre_data": "success", "schema_post_data": "success"}
    pre = _xcom(dag_run, "schema_pre_data")
    post = _xcom(dag_run, "schema_post_data")
    assert pre["created"]["table"] == 2 and pre["created"]["view"] == 1
    assert post["created"] == {"constraint": 2, "fk constraint": 1, "index": 1}
    assert migration_env.dst("SELECT pg_get_constraintdef(oid) FROM pg_constraint "
                             "WHERE conrelid = 'public.orders_v2'::regclass AND contype = 'c'") == \
        [("CHECK ((total > (0)::numeric))",)]
    assert migration_env.dst("SELECT count(*) FROM pg_attribute WHERE attrelid = 'public.big'::regclass "
                             "AND attname = 'amount'")[0][0] == 1
    # Run again: the state says this migration created the objects, so nothing fails and nothing changes.
    again = _run("pgmigrate_it_schema")
    assert again.state == "success"
    assert _xcom(again, "schema_pre_data")["created_total"] == 0


def test_whole_migration_through_airflow_ends_in_a_verified_cutover(migration_env, airflow_db):
    migration_env.src("CREATE TABLE public.orders (id bigint PRIMARY KEY, amount numeric);"
                      "INSERT INTO public.orders SELECT g, g FROM generate_series(1, 500) g;")
    dag_run = _run("pgmigrate_it_whole")
    assert dag_run.state == "success", _states(dag_run)
    assert set(_states(dag_run).values()) == {"success"}
    sync = _xcom(dag_run, "incremental_sync")
    assert sync["not_delayed"] is True and sync["lag_seconds"] == 0
    cutover = _xcom(dag_run, "cutover")
    assert cutover["status"] == "completed" and cutover["verification"]["equal"] is True
    assert migration_env.dst("SELECT count(*), sum(amount) FROM public.orders_v2") == \
        migration_env.src("SELECT count(*), sum(amount) FROM public.orders")
