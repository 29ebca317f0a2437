"""Verification and cutover against real servers."""

from __future__ import annotations

import threading

import psycopg
import pytest

from airflow_pgmigrate.engine.cutover import CutoverError, run_cutover
from airflow_pgmigrate.engine.verify import compare, verify_migration
from tests.integration.test_incremental import TYPES, catch_up, run_workload, start_migration

pytestmark = pytest.mark.integration


def test_verification_names_missing_extra_and_different_keys(migration_env):
    migration_env.src("CREATE TABLE public.items (id int PRIMARY KEY, name text, price numeric);"
                      "INSERT INTO public.items SELECT g, 'item ' || g, g FROM generate_series(1, 5000) g")
    config = start_migration(migration_env, mapping={"columns": {"public.items": {"price": "cost"}}})
    catch_up(migration_env, config)
    assert compare(config, migration_env.source_info(), migration_env.destination_info())["equal"] is True
    migration_env.dst("SET session_replication_role = replica; DELETE FROM public.items WHERE id IN (17, 4000);"
                      "INSERT INTO public.items VALUES (9001, 'extra', 1);"
                      "UPDATE public.items SET cost = cost + 1 WHERE id = 250")
    report = compare(config, migration_env.source_info(), migration_env.destination_info())
    assert report["equal"] is False and report["differences"] == 4
    (table,) = report["tables"]
    assert sorted(table["missing"]) == ["17", "4000"] and table["extra"] == ["9001"] and table["different"] == ["250"]


def test_verification_under_a_running_write_load_reports_no_difference(migration_env):
    migration_env.src(TYPES)
    config = start_migration(migration_env)
    stop = threading.Event()
    counter = [0]
    writer = threading.Thread(target=run_workload, args=(migration_env, stop, counter, 3))
    writer.start()
    try:
        catch_up(migration_env, config)
        report = verify_migration(config, migration_env.source_info(), migration_env.destination_info())
    finally:
        stop.set()
        writer.join()
    assert report["equal"] is True, report
    assert counter[0] > 10


def test_cutover_freezes_drains_sets_sequences_verifies_and_releases(migration_env):
    migration_env.src("CREATE TABLE public.orders (id bigserial PRIMARY KEY, amount numeric);"
                      "INSERT INTO public.orders (amount) SELECT g FROM generate_series(1, 1000) g")
    config = start_migration(migration_env, cutover={"freeze_source": True, "sequence_offset": 100})
    migration_env.src("INSERT INTO public.orders (amount) SELECT g FROM generate_series(1, 50) g")
    report = run_cutover(config, migration_env.source_info(), migration_env.destination_info())
    assert report["status"] == "completed" and report["verification"]["equal"] is True
    assert [s["step"] for s in report["steps"]] == ["statistics", "freeze", "drain", "writes_stopped", "materialized_views",
                                                    "sequences", "large_objects", "verify", "final_check", "release"]
    assert report["released"] == {"slot": True, "publication": True}
    assert report["downtime_seconds"] is not None
    assert migration_env.dst("SELECT last_value FROM public.orders_id_seq") == [(1150,)]
    assert migration_env.dst("SELECT count(*) FROM public.orders") == [(1050,)]
    assert any("ALTER DATABASE" in line for line in report["next_steps"])
    with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
        migration_env.src("INSERT INTO public.orders (amount) VALUES (1)")
    migration_env.source.execute(f'ALTER DATABASE "{migration_env.source_db}" RESET default_transaction_read_only')


def test_cutover_refuses_to_finish_on_a_difference(migration_env):
    migration_env.src("CREATE TABLE public.orders (id int PRIMARY KEY, amount numeric);"
                      "INSERT INTO public.orders SELECT g, g FROM generate_series(1, 100) g")
    config = start_migration(migration_env)
    migration_env.dst("DELETE FROM public.orders WHERE id = 42")
    with pytest.raises(CutoverError) as info:
        run_cutover(config, migration_env.source_info(), migration_env.destination_info())
    assert "table public.orders (missing 1, extra 0, different 0: 42)" in str(info.value)
    assert migration_env.src("SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s",
                             (config.slot_name,)) == [(1,)], "the slot is kept"


