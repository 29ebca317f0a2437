"""The applier's fast paths give the same rows as collapsing every change: an insert-only run of a table goes
straight to COPY without keying its rows, until a later change of the same batch (an update, a delete, an unchanged
TOASTed value) turns it back into net effects; COPY text is formatted a chunk at a time and must still carry every
special value (tab, newline, carriage return, backslash, the text "\\N", empty string, NULL) exactly."""

from __future__ import annotations

import psycopg
import pytest

from airflow_pgmigrate.engine.connection import connect
from airflow_pgmigrate.engine.incremental.apply import Applier, Batch, SetOps, TableTarget, copy_lines
from airflow_pgmigrate.engine.incremental.pgoutput import UNCHANGED, Change
from airflow_pgmigrate.engine.incremental.writer import write_batch
from airflow_pgmigrate.engine.names import QualifiedName
from tests.integration.test_incremental import assert_equal, catch_up, start_migration

pytestmark = pytest.mark.integration

SPECIAL = [b"tab\there", b"line\nbreak", b"carriage\rreturn", b"back\\slash", b"\\N", b"", b"\\.", b"plain"]


def _table(table: str = "fast") -> TableTarget:
    name = QualifiedName("public", table)
    return TableTarget(source=name, target=name, columns=[(0, "id"), (1, "v"), (2, "body")], key=[0],
                       key_names=["id"], upsert=False, row_filter=None)


def _row(i: int, v: bytes | None = b"0", body: bytes | None = b"x") -> list:
    return [str(i).encode(), v, body]


def test_insert_only_run_is_listed_then_keyed_when_a_later_change_repeats_a_key(migration_env):
    env = migration_env
    env.dst("CREATE TABLE public.fast (id int PRIMARY KEY, v int, body text)")
    t = _table()
    batch = Batch()
    for i in range(1, 1001):
        batch.add(1, t, Change("I", 1, _row(i, body=b"original"), None), 10)
    [ops] = batch.steps
    assert isinstance(ops, SetOps) and ops.inserted is not None and len(ops.inserted) == 1000 and not ops.rows, \
        "an insert-only run is listed as it came, without keys"
    # Later in the same batch: the inserted rows change again.
    batch.add(1, t, Change("U", 1, _row(5, b"5", UNCHANGED), None), 10)  # unchanged TOAST: keeps 'original'
    batch.add(1, t, Change("D", 1, None, _row(7, None, None), "K"), 10)
    batch.add(1, t, Change("I", 1, _row(7, b"77", b"again"), None), 10)  # the deleted key inserted anew
    batch.add(1, t, Change("D", 1, None, _row(9, None, None), "K"), 10)
    batch.add(1, t, Change("I", 1, _row(2000, b"1", None), None), 10)
    assert ops.inserted is None and len(ops.rows) == 1001, "the first other change keys the listed rows"
    with connect(env.destination_info(), autocommit=False) as conn:
        conn.execute("SET session_replication_role = replica")
        Applier(conn, count_rows=True).apply(batch)
        conn.commit()
    assert env.dst("SELECT count(*), count(*) FILTER (WHERE body = 'original') FROM public.fast") == [(1000, 998)]
    assert env.dst("SELECT id, v, body FROM public.fast WHERE id IN (5, 7, 9, 2000) ORDER BY id") == [
        (5, 5, "original"), (7, 77, "again"), (2000, 1, None)]


def test_copy_text_of_special_values_round_trips(migration_env):
    """Chunks of clean rows, chunks with NULLs and chunks with values that need escaping, mixed, through a real COPY."""
    env = migration_env
    env.dst("CREATE TABLE public.fast (id int PRIMARY KEY, v text, body text)")
    rows = []
    for i in range(1, 5001):
        special = SPECIAL[i % len(SPECIAL)] if i % 997 == 0 or 3000 < i < 3100 else b"v%d" % i
        rows.append([str(i).encode(), None if i % 13 == 0 else special, b"" if i % 7 == 0 else b"body"])
    with connect(env.destination_info(), autocommit=False) as conn:
        with conn.cursor().copy("COPY public.fast (id, v, body) FROM STDIN") as copy:
            for block in copy_lines(rows, [0, 1, 2]):
                copy.write(block)
        conn.commit()
    with psycopg.connect(**env.destination_info().connect_kwargs()) as conn:
        got = conn.execute("SELECT convert_to(id::text, 'UTF8'), convert_to(v, 'UTF8'), convert_to(body, 'UTF8') "
                           "FROM public.fast ORDER BY id").fetchall()
    assert [[bytes(i), v if v is None else bytes(v), b if b is None else bytes(b)] for i, v, b in got] == rows


