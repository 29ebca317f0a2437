"""Unit edge cases of a clone: odd tables, odd values, odd names, each migrated whole and compared independently.

Situations a user of pgcopydb expects to clone (its ``unit`` scenarios): a table without columns, a table of only
generated columns, inheritance with rows in the parent and the children, exclusion constraints, identity columns and
standalone sequences, strings with newlines and backslashes, quotes in names, a NOT VALID check, a long partial
index, text search vectors, a function whose EXECUTE is revoked.
"""

from __future__ import annotations

from contextlib import contextmanager

import pytest

from tests.peer.rig import assert_migrated, migrate

NO_COLUMNS = """
CREATE TABLE public.nocols ();
INSERT INTO public.nocols DEFAULT VALUES; INSERT INTO public.nocols DEFAULT VALUES;
INSERT INTO public.nocols DEFAULT VALUES;
ALTER TABLE public.nocols REPLICA IDENTITY FULL;
CREATE TABLE public.gen (nb int GENERATED ALWAYS AS (1) STORED);
INSERT INTO public.gen SELECT FROM generate_series(1, 5);
ALTER TABLE public.gen REPLICA IDENTITY FULL;
"""


def test_tables_without_columns_copy_and_sync_their_rows(migration_env):
    migration_env.src(NO_COLUMNS)
    run = migrate(migration_env, changes=[
        "INSERT INTO public.nocols SELECT FROM generate_series(1, 4)",
        "DELETE FROM public.nocols WHERE ctid = (SELECT min(ctid) FROM public.nocols)",
        "INSERT INTO public.gen DEFAULT VALUES",
        "UPDATE public.gen SET nb = DEFAULT",
        "DELETE FROM public.gen WHERE ctid = (SELECT max(ctid) FROM public.gen)",
    ])
    assert run.full_load["tables"]["public.nocols"]["rows"] == 3
    assert run.full_load["tables"]["public.gen"]["rows"] == 5
    assert migration_env.dst("SELECT count(*) FROM public.nocols") == [(6,)]
    assert migration_env.dst("SELECT count(*), sum(nb) FROM public.gen") == [(5, 5)]
    assert run.cutover["verification"]["equal"] is True
    assert_migrated(migration_env)


def test_tables_without_columns_full_load_only(migration_env):
    migration_env.src(NO_COLUMNS)
    migrate(migration_env, migration_types=["schema", "full"], cutover=False)
    assert migration_env.dst("SELECT (SELECT count(*) FROM public.nocols), (SELECT count(*) FROM public.gen)") \
        == [(3, 5)]
    assert_migrated(migration_env)


@pytest.mark.parametrize("objects, named", [
    ({"tables": ["public.Orders"]}, "objects.tables: [public.Orders]"),
    ({"schemas": ["public"], "exclude": ["public.*"]}, "objects.exclude: [public.*]"),
])
def test_full_load_with_nothing_selected_says_so(migration_env, objects, named):
    from airflow_pgmigrate.engine.full_load import FullLoadError, run_full_load

    migration_env.src("CREATE TABLE public.orders (id int PRIMARY KEY)")
    config = migration_env.config(objects=objects)
    with pytest.raises(FullLoadError) as info:
        run_full_load(config, migration_env.source_info(), migration_env.destination_info())
    message = str(info.value)
    assert message.startswith("nothing selected: ") and named in message and "objects.tables" in message
    assert migration_env.src("SELECT count(*) FROM pg_publication") == [(0,)]
    assert migration_env.src("SELECT count(*) FROM pg_replication_slots WHERE database = current_database()") \
        == [(0,)]


