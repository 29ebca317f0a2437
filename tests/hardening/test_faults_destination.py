"""The destination refusing writes (a full disk, a read-only database) and a statement timeout on the destination,
during the full load and during incremental sync: a clear failure, no partial batch recorded as applied, and once
the fault is removed the next attempt ends equal to the source.

Faults used: a tablespace on a 1 MB tmpfs (the disk fills: "No space left on device", SQLSTATE 53100);
``ALTER DATABASE ... SET default_transaction_read_only = on`` (what a provider does to a database whose storage is
full, SQLSTATE 25006); ``statement_timeout`` set on the destination database while another session holds a lock the
write needs (SQLSTATE 57014).
"""

from __future__ import annotations

import pytest

from airflow_pgmigrate.engine.failures import failure_kind
from airflow_pgmigrate.engine.full_load import FullLoadError, run_full_load
from airflow_pgmigrate.engine.incremental import SyncError, run_incremental
from airflow_pgmigrate.engine.schema import migrate_schema
from airflow_pgmigrate.engine.state import MigrationState
from tests.hardening.rig import applied_lsn, assert_same_data, digests, holding, tiny_tablespace
from tests.integration.test_incremental import catch_up, start_migration

pytestmark = [pytest.mark.integration, pytest.mark.hardening]

DATA = """
CREATE TABLE public.accounts (id bigint PRIMARY KEY, owner text NOT NULL, note text);
INSERT INTO public.accounts SELECT g, 'owner ' || g, repeat('n', 100) FROM generate_series(1, 20000) g;
CREATE TABLE public.small (k text PRIMARY KEY, v int);
INSERT INTO public.small SELECT 'k' || g, g FROM generate_series(1, 100) g;
"""


def _db_setting(env, setting: str | None, value: str | None = None) -> None:
    if value is None:
        env.destination.execute(f'ALTER DATABASE "{env.destination_db}" RESET {setting}')
    else:
        env.destination.execute(f'ALTER DATABASE "{env.destination_db}" SET {setting} = {value}')


def _chunks_of(env, config, table: str) -> int:
    return env.dst(f"SELECT count(*) FROM {config.state_schema}.full_load_chunks WHERE migration = %s "  # noqa: S608
                   "AND table_name = %s", (config.name, table))[0][0]


def _pre_data(env):
    config = env.config()
    state = MigrationState(env.destination_info(), config.state_schema, config.name)
    migrate_schema(config, env.source_info(), env.destination_info(), "pre_data", state=state)
    return config, state


def _finish(env, config, state) -> None:
    report = run_full_load(config, env.source_info(), env.destination_info())
    assert report["completed"]
    migrate_schema(config, env.source_info(), env.destination_info(), "post_data", state=state)
    env.src("UPDATE public.small SET v = v * 2")
    catch_up(env, config)
    assert_same_data(env)


def test_full_disk_during_full_load_fails_clearly_and_the_retry_completes(migration_env):
    env = migration_env
    env.src(DATA)
    config, state = _pre_data(env)
    name = f"tiny_{env.destination_db}"
    with tiny_tablespace(env.destination, name):
        env.dst(f"ALTER TABLE public.accounts SET TABLESPACE {name}")
        with pytest.raises(FullLoadError) as info:
            run_full_load(config, env.source_info(), env.destination_info())
        message = str(info.value)
        assert "public.accounts" in message and "No space left on device" in message, message
        assert _chunks_of(env, config, "public.accounts") == 0, "no chunk of the failed table is recorded as copied"
        assert env.dst("SELECT count(*) FROM public.accounts") == [(0,)]
        env.dst("ALTER TABLE public.accounts SET TABLESPACE pg_default")  # the fix: room on the disk
    _finish(env, config, state)


def test_statement_timeout_during_full_load_fails_clearly_and_the_retry_completes(migration_env):
    env = migration_env
    env.src(DATA)
    config, state = _pre_data(env)
    _db_setting(env, "statement_timeout", "'300ms'")
    try:
        with holding(env.destination, env.destination_db, "LOCK TABLE public.small IN SHARE MODE"):
            with pytest.raises(FullLoadError) as info:
                run_full_load(config, env.source_info(), env.destination_info())
        message = str(info.value)
        assert "public.small" in message and "statement timeout" in message, message
        assert _chunks_of(env, config, "public.small") == 0
    finally:
        _db_setting(env, "statement_timeout")
    _finish(env, config, state)


def _sync_fault(env, config, expect: str) -> SyncError:
    """Run one attempt that must fail; check that nothing of it is recorded or written."""
    before_lsn, before = applied_lsn(env, config.name), digests(env.dst)
    with pytest.raises(SyncError) as info:
        run_incremental(config, env.source_info(), env.destination_info(), window_seconds=10)
    message = str(info.value)
    assert expect in message and "applying changes failed on the destination" in message, message
    assert f"applied_lsn={before_lsn}" in message or "recorded applied position is unchanged" in message, message
    assert failure_kind(info.value) == "transient"
    assert applied_lsn(env, config.name) == before_lsn, "the applied LSN did not move"
    assert digests(env.dst) == before, "and nothing of the failed batch is in the destination"
    return info.value


def _synced(env):
    """A migration in sync, with a recorded applied position."""
    env.src(DATA)
    config = start_migration(env)
    env.src("UPDATE public.small SET v = v + 1 WHERE k = 'k1'")
    catch_up(env, config)
    assert applied_lsn(env, config.name) is not None
    return config


def _source_changes(env) -> None:
    env.src("UPDATE public.accounts SET note = note || '+' WHERE id % 4 = 0")
    env.src("INSERT INTO public.accounts SELECT g, 'new', repeat('m', 500) FROM generate_series(30001, 34000) g")
    env.src("DELETE FROM public.small WHERE v % 10 = 0")


def test_full_disk_during_sync_rolls_the_batch_back_and_sync_resumes(migration_env):
    env = migration_env
    config = _synced(env)
    name = f"tiny_{env.destination_db}"
    with tiny_tablespace(env.destination, name, size="3m"):
        env.dst(f"ALTER TABLE public.accounts SET TABLESPACE {name}")
        _source_changes(env)
        _sync_fault(env, config, "No space left on device")
        env.dst("ALTER TABLE public.accounts SET TABLESPACE pg_default")
    catch_up(env, config)
    assert_same_data(env)


def test_read_only_destination_during_sync_fails_clearly_and_sync_resumes(migration_env):
    env = migration_env
    config = _synced(env)
    _source_changes(env)
    _db_setting(env, "default_transaction_read_only", "on")
    try:
        _sync_fault(env, config, "read-only transaction")
    finally:
        _db_setting(env, "default_transaction_read_only")
    catch_up(env, config)
    assert_same_data(env)


def test_statement_timeout_during_sync_is_not_a_lost_connection_and_sync_resumes(migration_env):
    env = migration_env
    config = _synced(env)
    _source_changes(env)
    _db_setting(env, "statement_timeout", "'300ms'")
    try:
        with holding(env.destination, env.destination_db, "SELECT * FROM public.accounts WHERE id = 4 FOR UPDATE"):
            error = _sync_fault(env, config, "statement timeout")
        assert "connection lost" not in str(error)
    finally:
        _db_setting(env, "statement_timeout")
    catch_up(env, config)
    assert_same_data(env)
