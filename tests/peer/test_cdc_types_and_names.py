"""Change data capture of every decoded type and name shape, applied exactly.

pgcopydb replays the same DML through each of its decoders (pgoutput, test_decoding, wal2json): keyed and
composite-keyed tables, names with quotes, dots, spaces, brackets and unicode, names of exactly 63 bytes, bit
strings, enums, generated columns (not sent by the decoder, computed again on the destination), tables without a
key under REPLICA IDENTITY FULL, multi-row deletes and TRUNCATE. We decode pgoutput only; the shapes are the same.
"""

from __future__ import annotations

import psycopg

from tests.peer.rig import assert_migrated, migrate

LONG = "abcdefghijklmnopqrstuvwxyz0123456789012345678901234567890123456"  # 63 bytes
LONG_UPPER = LONG.upper()

NAMES = f"""
CREATE SCHEMA "Sp1eCial .Char";
CREATE TABLE "Sp1eCial .Char"."source1testing" ("s0" serial PRIMARY KEY, "s""1" int NOT NULL);
INSERT INTO "Sp1eCial .Char"."source1testing" ("s""1") SELECT g FROM generate_series(1, 20) g;
CREATE SCHEMA "{LONG_UPPER}";
CREATE TABLE "{LONG_UPPER}"."{LONG}" ("{LONG}" serial PRIMARY KEY, "{LONG_UPPER}" int NOT NULL);
INSERT INTO "{LONG_UPPER}"."{LONG}" ("{LONG_UPPER}") SELECT g FROM generate_series(1, 5) g;
CREATE SCHEMA "Foo"".Bar";
CREATE TABLE "Foo"".Bar".":Identifer As ""Column"".$1:" (time bigserial, "[column name]" text,
                                                       PRIMARY KEY (time, "[column name]"));
CREATE SCHEMA "Unicode""Test";
CREATE TYPE public."[Status]" AS ENUM ('new', 'open', 'closed');
CREATE TABLE "Unicode""Test"."слон" (id bigserial, "слон" public."[Status]", "колонка" text,
                                      PRIMARY KEY (id, "слон"));
CREATE TABLE public.\"\"\"dqname\"\"\" (id bigserial PRIMARY KEY);
CREATE TABLE public.select (id int PRIMARY KEY, "order" text, "user" text);
INSERT INTO public.select VALUES (1, 'a', 'b');
"""

NAME_CHANGES = [
    f"""TRUNCATE "Sp1eCial .Char"."source1testing";
    INSERT INTO "Sp1eCial .Char"."source1testing" ("s""1") SELECT g FROM generate_series(1, 5) g;
    UPDATE "Sp1eCial .Char"."source1testing" SET "s""1" = "s""1" * 2;
    DELETE FROM "Sp1eCial .Char"."source1testing" WHERE "s""1" % 3 = 0;
    INSERT INTO "{LONG_UPPER}"."{LONG}" ("{LONG_UPPER}") SELECT g FROM generate_series(6, 10) g;
    UPDATE "{LONG_UPPER}"."{LONG}" SET "{LONG_UPPER}" = "{LONG_UPPER}" * 2""",
    """INSERT INTO "Foo"".Bar".":Identifer As ""Column"".$1:" ("time", "[column name]") VALUES (1, 'foo'), (7, 'x');
    UPDATE "Foo"".Bar".":Identifer As ""Column"".$1:" SET "time" = 2, "[column name]" = '[bar]' WHERE "time" = 1;
    DELETE FROM "Foo"".Bar".":Identifer As ""Column"".$1:" WHERE "time" = 7""",
    """INSERT INTO "Unicode""Test"."слон" (id, "слон", "колонка") VALUES (1, 'open', 'foo'), (5, 'new', 'bar');
    UPDATE "Unicode""Test"."слон" SET id = 2, "слон" = 'closed', "колонка" = '[bar]' WHERE id = 1;
    DELETE FROM "Unicode""Test"."слон" WHERE id = 5""",
    'INSERT INTO public."""dqname""" DEFAULT VALUES; INSERT INTO public."""dqname""" DEFAULT VALUES',
    """UPDATE public.select SET "order" = 'z', "user" = NULL; INSERT INTO public.select VALUES (2, E'\\t\\n', '\\\\')""",
]


