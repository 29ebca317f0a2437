"""The incremental sync sensor through real Airflow (dag.test) while a server is unreachable or refuses writes: it
rides out a failure shorter than its retry window and resumes; past the window it fails once (no Airflow retry)
with a clear message, and the slot is kept so the migration can resume."""

from __future__ import annotations

import threading
import time

import pytest

from airflow_pgmigrate.sensors.retry_window import VARIABLE_PREFIX
from airflow_pgmigrate.testing.tcp_proxy import TcpProxy
from tests.hardening.rig import assert_same_data
from tests.integration.test_incremental import catch_up, start_migration
from tests.integration.test_precheck_dag import _run, _xcom

pytestmark = [pytest.mark.integration, pytest.mark.hardening]

DATA = """
CREATE TABLE public.acc (id int PRIMARY KEY, v bigint NOT NULL);
INSERT INTO public.acc SELECT g, 0 FROM generate_series(1, 1000) g;
"""


def _start(env, name: str, retry: dict[str, float]):
    env.src(DATA)
    config = start_migration(env, name=name, retry=retry)
    env.src("UPDATE public.acc SET v = v + 1 WHERE id <= 600")
    return config


def _through_proxy(env, proxy: TcpProxy, conn: str, server) -> None:
    uri = server.uri(env.source_db if conn == "pgm_source" else env.destination_db)
    env.monkeypatch.setenv(f"AIRFLOW_CONN_{conn.upper()}", uri.replace(f":{server.port}/", f":{proxy.port}/"))


def _sensor(dag_run):
    return next(ti for ti in dag_run.get_task_instances() if ti.task_id == "incremental_sync")


def _leftover_windows() -> list[str]:
    from airflow.models import Variable
    from airflow.utils.session import create_session

    with create_session() as session:
        return [v.key for v in session.query(Variable).filter(Variable.key.like(f"{VARIABLE_PREFIX}.%"))]


def test_source_unreachable_for_a_few_pokes_then_back_sync_resumes(migration_env, airflow_db):
    env = migration_env
    _start(env, "hf_ride_out", {"connection_failures_minutes": 0.5, "other_errors_minutes": 0.25})
    with TcpProxy("127.0.0.1", env.source.port) as proxy:
        _through_proxy(env, proxy, "pgm_source", env.source)
        proxy.cut()

        def restore_after_three_pokes() -> None:
            deadline = time.monotonic() + 120
            while proxy.refused < 3 and time.monotonic() < deadline:
                time.sleep(0.05)
            proxy.restore()

        healer = threading.Thread(target=restore_after_three_pokes, daemon=True)
        healer.start()
        dag_run = _run("pgmigrate_hf_ride_out")
        healer.join(5)
    assert proxy.refused >= 3, "several pokes met the cut network"
    assert dag_run.state == "success"
    ti = _sensor(dag_run)
    assert ti.state == "success" and ti.try_number == 1, "ridden out within the window, without an Airflow retry"
    assert _xcom(dag_run, "incremental_sync")["not_delayed"] is True
    assert _leftover_windows() == [], "the failure streak was forgotten once a poke succeeded"
    assert env.dst("SELECT sum(v) FROM public.acc") == [(600,)]
    assert_same_data(env)


def test_destination_unreachable_longer_than_the_window_fails_once_and_keeps_the_slot(migration_env, airflow_db,
                                                                                     capfd):
    env = migration_env
    config = _start(env, "hf_give_up", {"connection_failures_minutes": 0.1, "other_errors_minutes": 0.05})
    with TcpProxy("127.0.0.1", env.destination.port) as proxy:
        _through_proxy(env, proxy, "pgm_destination", env.destination)
        proxy.cut()
        started = time.monotonic()
        dag_run = _run("pgmigrate_hf_give_up")
        seconds = time.monotonic() - started
    assert dag_run.state == "failed"
    ti = _sensor(dag_run)
    assert ti.state == "failed" and ti.try_number == 1, "failed once: the 3 Airflow retries are not spent"
    assert seconds >= 6, "not before the window (0.1 min)"
    text = "".join(capfd.readouterr())  # the task's log
    assert "gave up: a server cannot be reached" in text and "retry.connection_failures_minutes (0.1 min)" in text
    assert f"the slot {config.slot_name} stays on the source" in text and "clear this task" in text
    assert env.destination.password not in text
    assert _leftover_windows() == []
    assert env.src("SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s", (config.slot_name,)) == [(1,)]
    catch_up(env, config)  # the network is back: the migration resumes where it stopped
    assert_same_data(env)


def test_destination_refusing_writes_longer_than_the_other_errors_window_fails_clearly(migration_env, airflow_db,
                                                                                      capfd):
    env = migration_env
    config = _start(env, "hf_give_up", {"connection_failures_minutes": 0.1, "other_errors_minutes": 0.05})
    env.destination.execute(f'ALTER DATABASE "{env.destination_db}" SET default_transaction_read_only = on')
    try:
        dag_run = _run("pgmigrate_hf_give_up")
    finally:
        env.destination.execute(f'ALTER DATABASE "{env.destination_db}" RESET default_transaction_read_only')
    assert dag_run.state == "failed" and _sensor(dag_run).try_number == 1
    text = "".join(capfd.readouterr())  # the task's log
    assert "an error that can pass" in text and "retry.other_errors_minutes (0.05 min)" in text
    assert "read-only transaction" in text
    catch_up(env, config)
    assert_same_data(env)
