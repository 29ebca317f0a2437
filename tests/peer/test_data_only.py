"""Data only, into tables the user prepared on the destination, while the source keeps writing.

pgcopydb's follow-data-only scenario creates the same tables on both sides, writes in the background while the
snapshot is taken and the data copied, then streams values that are easy to get wrong: newlines, carriage returns,
backslashes, quotes, text arrays, the string 'null' next to NULL (in text and in jsonb), values of megabytes, and a
transaction across WAL switches. Ours: ``migration_types: [full, incremental]``, ``conflicting_tables: ignore``.
"""

from __future__ import annotations

import threading

import psycopg

from tests.peer.rig import assert_migrated, migrate

DDL = """
CREATE TABLE public.table_a (id serial PRIMARY KEY, f1 int4, f2 text);
CREATE TABLE public.table_b (id serial PRIMARY KEY, f1 int4, f2 text[]);
CREATE TABLE public.null_texts (id serial PRIMARY KEY, text_col text, json_col jsonb);
CREATE TABLE public.update_test (id bigint PRIMARY KEY, name text);
"""

LOREM = ("Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore et "
         "dolore magna aliqua. Ut enim ad minim veniam, quis nostrud exercitation ullamco laboris nisi ut aliquip")


def dml(a: int, b: int) -> str:
    return f"""
    INSERT INTO public.table_a (f1, f2) SELECT x, (ARRAY[E'test new\\nline', E'\\\\\\\\Client\\\\S$\\\\2023\\\\Dir1',
        E'test \\rreturn', 'test ''single'' quote', E'tab\\there'])[(x - 1) % 5 + 1] FROM generate_series({a}, {b}) x;
    INSERT INTO public.table_b (f1, f2) SELECT x, (regexp_split_to_array('{LOREM}', '[ ,.]'))[x:x + 5]
        FROM generate_series({a}, {b}) x;
    """


def background(env, stop: threading.Event) -> None:
    with psycopg.connect(**env.source_info().connect_kwargs(), autocommit=True) as conn:
        while not stop.is_set():
            conn.execute("INSERT INTO public.table_a (f1) SELECT generate_series(1, 20)")


def changes(env) -> None:
    env.src(dml(11, 20))
    env.src("INSERT INTO public.null_texts (text_col, json_col) VALUES ('null', '\"null\"'), (NULL, NULL), "
            "('NULL', 'null'), ('\\N', '{}')")
    with psycopg.connect(**env.source_info().connect_kwargs()) as conn:
        conn.execute("INSERT INTO public.table_a (f1) VALUES (101)")
        conn.execute("SELECT pg_switch_wal()")
        conn.execute("INSERT INTO public.table_a (f1) VALUES (102)")
        conn.execute("SELECT pg_switch_wal()")
        conn.commit()
    env.src("INSERT INTO public.table_a (f1, f2) SELECT x, repeat('x', x) FROM "
            "generate_series(1024, 1024 * 1024, 128 * 1024) x")
    env.src("BEGIN; INSERT INTO public.update_test VALUES (1, 'a'), (2, 'b'); COMMIT;"
            "BEGIN; UPDATE public.update_test SET name = 'c' WHERE id = 1; COMMIT;"
            "BEGIN; UPDATE public.update_test SET name = 'd' WHERE id = 2; COMMIT;")


def test_data_only_into_prepared_tables_under_background_writes(migration_env):
    migration_env.src(DDL)
    migration_env.dst(DDL)
    migration_env.src(dml(1, 10))
    stop = threading.Event()
    writer = threading.Thread(target=background, args=(migration_env, stop))
    writer.start()
    try:
        def during(env) -> None:
            stop.set()
            writer.join()
            changes(env)

        run = migrate(migration_env, migration_types=["full", "incremental"], conflicting_tables="ignore",
                      changes=during)
    finally:
        stop.set()
        writer.join()
    assert run.cutover["verification"]["equal"] is True
    assert migration_env.dst("SELECT text_col, json_col::text FROM public.null_texts ORDER BY id") == [
        ("null", '"null"'), (None, None), ("NULL", "null"), ("\\N", "{}")]
    assert migration_env.dst("TABLE public.update_test ORDER BY id") == [(1, "c"), (2, "d")]
    # The prepared tables' sequences are the user's: the cutover sets them from the source all the same.
    assert_migrated(migration_env)
