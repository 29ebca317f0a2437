"""A stop position in the middle of a transaction that spans several WAL segments.

pgcopydb's endpos scenarios stop its apply at an LSN that falls inside a transaction (between two of its rows, with
WAL switches in between) and check that the transaction is applied whole or not at all, then completely once the
stop position moves past its commit. Ours stop incremental sync at such an LSN (``target_lsn`` and
``stop_before_lsn``, what cutover and verification use) while a shorter transaction commits in the middle.
"""

from __future__ import annotations

import psycopg

from airflow_pgmigrate.engine.incremental import run_incremental
from tests.peer.rig import assert_migrated, migrate

DDL = """
CREATE TABLE public.table_a (id serial PRIMARY KEY, f1 int4, f2 text);
CREATE TABLE public.table_b (id serial PRIMARY KEY, f1 int4, f2 text[]);
INSERT INTO public.table_a (f1) SELECT g FROM generate_series(1, 10) g;
"""


def multi_wal_transaction(env, marker: int) -> tuple[str, str]:
    """One transaction of five inserts across three WAL switches, with a short transaction committing inside it;
    returns an LSN between its second and third insert, and one after its commit."""
    info = env.source_info().connect_kwargs()
    with psycopg.connect(**info) as long, psycopg.connect(**info, autocommit=True) as short:
        long.execute("INSERT INTO public.table_a (f1) VALUES (%s)", (marker,))
        long.execute("SELECT pg_switch_wal()")
        long.execute("INSERT INTO public.table_a (f1, f2) VALUES (%s, repeat('x', 3000))", (marker,))
        middle = long.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()[0]
        short.execute("INSERT INTO public.table_b (f1, f2) VALUES (%s, ARRAY['short', 'txn'])", (marker,))
        long.execute("SELECT pg_switch_wal()")
        long.execute("INSERT INTO public.table_a (f1) VALUES (%s), (%s), (%s)", (marker, marker, marker))
        long.execute("UPDATE public.table_a SET f2 = 'touched' WHERE f1 <= 3")
        long.execute("SELECT pg_switch_wal()")
        long.commit()
        end = short.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()[0]
    return middle, end


def test_stop_inside_a_multi_wal_transaction_applies_it_whole_or_not_at_all(migration_env):
    migration_env.src(DDL)
    run = migrate(migration_env, cutover=False)
    source, destination = migration_env.source_info(), migration_env.destination_info()
    rows = "SELECT count(*) FILTER (WHERE f1 = 10001001), count(*) FILTER (WHERE f2 = 'touched') FROM public.table_a"

    middle, _ = multi_wal_transaction(migration_env, 10001001)
    run_incremental(run.config, source, destination, window_seconds=20, stop_before_lsn=middle)
    assert migration_env.dst(rows) == [(0, 0)], "nothing of a transaction that commits after the stop position"
    run_incremental(run.config, source, destination, window_seconds=20, target_lsn=middle)
    assert migration_env.dst(rows) in ([(0, 0)], [(5, 3)]), "a transaction is never applied in part"

    middle, end = multi_wal_transaction(migration_env, 10001002)
    for _ in range(5):
        if run_incremental(run.config, source, destination, window_seconds=20, target_lsn=end).caught_up:
            break
    assert migration_env.dst("SELECT count(*) FROM public.table_a WHERE f1 IN (10001001, 10001002)") == [(10,)]
    assert migration_env.dst("SELECT count(*) FROM public.table_b") == [(2,)]

    multi_wal_transaction(migration_env, 10001003)  # the cutover drains it
    from airflow_pgmigrate.engine.cutover import run_cutover

    report = run_cutover(run.config, source, destination)
    migration_env.source.execute(f'ALTER DATABASE "{migration_env.source_db}" RESET default_transaction_read_only')
    assert report["verification"]["equal"] is True
    assert migration_env.dst("SELECT count(*) FROM public.table_a") == [(25,)]
    assert_migrated(migration_env)
