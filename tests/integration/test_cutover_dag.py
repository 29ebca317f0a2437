"""The whole migration DAG through Airflow with a write load: automatic and UI-approved cutover, keep syncing, abort."""

from __future__ import annotations

import threading

import pytest

from tests.integration.hitl import Responder, prepare_orm
from tests.integration.test_precheck_dag import _run, _states, _xcom

pytestmark = pytest.mark.integration

SHOP = """
CREATE TABLE public.customers (id bigserial PRIMARY KEY, name text NOT NULL);
CREATE TABLE public.orders (id bigserial PRIMARY KEY, customer_id bigint REFERENCES public.customers (id),
                            amount numeric NOT NULL, note text);
INSERT INTO public.customers (name) SELECT 'c' || g FROM generate_series(1, 200) g;
INSERT INTO public.orders (customer_id, amount) SELECT 1 + g % 200, g FROM generate_series(1, 3000) g;
"""


class Writes(threading.Thread):
    """A steady write load on the source (of ``env``: anything with ``source_info()``) until stopped, or until the
    cutover freezes the source and ends the session."""

    def __init__(self, env) -> None:
        super().__init__(daemon=True)
        self.env = env
        self.stop_event = threading.Event()
        self.count = 0

    def run(self) -> None:
        import psycopg

        with psycopg.connect(**self.env.source_info().connect_kwargs(), autocommit=True) as conn:
            while not self.stop_event.is_set():
                try:
                    with conn.transaction():
                        conn.execute("INSERT INTO public.orders (customer_id, amount) VALUES (1, 1)")
                        conn.execute("UPDATE public.orders SET amount = amount + 1 WHERE id = %s",
                                     (1 + self.count % 3000,))
                    self.count += 1
                except psycopg.Error:
                    return  # the cutover froze the source and ended this session
                self.stop_event.wait(0.02)

    def stop(self) -> None:
        self.stop_event.set()
        self.join(timeout=10)


def _unfreeze(env) -> None:
    env.source.execute(f'ALTER DATABASE "{env.source_db}" RESET default_transaction_read_only')


def _equal(env) -> None:
    for table in ("public.customers", "public.orders"):
        query = f"SELECT count(*), md5(string_agg(t::text, '|' ORDER BY t::text)) FROM {table} t"
        assert env.src(query) == env.dst(query), table


def test_automatic_cutover_under_a_write_load(migration_env, airflow_db):
    migration_env.src(SHOP)
    writes = Writes(migration_env)
    writes.start()
    try:
        dag_run = _run("pgmigrate_it_cut_auto")
    finally:
        writes.stop()
        _unfreeze(migration_env)
    assert dag_run.state == "success", _states(dag_run)
    report = _xcom(dag_run, "cutover")
    assert report["status"] == "completed" and report["verification"]["equal"] is True
    assert report["released"] == {"slot": True, "publication": True}
    assert writes.count > 0
    _equal(migration_env)
    seq = migration_env.dst("SELECT last_value FROM public.orders_id_seq")[0][0]
    assert seq == migration_env.src("SELECT last_value FROM public.orders_id_seq")[0][0] + 10


@pytest.mark.parametrize("answers, outcome", [
    (["Cut over"], "cutover"),
    (["Keep syncing", "Keep syncing", "Cut over"], "cutover"),
    (["Abort"], "release"),
])
def test_cutover_answered_in_the_ui(migration_env, airflow_db, answers, outcome):
    prepare_orm()
    migration_env.src(SHOP)
    responder = Responder("pgmigrate_it_cut_manual", [("cutover_question", a) for a in answers])
    responder.start()
    writes = Writes(migration_env)
    writes.start()
    try:
        dag_run = _run("pgmigrate_it_cut_manual")
    finally:
        writes.stop()
        responder.stop()
        _unfreeze(migration_env)
    states = _states(dag_run)
    assert dag_run.state == "success", states
    assert responder.answered == [f"cutover_question={a}" for a in answers]
    assert "failed" not in states.values() and "upstream_failed" not in states.values(), states
    assert states["sync_while_waiting"] == "success" and states["verify"] == "success"
    slot = migration_env.src("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'pgmigrate_it_cut_manual'")
    assert slot == [(0,)], "the slot is released either way"
    recorded = migration_env.dst("SELECT value FROM pgmigrate.migration_state WHERE key = 'cutover_answers'")[0][0]
    assert [(a["answer"], a["by"], a["run_id"]) for a in recorded] == [(a, "pytest", dag_run.run_id) for a in answers]
    if outcome == "cutover":
        assert states["cutover"] == "success" and states["release"] == "skipped"
        _equal(migration_env)
    else:
        assert states["release"] == "success" and states["cutover"] == "skipped"
        assert migration_env.src("SELECT count(*) FROM pg_publication") == [(0,)]