EDGES = """
CREATE TABLE public.parent_model (id integer NOT NULL, a integer NOT NULL, b boolean NOT NULL,
                                  CONSTRAINT pk_parent_model PRIMARY KEY (id));
CREATE TABLE public.child_model_1 (c jsonb NOT NULL, CONSTRAINT pk_child_model_1 PRIMARY KEY (id))
    INHERITS (public.parent_model);
CREATE TABLE public.child_model_2 (d integer NOT NULL, CONSTRAINT pk_child_model_2 PRIMARY KEY (id))
    INHERITS (public.parent_model);
INSERT INTO public.parent_model SELECT s, 0, true FROM generate_series(1, 7) s;
INSERT INTO public.child_model_1 (id, a, b, c) SELECT 10000 + s, 1, false, '[1, 2, 3, 4]' FROM generate_series(1, 1000) s;
INSERT INTO public.child_model_2 (id, a, b, d) SELECT 20000 + s, 1, false, 1313 FROM generate_series(1, 1000) s;
CREATE TABLE public.exclcon (a integer, b integer);
INSERT INTO public.exclcon VALUES (1, 2), (3, 4);
ALTER TABLE public.exclcon ADD CONSTRAINT constraint_fail_idx EXCLUDE USING btree (a WITH =);
ALTER TABLE public.exclcon REPLICA IDENTITY FULL;
CREATE TABLE public.excl_with_pkey (id integer NOT NULL PRIMARY KEY, val integer NOT NULL,
                                    CONSTRAINT excl_with_pkey_excl EXCLUDE USING btree (val WITH =));
INSERT INTO public.excl_with_pkey VALUES (1, 10), (2, 20), (3, 30);
CREATE SCHEMA \"\"\"abc\"\"\";
CREATE TYPE \"\"\"abc\"\"\".state AS ENUM ('PROPOSED', 'SCHEDULED', 'STARTED');
CREATE TABLE \"\"\"abc\"\"\".job (id bigint PRIMARY KEY, state \"\"\"abc\"\"\".state DEFAULT 'SCHEDULED' NOT NULL,
                            date date NOT NULL);
CREATE INDEX indexname ON \"\"\"abc\"\"\".job USING btree (state) WHERE (state = 'SCHEDULED');
INSERT INTO \"\"\"abc\"\"\".job VALUES (1, 'PROPOSED', '2024-01-01'), (2, DEFAULT, '2024-02-29');
CREATE TABLE public.employees (name character varying NOT NULL, emp_id uuid PRIMARY KEY);
INSERT INTO public.employees VALUES ('abcdef', gen_random_uuid());
ALTER TABLE public.employees ADD CONSTRAINT chk_name_not_abc CHECK ((name)::text !~ 'abc'::text) NOT VALID;
CREATE TABLE public.ref_admin_commune (id character varying NOT NULL PRIMARY KEY, nom character varying(50),
                                       test text GENERATED ALWAYS AS (upper((nom)::text)) STORED);
INSERT INTO public.ref_admin_commune (id, nom) VALUES ('1', 'paris'), ('2', NULL);
CREATE TABLE public.test_table (id varchar(16) NOT NULL, event_name varchar(64) NOT NULL,
                                audited_obj_id varchar(16) NOT NULL, CONSTRAINT id PRIMARY KEY (id));
CREATE INDEX idx_test_table_partial ON public.test_table USING btree (audited_obj_id, id)
    WHERE ((event_name)::text = ANY (ARRAY[%(names)s]));
INSERT INTO public.test_table SELECT 'id' || g, 'ds_event_' || (g %% 120), 'o' || g FROM generate_series(1, 300) g;
CREATE TABLE public.test_tbl (id bigint NOT NULL GENERATED ALWAYS AS IDENTITY PRIMARY KEY, f1 text);
INSERT INTO public.test_tbl (f1) VALUES (E'aaa\\naaa'), (E'bbb\\r\\nbbb'), ('ccc'), (E'back\\\\slash\\ttab');
CREATE TABLE public.\"\"\"dqname\"\"\" (id integer PRIMARY KEY);
INSERT INTO public.\"\"\"dqname\"\"\" VALUES (1);
CREATE TABLE public.\"\"\"long\"\"\" (\"\"\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"\"\" INT PRIMARY KEY);
INSERT INTO public.\"\"\"long\"\"\" VALUES (1);
CREATE VIEW public.v_coll_test AS SELECT 'foo' COLLATE "C" AS foo;
CREATE VIEW public.v_coll_test2 AS SELECT * FROM public.v_coll_test;
CREATE TABLE public.tsv (id bigint PRIMARY KEY, title text, body text, tsv tsvector);
INSERT INTO public.tsv VALUES (1, 'hello world', 'a test document',
                               to_tsvector('english', 'hello world this is a test document'));
CREATE FUNCTION public.test_function_acl(x integer, y integer) RETURNS integer LANGUAGE sql IMMUTABLE STRICT
    AS $$ SELECT $1 + $2 $$;
REVOKE EXECUTE ON FUNCTION public.test_function_acl(integer, integer) FROM PUBLIC;
"""

