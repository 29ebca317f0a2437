"""Operability through real Airflow (dag.test) on real servers: the report and its link after a whole migration, and
exactly one alert for a task that fails, even though one of the two notifiers is down."""

from __future__ import annotations

import json
import re

import pytest

from airflow_pgmigrate.testing.local_postgres import DEFAULT_PASSWORD
from tests.integration.test_precheck_dag import _run, _states, _xcom

pytestmark = [pytest.mark.integration, pytest.mark.hardening]

SHOP = """
CREATE TABLE public.customers (id bigserial PRIMARY KEY, name text NOT NULL);
CREATE TABLE public.orders (id bigserial PRIMARY KEY, customer_id bigint REFERENCES public.customers (id),
                            amount numeric NOT NULL);
INSERT INTO public.customers (name) SELECT 'c' || g FROM generate_series(1, 100) g;
INSERT INTO public.orders (customer_id, amount) SELECT 1 + g % 100, g FROM generate_series(1, 2000) g;
"""


@pytest.fixture
def ops_dir(tmp_path, monkeypatch):
    """Where the test DAG pgmigrate_it_ops writes its alerts and report (read when the DAG file is parsed)."""
    monkeypatch.setenv("PGMIGRATE_TEST_OPS_DIR", str(tmp_path))
    return tmp_path


def _alerts(ops_dir) -> list[dict]:
    path = ops_dir / "alerts.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_the_report_shows_every_step_and_the_task_links_to_it(migration_env, airflow_db, ops_dir):
    from airflow.dag_processing.dagbag import DagBag

    from airflow_pgmigrate.links import MigrationReportLink
    from tests.integration.test_precheck_dag import DAGS

    migration_env.src(SHOP)
    dag_run = _run("pgmigrate_it_ops")
    assert dag_run.state == "success", _states(dag_run)
    assert _alerts(ops_dir) == [], "nothing went wrong: no alert"

    report = ops_dir / "reports" / "it_ops.html"
    page = report.read_text()
    for step in ("precheck", "schema_pre_data", "full_load", "full_load · public.orders",
                 "full_load · public.customers", "schema_post_data", "incremental_sync", "cutover",
                 "cutover · freeze", "cutover · drain", "cutover · writes_stopped", "cutover · sequences",
                 "cutover · verify", "cutover · final_check", "cutover · release"):
        assert f"<td>{step}</td>" in page, step
    rows = re.findall(r"<tr><td>([^<]+)</td><td>(\w+)</td>.*?<td class=\"outcome\"[^>]*>(\w+)</td>", page)
    outcomes = {(step, kind): outcome for step, kind, outcome in rows}
    assert outcomes[("precheck", "task")] == outcomes[("cutover", "task")] == "success"
    assert outcomes[("incremental_sync", "pokes")] == "success"
    points = re.findall(r'<polyline[^>]*points="([^"]+)"', page)
    assert points and all(re.fullmatch(r"[\d.]+,[\d.]+( [\d.]+,[\d.]+)*", p) for p in points)
    assert "<svg" in page and "<circle" in page
    assert DEFAULT_PASSWORD not in page

    dag = DagBag(dag_folder=str(DAGS)).get_dag("pgmigrate_it_ops")
    for task_id in ("precheck", "full_load", "incremental_sync", "cutover"):
        ti = dag_run.get_task_instance(task_id)
        url = MigrationReportLink().get_link(operator=dag.get_task(task_id), ti_key=ti.key)
        assert url == f"/pgmigrate/reports/{report.name}"  # served by Airflow's API server (the report plugin)
        assert _xcom(dag_run, task_id, key="_link_MigrationReportLink") == url  # what the UI shows


def test_a_failed_task_alerts_exactly_once_though_a_notifier_is_down(migration_env, airflow_db, ops_dir):
    migration_env.src("CREATE TABLE public.orders (id bigint PRIMARY KEY); CREATE TABLE public.nokey (a int)")
    dag_run = _run("pgmigrate_it_ops")
    assert dag_run.state == "failed"
    assert _states(dag_run)["precheck"] == "failed"
    alerts = _alerts(ops_dir)
    assert [(a["kind"], a["task_id"], a["migration"]) for a in alerts] == [("task_failed", "precheck", "it_ops")]
    assert "primary_keys" in alerts[0]["message"] and alerts[0]["run_id"] == dag_run.run_id
    assert DEFAULT_PASSWORD not in json.dumps(alerts)
    page = (ops_dir / "reports" / "it_ops.html").read_text()
    assert re.search(r"<tr><td>precheck</td><td>task</td>.*?<td class=\"outcome\"[^>]*>failed</td>", page)
    assert DEFAULT_PASSWORD not in page
