"""Incremental sync review: batching edge cases, partial applies, streamed subtransactions, against real servers."""

from __future__ import annotations

import psycopg
import pytest

from airflow_pgmigrate.engine import incremental
from airflow_pgmigrate.engine.incremental import SyncError, run_incremental
from tests.integration.test_incremental import assert_equal, catch_up, start_migration

pytestmark = pytest.mark.integration


def src_transaction(env, statements: list[str]) -> None:
    """Run ``statements`` in one source transaction."""
    with psycopg.connect(**env.source_info().connect_kwargs()) as conn:
        for statement in statements:
            conn.execute(statement)


def test_collapsing_sequences_in_one_batch_are_exact(migration_env):
    migration_env.src(
        "CREATE TABLE public.k (id int PRIMARY KEY, u int UNIQUE, t text, big text);"
        "ALTER TABLE public.k ALTER COLUMN big SET STORAGE EXTERNAL;"  # TOASTed out of line: UPDATEs leave it out
        "INSERT INTO public.k SELECT g, g, 'row ' || g, repeat(md5(g::text), 500) FROM generate_series(1, 20) g;"
        "CREATE TABLE public.other (id int PRIMARY KEY, v text);"
        "INSERT INTO public.other SELECT g, 'o' || g FROM generate_series(1, 5) g")
    config = start_migration(migration_env)
    # Everything below is one backlog: one batch.
    migration_env.src("INSERT INTO public.k VALUES (100, 100, 'a', 'x'); DELETE FROM public.k WHERE id = 100;"
                      "INSERT INTO public.k VALUES (100, 101, 'b', 'y')")                 # insert-delete-insert
    migration_env.src("DELETE FROM public.k WHERE id = 1; INSERT INTO public.k VALUES (1, 1, 'again', 'z')")
    migration_env.src("UPDATE public.k SET t = 'upd' WHERE id = 1")                    # update after delete+insert
    migration_env.src("INSERT INTO public.k VALUES (200, 200, 'gone', 'g'); DELETE FROM public.k WHERE id = 200")
    migration_env.src("INSERT INTO public.k VALUES (300, 300, 'toast', repeat('q', 9000))")
    migration_env.src("UPDATE public.k SET t = 'toast kept' WHERE id = 300")            # big is UNCHANGED
    migration_env.src("UPDATE public.k SET t = 'toast kept too' WHERE id = 2")          # big is UNCHANGED
    # Two rows swap a unique non-key value: the set-based UPDATE trips, the replay must be exact.
    src_transaction(migration_env, ["UPDATE public.k SET u = -1 WHERE id = 3", "UPDATE public.k SET u = 3 WHERE id = 4",
                                    "UPDATE public.k SET u = 4 WHERE id = 3"])
    # A key update, then changes to the new key and the old key.
    migration_env.src("UPDATE public.k SET id = 1005 WHERE id = 5")
    migration_env.src("UPDATE public.k SET t = 'after move' WHERE id = 1005")
    migration_env.src("INSERT INTO public.k VALUES (5, 5005, 'new five', 'n')")
    migration_env.src("UPDATE public.k SET id = 1006 WHERE id = 6; DELETE FROM public.k WHERE id = 1006")
    migration_env.src("DELETE FROM public.k WHERE id = 7; UPDATE public.k SET id = 7 WHERE id = 8;"
                      "UPDATE public.k SET t = 'moved into 7' WHERE id = 7")
    # Text that needs escaping in COPY, arrays and json with backslashes.
    migration_env.src("INSERT INTO public.k VALUES (400, 400, E'tab\\there\\nnew\\\\line\\r', E'\\\\N')")
    migration_env.src("INSERT INTO public.k VALUES (401, 401, '{\"a\\\\\\\\b\": \"c\\\\\\\\d\"}', "
                      "E'{\"x\\\\\\\\y\",\"\\\\\\\\\"}')")
    migration_env.src("UPDATE public.k SET t = E'x\\\\y\\tz' WHERE id = 9")
    # Truncate, then inserts, in the same batch.
    migration_env.src("UPDATE public.other SET v = 'before truncate' WHERE id = 1")
    migration_env.src("TRUNCATE public.other; INSERT INTO public.other VALUES (1, 'after'), (9, 'nine')")
    migration_env.src("UPDATE public.other SET v = 'after 2' WHERE id = 9")
    catch_up(migration_env, config)
    assert_equal(migration_env, ["public.k", "public.other"])