EDGE_CHANGES = [
    "INSERT INTO public.child_model_1 (id, a, b, c) VALUES (30000, 2, true, '[]'); "
    "UPDATE public.parent_model SET a = a + 1 WHERE id IN (1, 10001, 20001); DELETE FROM public.child_model_2 "
    "WHERE id = 20002; INSERT INTO public.parent_model VALUES (8, 8, false)",
    "INSERT INTO public.exclcon VALUES (5, 6); UPDATE public.exclcon SET b = 0 WHERE a = 1",
    'INSERT INTO """abc""".job (id, date) VALUES (3, \'2024-03-01\'); '
    'UPDATE """abc""".job SET state = \'STARTED\' WHERE id = 1',
    "INSERT INTO public.test_tbl (f1) VALUES (E'new\\nline\\r\\n'), (NULL), ('')",
    "UPDATE public.ref_admin_commune SET nom = 'lyon' WHERE id = '2'",
]


def test_unit_objects_and_values(migration_env):
    names = ", ".join(f"'ds_event_{i}'::text" for i in range(110))
    migration_env.src(EDGES % {"names": names})
    run = migrate(migration_env, changes=EDGE_CHANGES)
    assert run.cutover["verification"]["equal"] is True
    assert migration_env.dst("SELECT count(*) FROM ONLY public.parent_model") == [(8,)]
    assert migration_env.dst("SELECT f1 FROM public.test_tbl ORDER BY id LIMIT 2") == [("aaa\naaa",),
                                                                                     ("bbb\r\nbbb",)]
    assert migration_env.dst("SELECT convalidated FROM pg_constraint WHERE conname = 'chk_name_not_abc'") == \
        [(False,)]
    assert migration_env.dst("SELECT test FROM public.ref_admin_commune ORDER BY id") == [("PARIS",), ("LYON",)]
    assert migration_env.dst("SELECT count(*) FROM pg_indexes WHERE indexname = 'idx_test_table_partial'") == [(1,)]
    assert_migrated(migration_env)


SEQUENCES = """
CREATE SEQUENCE public.default_table_id_seq;
CREATE TABLE public.default_table (id integer PRIMARY KEY DEFAULT nextval('public.default_table_id_seq'));
SELECT setval('public.default_table_id_seq', 667);
INSERT INTO public.default_table DEFAULT VALUES;
CREATE TABLE public.identity_table (id integer PRIMARY KEY GENERATED ALWAYS AS IDENTITY);
SELECT setval('public.identity_table_id_seq', 668);
CREATE SEQUENCE public.standalone_id_seq;
SELECT setval('public.standalone_id_seq', 669);
CREATE SEQUENCE public.standalone_smallint_id_seq AS smallint;
SELECT setval('public.standalone_smallint_id_seq', 670);
CREATE SEQUENCE public.standalone_minvalue_id_seq MINVALUE 671;
"""


def test_sequences_used_by_tables_keep_their_values(migration_env):
    migration_env.src(SEQUENCES)
    migrate(migration_env, changes=["INSERT INTO public.default_table DEFAULT VALUES",
                                    "INSERT INTO public.identity_table DEFAULT VALUES"])
    assert migration_env.dst("SELECT last_value FROM public.default_table_id_seq") == [(669,)]
    assert migration_env.dst("SELECT last_value, is_called FROM public.identity_table_id_seq") == [(669, True)]


def test_standalone_sequences_keep_their_values(migration_env):
    migration_env.src(SEQUENCES)
    migrate(migration_env, changes="SELECT nextval('public.standalone_id_seq')")
    assert_migrated(migration_env)


def test_names_holding_newlines(migration_env):
    migration_env.src('CREATE TABLE public."with MyTableName\n     AS (SELECT row_id\n  " (row_id uuid PRIMARY KEY);'
                      'INSERT INTO public."with MyTableName\n     AS (SELECT row_id\n  " VALUES (gen_random_uuid());'
                      'CREATE TABLE public."two\nlines" (id int PRIMARY KEY, "new\nline" text);'
                      "INSERT INTO public.\"two\nlines\" VALUES (1, E'a\\nb')")
    migrate(migration_env, changes="INSERT INTO public.\"two\nlines\" VALUES (2, 'x')")
    assert_migrated(migration_env)


