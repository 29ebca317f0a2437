"""The source is told "flushed" only for what the destination made durable, whatever its ``synchronous_commit``.

The destination runs ``synchronous_commit = off`` (as every test server does) on a server of its own whose WAL
writer is paused (SIGSTOP): an applied batch is committed and visible but its WAL is not written, exactly the window
in which a crash takes it back. The destination is then crashed (the WAL writer killed, immediate stop) and started
again: every change must arrive, because the slot was never confirmed past what the destination had flushed.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from airflow_pgmigrate.engine.incremental import SyncError, run_incremental
from airflow_pgmigrate.testing.local_postgres import LocalPostgres
from tests.conftest import MigrationEnv, Servers
from tests.integration.test_incremental import catch_up, start_migration

pytestmark = [pytest.mark.integration, pytest.mark.hardening]


@pytest.fixture
def crashable(migration_env) -> Iterator[MigrationEnv]:
    """The test's source database, with a destination on a server of its own (it is crashed)."""
    base = Path(tempfile.mkdtemp(prefix="pgmigrate-crash-"))
    base.chmod(0o755)  # the unprivileged server user must reach its cluster below
    server = LocalPostgres(base / "destination", major=migration_env.source.major,
                          settings={"wal_writer_delay": "10s", "bgwriter_lru_maxpages": 0}).start()
    try:
        server.create_database("crash_dst")
        yield MigrationEnv(Servers(migration_env.source, server, base), migration_env.source_db, "crash_dst",
                           migration_env.monkeypatch)
    finally:
        _resume_wal_writer(server)
        server.destroy()
        shutil.rmtree(base, ignore_errors=True)


def _wal_writer(server: LocalPostgres) -> int:
    return int(server.execute("SELECT pid FROM pg_stat_activity WHERE backend_type = 'walwriter'")[0][0])


def _pause_wal_writer(server: LocalPostgres) -> None:
    server.execute("CHECKPOINT")  # everything before this point is on disk
    os.kill(_wal_writer(server), signal.SIGSTOP)


def _resume_wal_writer(server: LocalPostgres) -> None:
    try:
        os.kill(_wal_writer(server), signal.SIGCONT)
    except Exception:  # noqa: BLE001 - the server may be down already
        pass


def _crash(server: LocalPostgres) -> None:
    """The WAL not yet written is lost: the paused WAL writer is killed, then the server stops at once."""
    os.kill(_wal_writer(server), signal.SIGKILL)
    server.stop("immediate")
    server.start()


def _confirmed(env: MigrationEnv, config) -> str:
    return env.src("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
                   (config.slot_name,))[0][0]


def test_destination_crash_with_synchronous_commit_off_loses_no_change(crashable):
    env = crashable
    env.src("CREATE TABLE public.acc (id int PRIMARY KEY, v int)")
    config = start_migration(env)
    catch_up(env, config)
    assert env.dst("SHOW synchronous_commit") == [("off",)]

    # 1. While sync runs: a batch is applied and visible, the periodic feedback goes out, the destination crashes.
    _pause_wal_writer(env.destination)

    def sync() -> None:
        try:
            run_incremental(config, env.source_info(), env.destination_info(), window_seconds=15,
                            stop_when_caught_up=False)
        except SyncError:
            pass  # the crash may end it

    worker = threading.Thread(target=sync)
    worker.start()
    before = _confirmed(env, config)
    env.src("INSERT INTO public.acc SELECT g, g FROM generate_series(1, 100) g")
    deadline = time.monotonic() + 30
    while env.dst("SELECT count(*) FROM public.acc") != [(100,)]:
        assert time.monotonic() < deadline, "the batch was not applied"
        time.sleep(0.1)
    time.sleep(2.5)  # two feedback rounds
    confirmed = _confirmed(env, config)
    _crash(env.destination)
    worker.join(60)
    catch_up(env, config)
    assert env.dst("SELECT count(*), sum(v) FROM public.acc") == [(100, 5050)]
    assert confirmed == before, "the slot was not confirmed past what the destination had flushed"

    # 2. Right after a run that returned: what it applied is durable before the source hears of it.
    _pause_wal_writer(env.destination)
    env.src("UPDATE public.acc SET v = v + 1; INSERT INTO public.acc VALUES (101, 101)")
    result = run_incremental(config, env.source_info(), env.destination_info(), window_seconds=20)
    assert result.caught_up and result.changes == 101
    _crash(env.destination)
    catch_up(env, config)
    assert env.dst("SELECT count(*), sum(v) FROM public.acc") == [(101, 5050 + 100 + 101)]


