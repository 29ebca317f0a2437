"""The whole migration DAG through Airflow with a write load: automatic and UI-approved cutover, keep syncing, abort."""

from __future__ import annotations

import threading
import time

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


@pytest.mark.slow  # over 20 s (a whole DAG under dag.test()): make test-slow
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
    verified = migration_env.dst("SELECT value FROM pgmigrate.migration_state WHERE key = 'verification'")[0][0]
    assert verified["statistics"]["failed"] == {}, "the verification before the question analyzes the tables"
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


class AbortOnceSyncFailed(Responder):
    """Answers only after the sync beside the question has failed: the person gives up on the migration."""

    def run(self) -> None:
        from airflow.models.taskinstance import TaskInstance as TI
        from airflow.utils.session import create_session
        from airflow.utils.state import TaskInstanceState
        from sqlalchemy import select

        deadline = time.monotonic() + self.timeout
        while not self._halt.is_set() and time.monotonic() < deadline:
            with create_session() as session:
                if session.scalar(select(TI.task_id).where(TI.dag_id == self.dag_id,
                                                           TI.task_id == "sync_while_waiting",
                                                           TI.state == TaskInstanceState.FAILED)):
                    break
            time.sleep(0.5)
        super().run()


def _ddl_once_verified(env, name: str, halt: threading.Event) -> None:
    """Once the verification before the question is recorded, a column is added on the source and used: the sync
    beside the question stops ("DDL on the source"), which retrying cannot fix."""
    while not halt.is_set():
        try:
            if env.dst("SELECT 1 FROM pgmigrate.migration_state WHERE migration = %s AND key = 'verification'",
                       (name,)):
                break
        except Exception:  # noqa: BLE001 - the state schema does not exist yet
            pass
        halt.wait(0.3)
    env.src("ALTER TABLE public.customers ADD COLUMN vip boolean; "
            "INSERT INTO public.customers (name, vip) VALUES ('late', true)")


@pytest.mark.slow  # over 20 s (a whole DAG under dag.test()): make test-slow
def test_abort_after_the_sync_beside_the_question_failed_still_releases_the_slot(migration_env, airflow_db):
    """The sync beside the question failed; the person answers Abort to give the migration up. The release must run:
    otherwise the slot stays on the source, retaining WAL until its disk fills, and nothing in the UI can release it
    (the release task is upstream_failed, and clearing it gives the same)."""
    prepare_orm()
    migration_env.src(SHOP)
    responder = AbortOnceSyncFailed("pgmigrate_it_cut_sync_fails", [("cutover_question", "Abort")])
    responder.start()
    halt = threading.Event()
    ddl = threading.Thread(target=_ddl_once_verified, args=(migration_env, "it_cut_sync_fails", halt), daemon=True)
    ddl.start()
    try:
        dag_run = _run("pgmigrate_it_cut_sync_fails")
    finally:
        halt.set()
        ddl.join(timeout=10)
        responder.stop()
    states = _states(dag_run)
    assert responder.answered == ["cutover_question=Abort"], states
    assert states["sync_while_waiting"] == "failed", states
    assert states["release"] == "success", states
    assert states["cutover"] in ("skipped", "upstream_failed"), states
    slot = migration_env.src("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'pgmigrate_it_cut_sync_fails'")
    assert slot == [(0,)], states
    assert migration_env.src("SELECT count(*) FROM pg_publication") == [(0,)]
    # The abort asked for is done (as after any Abort, the run ends success); the failed sync stays red in the grid
    # and has alerted through its failure callback.
    assert dag_run.state == "success", states