@pytest.fixture(scope="module")
def postgresql_18(pg_servers):
    """A PostgreSQL 18 source (wal_level=logical) and destination, whatever version the session's servers run."""
    from airflow_pgmigrate.testing.local_postgres import SOURCE_SETTINGS, LocalPostgres, find_binaries
    from tests.conftest import Servers

    if 18 not in find_binaries():
        pytest.skip("no PostgreSQL 18 binaries")
    if pg_servers.source.major == 18:
        yield pg_servers
        return
    import shutil
    import tempfile
    from pathlib import Path

    base = Path(tempfile.mkdtemp(prefix="pgmigrate-pg18-"))
    base.chmod(0o755)  # the unprivileged server user must reach its cluster below
    source = LocalPostgres(base / "source", major=18, settings=SOURCE_SETTINGS).start()
    try:
        yield Servers(source, pg_servers.other_version(), base)
    finally:
        source.stop("immediate")
        shutil.rmtree(base, ignore_errors=True)


@contextmanager
def databases(servers, monkeypatch, name: str):
    """A source and a destination database on ``servers``, dropped (with the source's slots) afterwards."""
    from tests.conftest import MigrationEnv

    env = MigrationEnv(servers, f"{name}_src", f"{name}_dst", monkeypatch)
    env.source.create_database(env.source_db)
    env.destination.create_database(env.destination_db)
    try:
        yield env
    finally:
        env.source.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = %s",
                           params=(env.source_db,))
        env.source.drop_database(env.source_db)
        env.destination.drop_database(env.destination_db)


def test_generated_columns_under_replica_identity_full_on_postgresql_18(postgresql_18, monkeypatch):
    """PostgreSQL 18 refuses UPDATE and DELETE on a published table whose replica identity (FULL) holds a generated
    column the publication does not send: the migration's publication sends them, and apply leaves them to the
    destination to compute."""
    with databases(postgresql_18, monkeypatch, "gen18") as env:
        env.src(NO_COLUMNS + "CREATE TABLE public.mixed (a int, b int GENERATED ALWAYS AS (a * 2) STORED);"
                             "ALTER TABLE public.mixed REPLICA IDENTITY FULL; INSERT INTO public.mixed VALUES (1), (2);")
        run = migrate(env, changes=["INSERT INTO public.gen DEFAULT VALUES", "UPDATE public.gen SET nb = DEFAULT",
                                    "DELETE FROM public.gen WHERE ctid = (SELECT max(ctid) FROM public.gen)",
                                    "UPDATE public.mixed SET a = 10 WHERE a = 1", "DELETE FROM public.mixed WHERE a = 2",
                                    "INSERT INTO public.mixed VALUES (3)"])
        assert run.cutover["verification"]["equal"] is True
        assert env.dst("SELECT a, b FROM public.mixed ORDER BY a") == [(3, 6), (10, 20)]
        assert_migrated(env)


def test_a_named_publication_must_send_generated_columns_on_postgresql_18(postgresql_18, monkeypatch):
    """With ``incremental.publication``, the owner's publication is checked instead: on PostgreSQL 18 it must send
    generated columns for a REPLICA IDENTITY FULL table holding one, else the source's own UPDATEs would fail."""
    from airflow_pgmigrate.engine.full_load import run_full_load
    from airflow_pgmigrate.engine.publication import PublicationError

    with databases(postgresql_18, monkeypatch, "pub18") as env:
        env.src(NO_COLUMNS + "CREATE PUBLICATION owners FOR TABLE public.nocols, public.gen;")
        config = env.config(incremental={"publication": "owners"})
        report = env.precheck(incremental={"publication": "owners"})
        (item,) = [r for r in report.failures if r.name == "publication"]
        assert "does not send generated columns" in item.detail and "public.gen" in item.detail
        assert "ALTER PUBLICATION \"owners\" SET (publish_generated_columns = stored);" in item.fix
        with pytest.raises(PublicationError, match="publish_generated_columns = stored"):
            run_full_load(config, env.source_info(), env.destination_info())
        env.src("ALTER PUBLICATION owners SET (publish_generated_columns = stored)")
        run = migrate(env, incremental={"publication": "owners"}, changes=["UPDATE public.gen SET nb = DEFAULT",
                                                                          "INSERT INTO public.gen DEFAULT VALUES"])
        assert run.cutover["verification"]["equal"] is True
        assert_migrated(env)
