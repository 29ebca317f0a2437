"""Large transactions next to many small ones: streamed in progress, aborted after streaming, partly rolled back.

pgcopydb's file-rotation scenario writes twenty small transactions and one large one and checks that the large one
is applied atomically and every row arrives, whatever the size its buffers rotate at. Our counterpart of a buffer
limit is the source's ``logical_decoding_work_mem``: set to its minimum for the source database, every transaction
above 64 kB is streamed to us while still open (then committed, or aborted after we received its changes), and one
with a rolled-back savepoint streams changes that must be discarded.
"""

from __future__ import annotations

import psycopg

from tests.peer.rig import assert_migrated, migrate

DDL = """
CREATE TABLE public.rotation_test (id bigserial PRIMARY KEY, data text NOT NULL);
INSERT INTO public.rotation_test (data) VALUES ('before the load');
"""


def changes(env) -> None:
    with psycopg.connect(**env.source_info().connect_kwargs(), autocommit=True) as conn:
        for i in range(1, 21):
            conn.execute("INSERT INTO public.rotation_test (data) VALUES (%s)", (f"small-txn-{i:02}",))
        with conn.transaction():
            conn.execute("INSERT INTO public.rotation_test (data) SELECT repeat('large-txn-row-' || n || '-', 60) "
                         "FROM generate_series(1, 300) n")
            conn.execute("UPDATE public.rotation_test SET data = data || '!' WHERE id % 7 = 0")
        try:
            with conn.transaction():
                conn.execute("INSERT INTO public.rotation_test (data) SELECT repeat('aborted-' || n, 100) "
                             "FROM generate_series(1, 300) n")
                conn.execute("DELETE FROM public.rotation_test WHERE data LIKE 'small-txn-1%'")
                raise RuntimeError("roll back after streaming")
        except RuntimeError:
            pass
        with conn.transaction():
            conn.execute("INSERT INTO public.rotation_test (data) SELECT repeat('kept-' || n, 100) "
                         "FROM generate_series(1, 200) n")
            try:
                with conn.transaction():  # a savepoint: its streamed changes are discarded
                    conn.execute("INSERT INTO public.rotation_test (data) SELECT repeat('discarded-' || n, 100) "
                                 "FROM generate_series(1, 200) n")
                    conn.execute("DELETE FROM public.rotation_test WHERE data = 'before the load'")
                    raise RuntimeError("roll back to the savepoint")
            except RuntimeError:
                pass
            conn.execute("DELETE FROM public.rotation_test WHERE data = 'small-txn-19'")


COUNTS = ("SELECT count(*) FILTER (WHERE data LIKE 'large-txn-row-%'), count(*) FILTER (WHERE data LIKE 'aborted-%' "
          "OR data LIKE 'discarded-%'), count(*) FILTER (WHERE data LIKE 'kept-%'), count(*) FROM public.rotation_test")


def test_large_streamed_aborted_and_partly_rolled_back_transactions(migration_env):
    migration_env.source.execute(f'ALTER DATABASE "{migration_env.source_db}" SET logical_decoding_work_mem = '
                                 "'64kB'")
    migration_env.src(DDL)
    run = migrate(migration_env, changes=changes, cutover=False)
    streamed = migration_env.src("SELECT stream_txns FROM pg_stat_replication_slots WHERE slot_name = %s",
                                 (run.config.slot_name,))
    from airflow_pgmigrate.engine.cutover import run_cutover

    report = run_cutover(run.config, migration_env.source_info(), migration_env.destination_info())
    migration_env.source.execute(f'ALTER DATABASE "{migration_env.source_db}" RESET default_transaction_read_only')
    assert streamed and streamed[0][0] >= 2, f"the scenario must stream its large transactions, got {streamed}"
    assert report["verification"]["equal"] is True
    counts = migration_env.dst(COUNTS)
    assert counts == migration_env.src(COUNTS) == [(300, 0, 200, 520)], (counts, migration_env.src(COUNTS))
    assert_migrated(migration_env)
