"""The migration DAG under a real scheduler (LocalExecutor), dag processor, triggerer and API server, not dag.test():
triggered and answered through the REST calls the UI makes, with a write load on the source the whole time."""

from __future__ import annotations

import time

import pytest

from tests.real_airflow.conftest import Writes

pytestmark = [pytest.mark.real_airflow, pytest.mark.timeout(900)]

FAILED = {"failed", "upstream_failed"}


def _equal(m) -> None:
    for table in ("public.customers", "public.orders"):
        query = f"SELECT count(*), md5(string_agg(t::text, '|' ORDER BY t::text)) FROM {table} t"
        assert m.src(query) == m.dst(query), table


def _waiting(airflow, m, run_id, seconds: float) -> list[dict]:
    """Watch the run for ``seconds`` while the question waits: nothing may fail, the sync beside it keeps running;
    returns what the sync recorded for the question at each look."""
    seen = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        states = airflow.task_states(m.dag_id, run_id)
        assert not FAILED & set(states.values()), states
        assert states["sync_while_waiting"] in ("running", "queued", "scheduled", "up_for_retry"), states
        rows = m.dst("SELECT value FROM pgmigrate.migration_state WHERE key = 'waiting_sync'")
        if rows:
            seen.append(rows[0][0])
        time.sleep(3)
    return seen


def test_keep_syncing_then_cut_over_ends_green(airflow, migrations):
    m = migrations["real_cut"]
    run_id = "real_keep_then_cut"
    writes = Writes(m)
    writes.start()
    try:
        airflow.trigger(m.dag_id, run_id)
        question = airflow.open_question(m.dag_id, run_id, "cutover_question")
        assert question["options"] == ["Cut over", "Keep syncing", "Abort"]
        body = question["body"]
        for words in ("**Lag:**", "of WAL", "s behind the source", "**Last verification:** 2 table(s)",
                      "**Estimated drain at the freeze:**", "**Writes on the source:**", "transactions per second",
                      "What each answer does", "**Keep syncing**", "**Abort**", "/pgmigrate/reports/real_cut.html"):
            assert words in body, body
        assert "{'" not in body and "applied_lsn" not in body, "no Python repr in the question"
        answered = airflow.answer(m.dag_id, run_id, "cutover_question", "Keep syncing")
        assert answered["chosen_options"] == ["Keep syncing"]
        # Several poke intervals (1 s pokes, 3 s windows) with the question open: nothing fails, sync goes on.
        seen = _waiting(airflow, m, run_id, 30)
        again = airflow.open_question(m.dag_id, run_id, "cutover_question")
        assert again["options"] == ["Cut over", "Keep syncing", "Abort"]
        assert len({s["applied_lsn"] for s in seen}) >= 3, "the destination kept following the source"
        assert max(s["lag_seconds"] for s in seen[-3:]) <= 5, seen[-3:]
        airflow.answer(m.dag_id, run_id, "cutover_question", "Cut over")
        state = airflow.wait_for_run(m.dag_id, run_id)
    finally:
        writes.stop()
    states = airflow.task_states(m.dag_id, run_id)
    assert state == "success", states
    assert not FAILED & set(states.values()), states
    assert states["cutover"] == "success" and states["release"] == "skipped", states
    assert writes.count > 100
    _equal(m)
    answers = m.dst("SELECT value FROM pgmigrate.migration_state WHERE key = 'cutover_answers'")[0][0]
    assert [(a["answer"], a["run_id"]) for a in answers] == [("Keep syncing", run_id), ("Cut over", run_id)]
    assert all(a["by"] for a in answers)
    # The report is served by the API server, and the task's link points there.
    links = airflow.request("GET", f"/api/v2/dags/{m.dag_id}/dagRuns/{run_id}/taskInstances/cutover/links")
    assert links["extra_links"]["Migration report"] == f"{airflow.url}/pgmigrate/reports/real_cut.html"
    page = airflow.request("GET", "/pgmigrate/reports/real_cut.html")
    for words in ("Cutover question: answers", "Keep syncing", "Cut over", "Sequences set at cutover",
                  "ALTER DATABASE", "RESET default_transaction_read_only", "public.orders"):
        assert words in page


def _sync_tries(airflow, m, run_id) -> int:
    ti = airflow.request("GET", f"/api/v2/dags/{m.dag_id}/dagRuns/{run_id}/taskInstances/sync_while_waiting")
    return int(ti["try_number"]) if ti["state"] == "running" else 0


def test_a_scheduler_restart_then_abort(airflow, migrations):
    """The scheduler restarts while the question waits (its LocalExecutor workers, and the sync they run, end with
    it): the sync is retried and the destination keeps following; then Abort releases slot and publication."""
    m = migrations["real_abort"]
    run_id = "real_abort"
    writes = Writes(m)
    writes.start()
    try:
        airflow.trigger(m.dag_id, run_id)
        airflow.open_question(m.dag_id, run_id, "cutover_question")
        _waiting(airflow, m, run_id, 6)
        assert _sync_tries(airflow, m, run_id) == 1
        airflow.restart("scheduler")
        deadline = time.monotonic() + 240  # the heartbeat timeout (30 s here) finds the lost task, then a retry
        while _sync_tries(airflow, m, run_id) < 2:
            assert time.monotonic() < deadline, airflow.task_states(m.dag_id, run_id)
            time.sleep(3)
        before = m.dst("SELECT value FROM pgmigrate.migration_state WHERE key = 'waiting_sync'")[0][0]
        seen = _waiting(airflow, m, run_id, 12)
        assert seen[-1]["measured_at"] > before["measured_at"], "the retried sync measures again"
        assert seen[-1]["applied_lsn"] != before["applied_lsn"], "and applies again"
        airflow.open_question(m.dag_id, run_id, "cutover_question")  # the question waited through the restart
        airflow.answer(m.dag_id, run_id, "cutover_question", "Abort")
        state = airflow.wait_for_run(m.dag_id, run_id)
    finally:
        writes.stop()
    states = airflow.task_states(m.dag_id, run_id)
    assert state == "success", states
    assert not FAILED & set(states.values()), states
    assert states["release"] == "success" and states["cutover"] == "skipped", states
    assert m.src("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'pgmigrate_real_abort'") == [(0,)]
    assert m.src("SELECT count(*) FROM pg_publication") == [(0,)]