def test_insert_only_transactions_then_updates_of_the_same_rows_end_equal(migration_env):
    """Through the whole sync: a bulk insert and, in later transactions of the same batch, updates (one leaving the
    TOASTed column unchanged), deletes and re-inserts of rows it inserted."""
    env = migration_env
    env.src("CREATE TABLE public.bulk (id int PRIMARY KEY, v int, body text);"
            "ALTER TABLE public.bulk ALTER COLUMN body SET STORAGE EXTERNAL")
    config = start_migration(env)
    env.src("INSERT INTO public.bulk SELECT g, 0, repeat(md5(g::text), 100) FROM generate_series(1, 3000) g")
    env.src("UPDATE public.bulk SET v = 1 WHERE id % 10 = 0")  # body arrives as unchanged TOAST
    env.src("DELETE FROM public.bulk WHERE id % 10 = 1")
    env.src("INSERT INTO public.bulk SELECT g, 2, E'tab\\there ' || g FROM generate_series(1, 3000, 10) g")
    env.src("INSERT INTO public.bulk SELECT g, NULL, NULL FROM generate_series(3001, 3500) g")
    catch_up(env, config)
    assert_equal(env, ["public.bulk"])
    assert env.dst("SELECT count(*) FILTER (WHERE v = 1), count(*) FILTER (WHERE v = 2), "
                   "count(*) FILTER (WHERE length(body) = 3200) FROM public.bulk") == [(300, 300, 2700)]


def test_staging_table_reused_in_one_transaction_holds_only_the_current_batch(migration_env):
    """A staging table is emptied with DELETE while few rows went through it, and truncated after many: either way a
    later batch of the same transaction never sees an earlier batch's rows (the UPDATE counts would not match, and
    stale values would be written)."""
    env = migration_env
    env.dst("CREATE TABLE public.fast (id int PRIMARY KEY, v int, body text);"
            "INSERT INTO public.fast SELECT g, 0, 'x' FROM generate_series(1, 20000) g")
    t = _table()
    with connect(env.destination_info(), autocommit=False) as conn:
        conn.execute("SET session_replication_role = replica")
        applier = Applier(conn, count_rows=True)
        for value, keys in ((1, range(1, 12001)), (2, range(1, 101)), (3, range(101, 151)), (4, range(151, 161))):
            batch = Batch()
            for key in keys:
                batch.add(1, t, Change("U", 1, _row(key, str(value).encode(), b"y"), None), 10)
            applier.apply(batch)  # RowsNotMatched if an earlier batch's rows were still staged
        conn.commit()
    assert env.dst("SELECT v, count(*) FROM public.fast GROUP BY v ORDER BY v") == [
        (0, 8000), (1, 11840), (2, 100), (3, 50), (4, 10)]


def test_inserts_added_as_new_rows_replay_one_by_one_in_source_order(migration_env):
    """The reader hands an insert of an insert-only run over as its new row alone (``add_insert``, no Change): the
    one-by-one replay of a failed set-based write must still see every change, in order, with its table."""
    env = migration_env
    env.dst("CREATE TABLE public.fast (id int PRIMARY KEY, v int, body text);"
            "CREATE TABLE public.other (id int PRIMARY KEY, v int, body text)")
    t = _table()
    other = _table("other")
    batch = Batch()
    for i in range(1, 6):
        batch.add_insert(1, t, _row(i), 10)
    batch.add_insert(2, other, _row(1, b"9"), 10)
    batch.add_insert(1, t, _row(6), 10)
    batch.add(1, t, Change("D", 1, None, _row(2, None, None), "K"), 10)
    batch.add_insert(1, t, _row(2, b"22", b"again"), 10)  # after a delete: no longer an insert-only run
    original = batch.original
    assert [(table.target.name, change.kind, change.new[0] if change.new else change.old[0])
            for table, change in original] == [
        ("fast", "I", b"1"), ("fast", "I", b"2"), ("fast", "I", b"3"), ("fast", "I", b"4"), ("fast", "I", b"5"),
        ("other", "I", b"1"), ("fast", "I", b"6"), ("fast", "D", b"2"), ("fast", "I", b"2")]
    assert batch.changes == 9
    with connect(env.destination_info(), autocommit=False) as conn:
        conn.execute("SET session_replication_role = replica")
        Applier(conn, count_rows=True).replay(batch)
        conn.commit()
    assert env.dst("SELECT id, v, body FROM public.fast ORDER BY id") == [
        (1, 0, "x"), (2, 22, "again"), (3, 0, "x"), (4, 0, "x"), (5, 0, "x"), (6, 0, "x")]
    assert env.dst("SELECT id, v FROM public.other") == [(1, 9)]