def test_set_based_failure_in_a_partial_apply_is_replayed(migration_env, monkeypatch):
    migration_env.src("CREATE TABLE public.uq (id int PRIMARY KEY, u int NOT NULL UNIQUE, pad text);"
                      "INSERT INTO public.uq SELECT g, g, 'p' FROM generate_series(1, 500) g")
    config = start_migration(migration_env)
    # One transaction whose first part (written before its commit, BATCH_BYTES) swaps unique values.
    statements = ["UPDATE public.uq SET u = -1 WHERE id = 1", "UPDATE public.uq SET u = 1 WHERE id = 2",
                  "UPDATE public.uq SET u = 2 WHERE id = 1"]
    statements += [f"UPDATE public.uq SET pad = 'pad {i}' WHERE id = {i}" for i in range(3, 400)]
    src_transaction(migration_env, statements)
    monkeypatch.setattr(incremental, "BATCH_BYTES", 4000)
    catch_up(migration_env, config)
    assert_equal(migration_env, ["public.uq"])


def test_a_replayed_batch_does_not_break_the_next_batches(migration_env, monkeypatch):
    migration_env.src("CREATE TABLE public.uq (id int PRIMARY KEY, u int NOT NULL UNIQUE, pad text);"
                      "INSERT INTO public.uq SELECT g, g, 'p' FROM generate_series(1, 500) g")
    config = start_migration(migration_env)
    src_transaction(migration_env, ["UPDATE public.uq SET u = -1 WHERE id = 1",
                                    "UPDATE public.uq SET u = 1 WHERE id = 2", "UPDATE public.uq SET u = 2 WHERE id = 1"])
    for i in range(3, 10):
        migration_env.src(f"UPDATE public.uq SET u = u + 1000, pad = 'later' WHERE id = {i}")
    monkeypatch.setattr(incremental, "BATCH_CHANGES", 3)  # the swap's three changes, then batches of three
    lines: list[str] = []
    result = run_incremental(config, migration_env.source_info(), migration_env.destination_info(),
                             window_seconds=20, log=lines.append)
    assert result.caught_up
    assert_equal(migration_env, ["public.uq"])
    # Only the batch with the swap falls back to one-by-one; the set-based staging survives its rollback.
    assert sum("replayed one change at a time" in line for line in lines) == 1, lines


def test_a_column_added_on_the_source_then_on_the_destination_resumes_exactly(migration_env):
    migration_env.src("CREATE TABLE public.grow (id int PRIMARY KEY, v text);"
                      "INSERT INTO public.grow SELECT g, 'v' || g FROM generate_series(1, 5) g")
    config = start_migration(migration_env)
    # Changes from before the column exists, then after: one backlog, so one batch.
    migration_env.src("UPDATE public.grow SET v = 'first' WHERE id = 1")
    migration_env.src("INSERT INTO public.grow VALUES (6, 'six')")
    migration_env.src("ALTER TABLE public.grow ADD COLUMN w int")
    migration_env.src("UPDATE public.grow SET w = 5 WHERE id = 2")
    migration_env.src("UPDATE public.grow SET w = 6, v = 'both' WHERE id = 1")
    migration_env.src("INSERT INTO public.grow VALUES (10, 'ten', 10)")
    with pytest.raises(SyncError, match="has a column 'w' that the destination table public.grow lacks"):
        catch_up(migration_env, config)
    # What the message asks for; the changes from before the column existed must not stop the sync again.
    migration_env.dst("ALTER TABLE public.grow ADD COLUMN w int")
    catch_up(migration_env, config)
    assert_equal(migration_env, ["public.grow"])


def test_a_replica_identity_change_mid_batch_keeps_rows_exact(migration_env):
    migration_env.src("CREATE TABLE public.ri (id int PRIMARY KEY, code text NOT NULL, v text);"
                      "CREATE UNIQUE INDEX ri_code ON public.ri (code);"
                      "INSERT INTO public.ri SELECT g, 'c' || g, 'v' FROM generate_series(1, 10) g")
    config = start_migration(migration_env)
    migration_env.src("UPDATE public.ri SET v = 'before' WHERE id = 1")
    migration_env.src("ALTER TABLE public.ri REPLICA IDENTITY USING INDEX ri_code")
    migration_env.src("DELETE FROM public.ri WHERE id = 2")
    migration_env.src("UPDATE public.ri SET v = 'after' WHERE id = 3")
    catch_up(migration_env, config)
    assert_equal(migration_env, ["public.ri"])


