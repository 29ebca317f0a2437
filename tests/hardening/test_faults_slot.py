"""The replication slot: blocked while being created, killed while being created, dropped behind our back, and
missing after a failover of the source."""

from __future__ import annotations

import contextlib
import re
import threading
import time
from dataclasses import replace

import psycopg
import pytest

from airflow_pgmigrate.engine.failures import failure_kind
from airflow_pgmigrate.engine.full_load import run_full_load
from airflow_pgmigrate.engine.incremental import SyncError, run_incremental
from airflow_pgmigrate.engine.schema import migrate_schema
from airflow_pgmigrate.engine.state import MigrationState
from airflow_pgmigrate.testing.tcp_proxy import TcpProxy
from tests.hardening.rig import Child, assert_same_data, promoted_copy, waiting_on_lock
from tests.integration.test_incremental import catch_up, start_migration

pytestmark = [pytest.mark.integration, pytest.mark.hardening]

DATA = """
CREATE TABLE public.items (id int PRIMARY KEY, name text NOT NULL);
INSERT INTO public.items SELECT g, 'item ' || g FROM generate_series(1, 3000) g;
CREATE TABLE public.tags (k text PRIMARY KEY, v int);
INSERT INTO public.tags SELECT 't' || g, g FROM generate_series(1, 50) g;
"""