def test_cutover_analyzes_the_tables_the_destination_has_no_statistics_for(migration_env):
    """Autovacuum never analyzes a partitioned table, and a freshly loaded table waits for it: the cutover runs
    ANALYZE, before the freeze, on every migrated table without statistics (a partitioned table first: that covers
    its partitions), and leaves the others alone."""
    env = migration_env
    quiet = "WITH (autovacuum_enabled = false)"  # carried to the destination: autovacuum cannot analyze them first
    env.src("CREATE TABLE public.events (id bigint, day date, PRIMARY KEY (id, day)) PARTITION BY RANGE (day);"
            f"CREATE TABLE public.events_2026 PARTITION OF public.events FOR VALUES FROM ('2026-01-01') TO "
            f"('2027-01-01') {quiet};"
            "INSERT INTO public.events SELECT g, date '2026-01-01' + g % 300 FROM generate_series(1, 3000) g;"
            f"CREATE TABLE public.accounts (id int PRIMARY KEY, name text) {quiet};"
            "INSERT INTO public.accounts SELECT g, 'n' || g FROM generate_series(1, 2000) g;"
            f"CREATE TABLE public.notes (id int PRIMARY KEY, body text) {quiet};"
            "INSERT INTO public.notes SELECT g, 'b' || g FROM generate_series(1, 500) g;"
            f"CREATE TABLE public.nothing (id int PRIMARY KEY) {quiet}")
    config = start_migration(env, cutover={"freeze_source": True})
    env.dst("ANALYZE public.notes")  # statistics already there: not analyzed again
    stats = "SELECT DISTINCT tablename FROM pg_stats WHERE schemaname = 'public' ORDER BY 1"
    assert [r[0] for r in env.dst(stats)] == ["notes"]

    report = run_cutover(config, env.source_info(), env.destination_info())
    assert report["status"] == "completed", report
    assert report["steps"][0]["step"] == "statistics" and report["steps"][0]["analyzed"] == 2, report["steps"][0]
    assert report["statistics"] == {"analyzed": ["public.events", "public.accounts"], "failed": {},
                                    "empty_or_no_statistics": ["public.nothing"]}, report["statistics"]
    assert [r[0] for r in env.dst(stats)] == ["accounts", "events", "events_2026", "notes"]
    assert env.dst("SELECT bool_or(inherited) FROM pg_stats WHERE schemaname = 'public' AND tablename = 'events'") \
        == [(True,)], "the partitioned table's statistics cover its partitions"
    assert not [s for s in report["next_steps"] if "ANALYZE" in s]
    env.source.execute(f'ALTER DATABASE "{env.source_db}" RESET default_transaction_read_only')


def test_a_table_the_destination_role_may_not_analyze_is_reported_not_skipped(migration_env):
    """ANALYZE skips a table its role may not analyze with a WARNING, not an error: that is reported as failed, with
    PostgreSQL's reason and the statement to run by hand (the name quoted), never counted as analyzed."""
    from dataclasses import replace

    from airflow_pgmigrate.engine.statistics import analyze_missing, statistics_next_steps

    env = migration_env
    env.src('CREATE TABLE public."Accounts" (id int PRIMARY KEY, name text) WITH (autovacuum_enabled = false);'
            'INSERT INTO public."Accounts" SELECT g, \'n\' || g FROM generate_series(1, 2000) g')
    config = start_migration(env)
    env.dst("DROP ROLE IF EXISTS pgm_stats_reader; CREATE ROLE pgm_stats_reader LOGIN PASSWORD 'reader-pw';"
            "ALTER ROLE pgm_stats_reader SET client_min_messages = error;"  # analyze_missing sets it back to see the WARNING
            'GRANT SELECT ON public."Accounts" TO pgm_stats_reader')
    try:
        reader = replace(env.destination_info(), user="pgm_stats_reader", password="reader-pw")
        result = analyze_missing(config, env.source_info(), reader)
        assert result["analyzed"] == [] and result["empty_or_no_statistics"] == []
        assert list(result["failed"]) == ["public.Accounts"], result
        assert "Accounts" in result["failed"]["public.Accounts"], result
        assert env.dst("SELECT count(*) FROM pg_stats WHERE tablename = 'Accounts'") == [(0,)]
        [step] = statistics_next_steps(result)
        assert step.endswith('runs ANALYZE "public"."Accounts";'), step
    finally:
        env.dst('REVOKE ALL ON public."Accounts" FROM pgm_stats_reader; DROP ROLE pgm_stats_reader')