def test_batch_opening_with_a_truncate_replays_one_by_one(migration_env):
    """A batch whose first change is a TRUNCATE (no table run opened before it), then inserts and a swap of unique
    values the set-based UPDATE cannot take in one statement: the failed write is replayed in source order, the
    truncate included."""
    env = migration_env
    env.dst("CREATE TABLE public.fast (id int PRIMARY KEY, v int UNIQUE, body text);"
            "CREATE TABLE public.other (id int PRIMARY KEY, v int, body text);"
            "INSERT INTO public.fast VALUES (1, 1, 'x'), (2, 2, 'x'); INSERT INTO public.other VALUES (1, 1, 'old')")
    t = _table()
    other = _table("other")
    batch = Batch()
    batch.truncate([2], [other], False)
    batch.add_insert(2, other, _row(7, b"7"), 10)
    for key, value in ((1, b"0"), (2, b"1"), (1, b"2")):  # v of rows 1 and 2 swapped through 0
        batch.add(1, t, Change("U", 1, _row(key, value), None), 10)
    log: list[str] = []
    with connect(env.destination_info(), autocommit=False) as conn:
        conn.execute("SET session_replication_role = replica")
        write_batch(conn, Applier(conn, count_rows=True), batch, log.append)
        conn.commit()
    assert len(log) == 1 and "replayed one change at a time" in log[0], "the set-based UPDATE cannot swap"
    assert env.dst("SELECT id, v FROM public.fast ORDER BY id") == [(1, 2), (2, 1)]
    assert env.dst("SELECT id, v FROM public.other ORDER BY id") == [(7, 7)]


def test_special_values_and_truncates_between_inserts_through_the_sync(migration_env):
    """Through the reader's INSERT path and COPY (C or Python loops, see make test-pure-python): text with every
    character COPY escapes, the texts "\\N" and "\\.", empty strings, NULLs, a bytea of every byte value; a TRUNCATE
    between two insert runs of the same table, and updates and deletes of inserted keys later in the same batch."""
    env = migration_env
    env.src("CREATE TABLE public.special (id int PRIMARY KEY, t text, b bytea)")
    config = start_migration(env)
    texts = "ARRAY[E'tab\\there', E'line\\nbreak', E'cr\\rhere', E'back\\\\slash', E'\\\\N', E'\\\\.', '', NULL]"
    env.src(f"INSERT INTO public.special SELECT g, ({texts})[1 + g % 8], "
            "CASE WHEN g % 5 = 0 THEN NULL ELSE decode(lpad(to_hex(g % 256), 2, '0'), 'hex') || "
            "'\\x000102090a0d5c7f80ff'::bytea END FROM generate_series(1, 2000) g")
    env.src("INSERT INTO public.special VALUES (5000, 'before truncate', '\\x5c4e')")
    env.src("TRUNCATE public.special")
    env.src(f"INSERT INTO public.special SELECT g, ({texts})[1 + g % 8] || g, "
            "decode(repeat(lpad(to_hex(g % 256), 2, '0'), 3), 'hex') FROM generate_series(1, 1500) g")
    env.src("UPDATE public.special SET t = E'\\\\.\\n' || t WHERE id % 7 = 0")
    env.src("DELETE FROM public.special WHERE id % 11 = 0")
    env.src("INSERT INTO public.special VALUES (11, E'\\\\N', '\\x'), (22, '', NULL)")
    catch_up(env, config)
    assert_equal(env, ["public.special"])
    assert env.dst("SELECT count(*), count(*) FILTER (WHERE starts_with(t, E'\\\\.\\n')) FROM public.special") == [
        (1366, 171)]  # 195 prefixed, less the 24 whose text is NULL