@pytest.fixture
def standby_down(migration_env) -> Iterator[MigrationEnv]:
    """The test's source database, with a destination whose synchronous standby is configured but not connected (a
    high-availability destination whose standby is down) and whose commits do not wait for it (synchronous_commit
    off, as on every test server)."""
    base = Path(tempfile.mkdtemp(prefix="pgmigrate-standby-"))
    base.chmod(0o755)
    server = LocalPostgres(base / "destination", major=migration_env.source.major,
                           settings={"synchronous_standby_names": "absent_standby"}).start()
    try:
        server.create_database("standby_dst")
        yield MigrationEnv(Servers(migration_env.source, server, base), migration_env.source_db, "standby_dst",
                           migration_env.monkeypatch)
    finally:
        server.destroy()
        shutil.rmtree(base, ignore_errors=True)


def test_making_applied_changes_durable_does_not_wait_for_a_standby(standby_down):
    """Durable means flushed on the destination itself: the end of a run never waits for a synchronous standby that
    is down (which would hold the sensor or the cutover forever)."""
    env = standby_down
    env.src("CREATE TABLE public.acc (id int PRIMARY KEY, v int)")
    config = start_migration(env)
    catch_up(env, config)
    env.src("INSERT INTO public.acc SELECT g, g FROM generate_series(1, 50) g")
    results: list = []
    worker = threading.Thread(target=lambda: results.append(run_incremental(
        config, env.source_info(), env.destination_info(), window_seconds=15)), daemon=True)
    worker.start()
    worker.join(45)
    assert not worker.is_alive(), "the run waited for the absent synchronous standby"
    assert results and results[0].caught_up and results[0].changes == 50
    assert env.dst("SELECT count(*) FROM public.acc") == [(50,)]


def test_a_restart_that_skips_unflushed_transactions_does_not_confirm_them(crashable):
    """A run ends (its replication connection dropped) after committing a batch the destination has not flushed; the
    next run skips that batch by its recorded LSN, and must not confirm it either until the destination flushed it:
    a crash then still gets every change back from the source."""
    env = crashable
    env.src("CREATE TABLE public.acc (id int PRIMARY KEY, v int)")
    config = start_migration(env)
    catch_up(env, config)
    before = _confirmed(env, config)
    _pause_wal_writer(env.destination)

    def sync(window: float) -> None:
        try:
            run_incremental(config, env.source_info(), env.destination_info(), window_seconds=window,
                            stop_when_caught_up=False)
        except SyncError:
            pass  # the dropped connection or the crash ends it

    first = threading.Thread(target=sync, args=(30,))
    first.start()
    env.src("INSERT INTO public.acc SELECT g, g FROM generate_series(1, 100) g")
    deadline = time.monotonic() + 30
    while env.dst("SELECT count(*) FROM public.acc") != [(100,)]:
        assert time.monotonic() < deadline, "the batch was not applied"
        time.sleep(0.1)
    env.src("SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = %s",
            (config.slot_name,))
    first.join(30)
    assert not first.is_alive()

    second = threading.Thread(target=sync, args=(4,))
    second.start()
    time.sleep(3.0)  # the skip happened, feedback and keepalive replies went out
    confirmed = _confirmed(env, config)
    _crash(env.destination)
    second.join(60)
    assert confirmed == before, "the slot was confirmed past what the destination had flushed"
    catch_up(env, config)
    assert env.dst("SELECT count(*), sum(v) FROM public.acc") == [(100, 5050)]