def test_changes_to_partitions_of_a_selected_partitioned_table_are_applied(migration_env):
    migration_env.src("CREATE TABLE public.p (id int PRIMARY KEY, v text) PARTITION BY RANGE (id);"
                      "CREATE TABLE public.p1 PARTITION OF public.p FOR VALUES FROM (0) TO (100);"
                      "CREATE TABLE public.p2 PARTITION OF public.p FOR VALUES FROM (100) TO (200);"
                      "INSERT INTO public.p SELECT g, 'v' FROM generate_series(1, 150) g")
    # Selecting the partitioned table selects its partitions: the full load copies them, the sync must follow.
    config = start_migration(migration_env, objects={"tables": ["public.p"]})
    migration_env.src("UPDATE public.p SET v = 'changed' WHERE id IN (5, 150)")
    migration_env.src("INSERT INTO public.p VALUES (0, 'new'), (199, 'new')")
    migration_env.src("DELETE FROM public.p WHERE id IN (6, 160)")
    catch_up(migration_env, config)
    assert_equal(migration_env, ["public.p1", "public.p2"])


def test_a_partition_created_after_the_full_load_stops_the_sync(migration_env):
    migration_env.src("CREATE TABLE public.p (id int PRIMARY KEY, v text) PARTITION BY RANGE (id);"
                      "CREATE TABLE public.p1 PARTITION OF public.p FOR VALUES FROM (0) TO (100);"
                      "INSERT INTO public.p SELECT g, 'v' FROM generate_series(1, 50) g")
    config = start_migration(migration_env, objects={"tables": ["public.p"]})
    migration_env.src("UPDATE public.p SET v = 'before' WHERE id = 1")
    catch_up(migration_env, config)
    migration_env.src("CREATE TABLE public.p2 PARTITION OF public.p FOR VALUES FROM (100) TO (200);"
                      "INSERT INTO public.p VALUES (150, 'lost without the check')")
    with pytest.raises(SyncError) as info:
        catch_up(migration_env, config)
    assert "public.p2 (of public.p)" in str(info.value) and "created after the full load" in str(info.value)
    # Excluding the new partition on purpose lets the sync go on.
    excluded = migration_env.config(objects={"tables": ["public.p"], "exclude": ["public.p2"]})
    catch_up(migration_env, excluded)
    assert migration_env.dst("SELECT v FROM public.p1 WHERE id = 1") == [("before",)]


def test_row_filter_on_a_table_without_key(migration_env):
    migration_env.src("CREATE TABLE public.nk (a int, b text); ALTER TABLE public.nk REPLICA IDENTITY FULL;"
                      "INSERT INTO public.nk SELECT g, 'r' || g FROM generate_series(1, 20) g")
    config = start_migration(migration_env, filters={"public.nk": "a > 10"})
    migration_env.src("INSERT INTO public.nk VALUES (1, 'out'), (50, 'in')")
    migration_env.src("UPDATE public.nk SET a = 0 WHERE a = 15")               # moves out
    migration_env.src("UPDATE public.nk SET a = 100 WHERE a = 3")              # moves in
    migration_env.src("UPDATE public.nk SET b = 'still out' WHERE a = 4")
    migration_env.src("UPDATE public.nk SET b = 'still in' WHERE a = 12")
    catch_up(migration_env, config)
    assert migration_env.dst("SELECT a, b FROM public.nk ORDER BY a, b") == \
        migration_env.src("SELECT a, b FROM public.nk WHERE a > 10 ORDER BY a, b")


@pytest.fixture
def small_decoding_memory(migration_env):
    """Transactions over 64 kB are streamed in pieces (protocol 2)."""
    migration_env.source.execute("ALTER SYSTEM SET logical_decoding_work_mem = '64kB'")
    migration_env.source.execute("SELECT pg_reload_conf()")
    try:
        yield
    finally:
        migration_env.source.execute("ALTER SYSTEM RESET logical_decoding_work_mem")
        migration_env.source.execute("SELECT pg_reload_conf()")


