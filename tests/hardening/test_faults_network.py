"""Servers restarted and the network cut (a TCP proxy between the worker and a server) during the full load and
incremental sync, at the engine level: each failure is clear, and the next attempt ends equal to the source."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import psycopg
import pytest

from airflow_pgmigrate.engine.connection import ConnectFailed
from airflow_pgmigrate.engine.failures import failure_kind
from airflow_pgmigrate.engine.full_load import run_full_load
from airflow_pgmigrate.engine.incremental import SyncError, run_incremental
from airflow_pgmigrate.engine.schema import migrate_schema
from airflow_pgmigrate.engine.state import MigrationState
from airflow_pgmigrate.testing.tcp_proxy import TcpProxy
from tests.hardening.rig import assert_same_data, sessions
from tests.integration.test_incremental import catch_up, start_migration

pytestmark = [pytest.mark.integration, pytest.mark.hardening]

DATA = """
CREATE TABLE public.accounts (id bigint PRIMARY KEY, owner text NOT NULL, balance numeric(14, 2), note text);
INSERT INTO public.accounts SELECT g, 'owner ' || g, g * 1.25, repeat('x', 200) FROM generate_series(1, 20000) g;
CREATE TABLE public.small (k text PRIMARY KEY, v int);
INSERT INTO public.small SELECT 'k' || g, g FROM generate_series(1, 100) g;
"""


def test_proxy_relays_cuts_and_restores(pg_servers):
    server = pg_servers.source
    with TcpProxy("127.0.0.1", server.port) as proxy:
        info = replace(server.info(), port=proxy.port)
        conn = psycopg.connect(**info.connect_kwargs(), autocommit=True)
        assert conn.execute("SELECT 41 + 1").fetchone() == (42,)
        proxy.cut()
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
        started = time.monotonic()
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(**info.connect_kwargs())
        assert time.monotonic() - started < 1 and proxy.refused == 1, "rejected at once"
        proxy.restore()
        with psycopg.connect(**info.connect_kwargs(), autocommit=True) as again:
            assert again.execute("SELECT 1").fetchone() == (1,)
        proxy.cut("blackhole")
        started = time.monotonic()
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(**replace(info, params={"connect_timeout": "1"}).connect_kwargs())
        assert time.monotonic() - started >= 0.9, "a black hole answers nothing: the client times out"
        proxy.restore()
        with psycopg.connect(**info.connect_kwargs(), autocommit=True) as again:
            assert again.execute("SELECT 2").fetchone() == (2,)


def _prepare(env, source=None):
    config = env.config(full_load={"split_tables_larger_than": "1MB", "parallel_jobs": 2},
                        throttling={"full_load": {"mb_per_second": 3}})
    state = MigrationState(env.destination_info(), config.state_schema, config.name)
    migrate_schema(config, source or env.source_info(), env.destination_info(), "pre_data", state=state)
    return config


def _copying(env) -> bool:
    return bool(sessions(env.destination, env.destination_db, "query ILIKE 'COPY%%' AND state = 'active'"))


@pytest.mark.parametrize("side", ["source", "destination"])
def test_server_restart_during_full_load_then_the_retry_ends_equal(migration_env, side):
    env = migration_env
    env.src(DATA)
    config = _prepare(env)
    errors: list[BaseException] = []

    def load() -> None:
        try:
            run_full_load(config, env.source_info(), env.destination_info())
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            errors.append(exc)

    worker = threading.Thread(target=load)
    worker.start()
    deadline = time.monotonic() + 30
    while not _copying(env):
        assert time.monotonic() < deadline and worker.is_alive(), errors
        time.sleep(0.02)
    server = env.source if side == "source" else env.destination
    server.stop("fast")
    server.start()
    worker.join(60)
    assert errors, "the restart broke the running load"
    # The session was ended, or a worker that started after the restart found the exported snapshot gone.
    assert any(words in str(errors[0]) for words in ("could not", "terminating", "connection",
                                                      "the snapshot the load copies in is gone")), errors[0]
    report = run_full_load(config, env.source_info(), env.destination_info())
    assert report["completed"]
    migrate_schema(config, env.source_info(), env.destination_info(), "post_data",
                   state=MigrationState(env.destination_info(), config.state_schema, config.name))
    env.src("UPDATE public.small SET v = -v")
    catch_up(env, config)
    assert_same_data(env)


@pytest.mark.parametrize("side", ["source", "destination"])
def test_network_cut_during_sync_fails_as_a_connection_failure_and_the_next_attempt_resumes(migration_env, side):
    """The cut happens mid-stream; the attempt fails as a connection failure, a new attempt while the network is down
    fails at once the same way, and after the network is back the next attempt (same process) catches up."""
    env = migration_env
    env.src(DATA)
    server = env.source if side == "source" else env.destination
    with TcpProxy("127.0.0.1", server.port) as proxy:
        source = replace(env.source_info(), port=proxy.port) if side == "source" else env.source_info()
        destination = replace(env.destination_info(), port=proxy.port) if side == "destination" \
            else env.destination_info()
        config = start_migration(env)
        with psycopg.connect(**env.source_info().connect_kwargs(), autocommit=True) as conn:
            for i in range(1500):
                conn.execute("UPDATE public.accounts SET balance = balance + 1 WHERE id = %s", (1 + i % 20000,))
        errors: list[BaseException] = []

        def sync() -> None:
            try:
                run_incremental(config, source, destination, window_seconds=30)
            except BaseException as exc:  # noqa: BLE001 - the test inspects it
                errors.append(exc)

        worker = threading.Thread(target=sync)
        worker.start()
        time.sleep(0.3)
        proxy.cut()
        worker.join(30)
        assert not worker.is_alive()
        assert errors and failure_kind(errors[0]) == "connection", errors
        with pytest.raises((ConnectFailed, SyncError)) as again:
            run_incremental(config, source, destination, window_seconds=5)
        assert failure_kind(again.value) == "connection"
        assert "***" not in str(again.value) and env.source.password not in str(again.value)
        proxy.restore()
        for _ in range(10):  # the earlier attempts' exceptions are still alive here: nothing they held may block
            if run_incremental(config, source, destination, window_seconds=10).caught_up:
                break
        else:
            raise AssertionError("did not catch up")
    assert env.dst("SELECT sum(balance) FROM public.accounts") == env.src("SELECT sum(balance) FROM public.accounts")
    assert_same_data(env)