def test_names_of_every_shape_sync(migration_env):
    migration_env.src(NAMES)
    run = migrate(migration_env, changes=NAME_CHANGES)
    assert run.cutover["verification"]["equal"] is True
    assert migration_env.dst('SELECT "time", "[column name]" FROM "Foo"".Bar".":Identifer As ""Column"".$1:"') == \
        [(2, "[bar]")]
    assert migration_env.dst('SELECT id, "слон"::text FROM "Unicode""Test"."слон"') == [(2, "closed")]
    assert_migrated(migration_env)


TYPES = """
CREATE TABLE public.t_bit_types (id serial PRIMARY KEY, a bit(3), b bit varying(5));
INSERT INTO public.t_bit_types (a, b) VALUES (B'101', B'00');
CREATE TABLE public.generated_column_test (
    id bigint PRIMARY KEY, name text,
    greet_hello text GENERATED ALWAYS AS ('Hello ' || name) STORED,
    time text GENERATED ALWAYS AS ('identifier 1' || 'now') STORED,
    email text NOT NULL,
    "table" text GENERATED ALWAYS AS ('identifier 2' || name) STORED,
    \"\"\"hel\"\"lo\"\"\" text GENERATED ALWAYS AS ('identifier 4' || name) STORED);
CREATE TABLE public.multi_delete_test (id bigint PRIMARY KEY, val text);
CREATE TABLE public.multi_delete_composite_test (id1 bigint, id2 bigint, val text, PRIMARY KEY (id1, id2));
CREATE TABLE public.single_column_table (id bigint);
ALTER TABLE public.single_column_table REPLICA IDENTITY FULL;
CREATE TABLE public.multi_column_table (id bigint, name text, email text);
ALTER TABLE public.multi_column_table REPLICA IDENTITY FULL;
CREATE TABLE public.kinds (id int PRIMARY KEY, n numeric, f float8, r real, ts timestamptz, d date, t time,
    iv interval, j json, jb jsonb, arr text[], ia int[][], u uuid, inet inet, cidr cidr, mac macaddr,
    money money, pt point, box box, rng int4range, tsv tsvector, xid8 xid8, by bytea, c char(5), vc varchar(3));
INSERT INTO public.kinds VALUES (1, 'NaN', '-Infinity', 1.5, 'infinity', '-infinity', '24:00', '-1 day 2 hours',
    '{"a": [1, "x"]}', '{"b": null}', '{"with space", "quote\\"", NULL}', '{{1,2},{3,4}}',
    'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '10.1.2.3/8', '10.0.0.0/8', '08:00:2b:01:02:03', 12.34,
    '(1,2)', '(1,1),(0,0)', '[1,5)', 'fat:2 rat:3', '18446744073709551615', '\\x00ff', 'ab', 'abc');
"""