def wait_for(predicate, timeout: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_long_transaction_during_slot_creation_is_named_in_the_log_then_the_load_proceeds(migration_env):
    """CREATE_REPLICATION_SLOT waits for transactions that were writing: a report left idle in transaction and a
    forgotten prepared transaction. The load names each (pid, application_name, xact_start, query / gid) while it
    waits, and finishes once they end."""
    env = migration_env
    env.src(DATA)
    config = env.config()
    state = MigrationState(env.destination_info(), config.state_schema, config.name)
    migrate_schema(config, env.source_info(), env.destination_info(), "pre_data", state=state)
    kwargs = {**env.source_info().connect_kwargs(), "application_name": "nightly-report"}
    report = psycopg.connect(**kwargs)
    report.execute("UPDATE public.tags SET v = v + 1 WHERE k = 't1' /* monthly report */")
    gid = f"pgm-{env.source_db}"
    with psycopg.connect(**env.source_info().connect_kwargs()) as other:
        other.execute("INSERT INTO public.tags VALUES ('prepared', 0)")
        other.execute(f"PREPARE TRANSACTION '{gid}'")
    logged: list[str] = []
    outcome: dict[str, object] = {}

    def load() -> None:
        try:
            outcome["report"] = run_full_load(config, env.source_info(), env.destination_info(), log=logged.append)
        except Exception as exc:  # noqa: BLE001 - the test reports it
            outcome["error"] = exc

    worker = threading.Thread(target=load)
    try:
        worker.start()
        waits = {"session": "application_name='nightly-report'", "prepared": f"gid='{gid}'"}
        ended = []
        for _ in range(2):
            line = wait_for(lambda: next((x for x in logged if "waiting for slot=" in x
                                          and any(w in x for k, w in waits.items() if k not in ended)), None),
                            what="a log line naming a blocking transaction")
            assert "report" not in outcome, "the load waited"
            if waits["session"] in line:
                assert f"pid={report.info.backend_pid} " in line
                assert re.search(r"xact_start=\d{4}-\d\d-\d\dT", line), line
                assert "monthly report" in line and "pg_terminate_backend" in line
                assert f"slot={config.slot_name}" in line
                report.rollback()
                ended.append("session")
            else:
                assert "COMMIT PREPARED or ROLLBACK PREPARED" in line
                env.src(f"ROLLBACK PREPARED '{gid}'")
                ended.append("prepared")
        worker.join(60)
    finally:
        report.close()
        with contextlib.suppress(psycopg.Error):
            env.src(f"ROLLBACK PREPARED '{gid}'")
        worker.join(60)
    assert "error" not in outcome, outcome.get("error")
    assert outcome["report"]["completed"]  # type: ignore[index]
    assert_same_data(env)


def test_worker_killed_while_the_slot_waits_then_the_retry_creates_it(migration_env):
    """Killed while CREATE_REPLICATION_SLOT waits for a long transaction: the retry (while that transaction still
    runs, then after it ends) must end with one slot, the copy equal to the source, and sync working."""
    env = migration_env
    env.src(DATA)
    config = env.config()
    state = MigrationState(env.destination_info(), config.state_schema, config.name)
    migrate_schema(config, env.source_info(), env.destination_info(), "pre_data", state=state)
    blocker = psycopg.connect(**env.source_info().connect_kwargs())
    outcome: dict[str, object] = {}
    try:
        blocker.execute("UPDATE public.tags SET v = v + 1 WHERE k = 't2'")
        child = Child(env, "full_load", env.config_dict())
        child.kill_when(waiting_on_lock(env.source, env.source_db, "CREATE_REPLICATION_SLOT%"))

        def retry() -> None:
            try:
                outcome["report"] = run_full_load(config, env.source_info(), env.destination_info())
            except Exception as exc:  # noqa: BLE001 - the test reports it
                outcome["error"] = exc

        worker = threading.Thread(target=retry)
        worker.start()
        time.sleep(1.0)  # the retry starts while the killed worker's walsender still waits
        blocker.commit()
        worker.join(60)
    finally:
        blocker.close()
    assert "error" not in outcome, outcome.get("error")
    slots = env.src("SELECT slot_name FROM pg_replication_slots WHERE database = current_database()")
    assert slots == [(config.slot_name,)]
    migrate_schema(config, env.source_info(), env.destination_info(), "post_data", state=state)
    env.src("INSERT INTO public.items VALUES (99999, 'after the load')")
    catch_up(env, config)
    assert_same_data(env)


def test_slot_dropped_behind_our_back_is_explained(migration_env):
    env = migration_env
    env.src(DATA)
    config = start_migration(env)
    env.src("UPDATE public.items SET name = name || '!'")
    errors: list[BaseException] = []

    def sync() -> None:
        try:
            run_incremental(config, env.source_info(), env.destination_info(), window_seconds=20,
                            stop_when_caught_up=False)
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            errors.append(exc)

    worker = threading.Thread(target=sync)
    worker.start()
    pid = wait_for(lambda: env.src("SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s",
                                   (config.slot_name,))[0][0], what="the slot in use")
    # Someone "cleans up": ends the walsender and drops the slot.
    env.src("SELECT pg_terminate_backend(%s)", (pid,))
    wait_for(lambda: env.src("SELECT NOT active FROM pg_replication_slots WHERE slot_name = %s",
                             (config.slot_name,)), what="the slot released")
    env.src("SELECT pg_drop_replication_slot(%s)", (config.slot_name,))
    worker.join(30)
    assert errors and failure_kind(errors[0]) == "connection", errors  # the poke that lost its stream
    with pytest.raises(SyncError) as info:
        run_incremental(config, env.source_info(), env.destination_info(), window_seconds=2)
    message = str(info.value)
    assert config.slot_name in message and "does not exist" in message
    assert "fresh full load" in message and "Drop" in message
    assert failure_kind(info.value) == "permanent"


def test_failover_to_a_new_primary_without_the_slot_is_explained_and_a_fresh_load_recovers(migration_env):
    """The source is reached through a proxy (its DNS name). The failover: a standby copy of the source is promoted
    and the name now points at it; it has every committed row and the publication, not the slot. Sync stops with
    the explanation, and the fix it names (a fresh full load, here from the new primary) ends equal."""
    env = migration_env
    env.src(DATA)
    with TcpProxy("127.0.0.1", env.source.port) as proxy:
        source = replace(env.source_info(), port=proxy.port)
        config = env.config()
        state = MigrationState(env.destination_info(), config.state_schema, config.name)
        migrate_schema(config, source, env.destination_info(), "pre_data", state=state)
        run_full_load(config, source, env.destination_info())
        migrate_schema(config, source, env.destination_info(), "post_data", state=state)
        env.src("UPDATE public.tags SET v = -v")
        catch_up_through(env, config, source)
        new_primary = promoted_copy(env.source, env.servers.base / f"promoted_{env.source_db}")
        env.cleanup.append(new_primary.destroy)
        proxy.retarget("127.0.0.1", new_primary.port)
        new_primary.execute("INSERT INTO public.items VALUES (50000, 'written on the new primary')", env.source_db)
        with pytest.raises(SyncError) as info:
            run_incremental(config, source, env.destination_info(), window_seconds=2)
        message = str(info.value)
        assert config.slot_name in message and "does not exist" in message and "failed over" in message
        assert failure_kind(info.value) == "permanent"
        # The fix: a fresh full load from the new primary (it notices the slot is gone and starts over).
        report = run_full_load(config, source, env.destination_info())
        assert report["completed"] and report["resumed"] is False and report["rows"] == 3051
        new_primary.execute("INSERT INTO public.items VALUES (50001, 'after the fresh load')", env.source_db)
        catch_up_through(env, config, source)
        expected = new_primary.execute("SELECT count(*), sum(v) FROM public.tags", env.source_db) + \
            new_primary.execute("SELECT count(*), max(id) FROM public.items", env.source_db)
    assert env.dst("SELECT count(*), sum(v) FROM public.tags") + env.dst("SELECT count(*), max(id) FROM public.items") \
        == expected
    assert expected[1] == (3002, 50001)


def catch_up_through(env, config, source) -> None:
    for _ in range(10):
        if run_incremental(config, source, env.destination_info(), window_seconds=10).caught_up:
            return
    raise AssertionError("did not catch up")


def test_slot_invalidated_for_retaining_too_much_wal_is_explained(migration_env):
    """The source removed WAL the slot still needed (``max_slot_wal_keep_size``): the changes are gone, and sync says
    so instead of retrying."""
    env = migration_env
    env.src(DATA)
    config = start_migration(env)
    env.source.execute("ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'")
    env.source.execute("SELECT pg_reload_conf()")
    try:
        for _ in range(3):
            env.src("UPDATE public.items SET name = name || 'x'")
            env.src("SELECT pg_switch_wal()")
        env.src("CHECKPOINT")
        assert wait_for(lambda: env.src("SELECT wal_status = 'lost' FROM pg_replication_slots WHERE slot_name = %s",
                                        (config.slot_name,))[0][0], what="the slot invalidated")
    finally:
        env.source.execute("ALTER SYSTEM RESET max_slot_wal_keep_size")
        env.source.execute("SELECT pg_reload_conf()")
    with pytest.raises(SyncError) as info:
        run_incremental(config, env.source_info(), env.destination_info(), window_seconds=5)
    message = str(info.value)
    assert config.slot_name in message and "can no longer stream" in message and "fresh full load" in message
    assert "exceeded the maximum reserved size" in message, "the server's reason is kept"
    assert failure_kind(info.value) == "permanent"