def test_streamed_transaction_with_rolled_back_subtransactions(migration_env, small_decoding_memory):
    migration_env.src("CREATE TABLE public.log (id int PRIMARY KEY, line text);"
                      "CREATE TABLE public.kv (k int PRIMARY KEY, v text);"
                      "INSERT INTO public.kv SELECT g, 'v' FROM generate_series(1, 100) g")
    config = start_migration(migration_env)
    src_transaction(migration_env, [
        "INSERT INTO public.log SELECT g, repeat('a', 100) FROM generate_series(1, 3000) g",
        "SAVEPOINT s1",
        "INSERT INTO public.log SELECT g, 'aborted' FROM generate_series(3001, 6000) g",
        "UPDATE public.kv SET v = 'aborted' WHERE k <= 50",
        "ROLLBACK TO SAVEPOINT s1",
        "UPDATE public.kv SET v = 'kept' WHERE k <= 10",
        "SAVEPOINT s2",
        "INSERT INTO public.log SELECT g, repeat('b', 100) FROM generate_series(6001, 8000) g",
        "SAVEPOINT s3",
        "DELETE FROM public.log WHERE id <= 1000",
        "RELEASE SAVEPOINT s3",
        "ROLLBACK TO SAVEPOINT s2",
        "SAVEPOINT s4",
        "INSERT INTO public.log SELECT g, repeat('c', 100) FROM generate_series(8001, 10000) g",
        "RELEASE SAVEPOINT s4",
        "DELETE FROM public.log WHERE id % 7 = 0",
    ])
    catch_up(migration_env, config)
    assert_equal(migration_env, ["public.log", "public.kv"])
    assert migration_env.dst("SELECT count(*) FROM public.log WHERE line = 'aborted' OR id BETWEEN 6001 AND 8000") \
        == [(0,)]


def test_streamed_transaction_with_partial_applies(migration_env, small_decoding_memory, monkeypatch):
    migration_env.src("CREATE TABLE public.uq (id int PRIMARY KEY, u int NOT NULL UNIQUE, pad text);"
                      "INSERT INTO public.uq SELECT g, g, 'p' FROM generate_series(1, 3000) g")
    config = start_migration(migration_env)
    migration_env.src("UPDATE public.uq SET pad = 'small' WHERE id = 1")  # waits in the batch
    src_transaction(migration_env, [
        "UPDATE public.uq SET pad = repeat('x', 100)",
        "SAVEPOINT s",
        "UPDATE public.uq SET u = u + 100000",
        "ROLLBACK TO SAVEPOINT s",
        "UPDATE public.uq SET u = -1 WHERE id = 1", "UPDATE public.uq SET u = 1 WHERE id = 2",
        "UPDATE public.uq SET u = 2 WHERE id = 1",
        "UPDATE public.uq SET pad = repeat('y', 100) WHERE id > 2",  # the swap is in a part written early
        "DELETE FROM public.uq WHERE id > 2500",
    ])
    monkeypatch.setattr(incremental, "BATCH_BYTES", 50_000)
    catch_up(migration_env, config)
    assert_equal(migration_env, ["public.uq"])


@pytest.mark.parametrize("batch_changes", [4, 5])
def test_a_transaction_ending_in_a_partial_write_is_not_confirmed_before_its_commit(migration_env, batch_changes):
    """With 4, the transaction's last change fills the batch: it is written as a partial write and only its progress
    is left to commit. The destination fails right there: the source must not have been told it is flushed, so the
    next runs get it again (with 5, the same failure hits a whole batch)."""
    env = migration_env
    env.src("CREATE TABLE public.t (id int PRIMARY KEY, v text)")
    config = start_migration(env)
    assert run_incremental(config, env.source_info(), env.destination_info(), window_seconds=10).caught_up
    env.src("INSERT INTO public.t SELECT g, 'x' FROM generate_series(1, 4) g")
    patch = pytest.MonkeyPatch()
    patch.setattr(incremental, "BATCH_CHANGES", batch_changes)
    patch.setattr(incremental, "FEEDBACK_SECONDS", 0.0)
    real_submit, real_write = incremental._Writer.submit, incremental._Writer._write

    def submit(self, item):  # a fast writer: the partial write is done before the Commit is read
        real_submit(self, item)
        if item[0] == "partial":
            self.drain()

    def write(self, item):  # the destination fails at the commit that would record the transaction
        if item[0] in ("progress", "commit"):
            raise psycopg.OperationalError("simulated: destination connection lost at commit")
        real_write(self, item)

    patch.setattr(incremental._Writer, "submit", submit)
    patch.setattr(incremental._Writer, "_write", write)
    try:
        with pytest.raises(SyncError):
            run_incremental(config, env.source_info(), env.destination_info(), window_seconds=10)
    finally:
        patch.undo()
    catch_up(env, config)
    assert env.dst("SELECT count(*) FROM public.t") == [(4,)]