TYPE_CHANGES = [
    "INSERT INTO public.t_bit_types (a, b) VALUES (B'10'::bit(3), B'101')",
    """INSERT INTO public.generated_column_test (id, name, email) VALUES
       (1, 'Tiger', 'tiger@wild.com'), (2, 'Elephant', 'elephant@wild.com'), (3, 'Cat', 'cat@home.net')""",
    """UPDATE public.generated_column_test SET name = 'Lion' WHERE id = 1;
       UPDATE public.generated_column_test SET email = 'lion@wild.com' WHERE email = 'tiger@wild.com'""",
    "UPDATE public.generated_column_test SET name = 'Kitten', email = 'kitten@home.com' WHERE id = 3",
    "DELETE FROM public.generated_column_test WHERE id = 2",
    """INSERT INTO public.single_column_table VALUES (1), (2), (2);
       INSERT INTO public.multi_column_table VALUES (1, 'Alice', 'alice@hello.com'), (2, 'Bob', NULL)""",
    "UPDATE public.single_column_table SET id = 3 WHERE id = 1; DELETE FROM public.multi_column_table WHERE id = 2",
    """INSERT INTO public.multi_delete_test SELECT g, 'row' || g FROM generate_series(1, 5) g;
       INSERT INTO public.multi_delete_composite_test SELECT g, g % 2, 'row' || g FROM generate_series(1, 5) g""",
    "DELETE FROM public.multi_delete_test; DELETE FROM public.multi_delete_composite_test WHERE id2 = 1",
    """INSERT INTO public.kinds SELECT id + 1, n + 1, f, r, ts, d, t, iv, j, jb, arr || 'x'::text, ia, gen_random_uuid(), inet,
       cidr, mac, money, pt, box, rng, tsv, xid8, by || '\\x01', c, vc FROM public.kinds;
       UPDATE public.kinds SET jb = jb || '{"c": "ü"}', arr = NULL, n = 1e-20 WHERE id = 1""",
]


def test_types_generated_columns_and_keyless_tables_sync(migration_env):
    migration_env.src(TYPES)
    run = migrate(migration_env, changes=TYPE_CHANGES)
    assert run.cutover["verification"]["equal"] is True
    assert migration_env.dst("SELECT id, greet_hello, email FROM public.generated_column_test ORDER BY id") == [
        (1, "Hello Lion", "lion@wild.com"), (3, "Hello Kitten", "kitten@home.com")]
    assert migration_env.dst("SELECT count(*) FROM public.multi_delete_test") == [(0,)]
    assert_migrated(migration_env)


def test_update_that_changes_nothing_in_keyless_tables(migration_env):
    migration_env.src(TYPES + "CREATE TABLE public.xpto2 (c1 text, c2 text); ALTER TABLE public.xpto2 "
                              "REPLICA IDENTITY FULL;")
    migrate(migration_env, changes=[
        "INSERT INTO public.single_column_table VALUES (1), (2)",
        "INSERT INTO public.xpto2 SELECT string_agg(md5(g::text), ''), string_agg(md5((-g)::text), '') "
        "FROM generate_series(1, 300) g",
        "UPDATE public.single_column_table SET id = id",
        "UPDATE public.xpto2 SET c1 = c1, c2 = c2",
    ])
    assert_migrated(migration_env)


def test_replica_trigger_raising_large_notices_while_changes_apply(migration_env):
    migration_env.src("""
        CREATE TABLE public.metrics (id int PRIMARY KEY, time timestamptz, name text, value numeric);
        CREATE FUNCTION public.notify_on_insert() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE NOTICE 'a row was inserted into metrics: %', repeat('a', 32 * 1024);
            RETURN NEW;
        END $$;
        CREATE TRIGGER insert_notice_trigger AFTER INSERT ON public.metrics FOR EACH ROW
            EXECUTE FUNCTION public.notify_on_insert();
        ALTER TABLE public.metrics ENABLE REPLICA TRIGGER insert_notice_trigger;""")
    def many_small_transactions(env) -> None:  # one notice-raising row per transaction, as a busy source sends
        with psycopg.connect(**env.source_info().connect_kwargs(), autocommit=True) as conn:
            for g in range(1, 301):
                conn.execute("INSERT INTO public.metrics VALUES (%s, now(), %s, %s / 3.0)", (g, f"m{g}", g))

    run = migrate(migration_env, changes=many_small_transactions)
    assert run.cutover["verification"]["equal"] is True
    # The trigger fires on the destination while changes are applied (as on a subscriber): 300 notices of 32 kB.
    assert migration_env.dst("SELECT count(*) FROM public.metrics") == [(300,)]
    assert migration_env.dst("SELECT tgenabled FROM pg_trigger WHERE tgname = 'insert_notice_trigger'") == [("R",)]
