"""What the schema migration does with a selection that leaves objects out, against real servers: routines on the
row type of an excluded table, foreign keys to excluded tables, indexes excluded from post_data."""

from __future__ import annotations

import pytest

from airflow_pgmigrate.engine.schema import SchemaMigrationError, migrate_schema

pytestmark = pytest.mark.integration


def run(env, config, phase: str):
    return migrate_schema(config, env.source_info(), env.destination_info(), phase)


@pytest.mark.parametrize("routine", [
    "CREATE FUNCTION public.f() RETURNS SETOF public.t LANGUAGE sql AS 'SELECT * FROM public.t'",
    "CREATE FUNCTION public.f(r public.t) RETURNS int LANGUAGE sql AS 'SELECT 1'",
    "CREATE FUNCTION public.f() RETURNS public.t[] LANGUAGE sql AS 'SELECT NULL::public.t[]'",
    "CREATE FUNCTION public.f() RETURNS bigint LANGUAGE sql BEGIN ATOMIC SELECT count(*) FROM public.t; END",
])
def test_a_routine_on_an_excluded_table_is_refused_before_any_change(migration_env, routine):
    env = migration_env
    env.src("CREATE TABLE public.t (id int, note text); CREATE TABLE public.kept (id int PRIMARY KEY);" + routine)
    config = env.config(objects={"schemas": ["public"], "exclude": ["public.t"]})
    with pytest.raises(SchemaMigrationError) as info:
        run(env, config, "pre_data")
    message = str(info.value)
    assert "schema migration cannot start, nothing was changed" in message
    assert "function public.f(" in message and "uses the row type of public.t, which is not selected" in message
    assert env.dst("SELECT to_regclass('public.kept')") == [(None,)]
    # Selecting the table too migrates both.
    run(env, env.config(objects={"schemas": ["public"]}), "pre_data")
    assert env.dst("SELECT count(*) FROM pg_proc WHERE proname = 'f'") == [(1,)]


FOREIGN_KEYS = """
CREATE TABLE public.customers (id int PRIMARY KEY);
CREATE TABLE public.orders (id int PRIMARY KEY, customer_id int REFERENCES public.customers (id),
                            parent_id int REFERENCES public.orders (id));
CREATE TABLE public.notes (id int PRIMARY KEY, customer_id int CONSTRAINT notes_customer REFERENCES public.customers);
"""


def test_foreign_keys_to_an_excluded_table_are_refused_by_default(migration_env):
    env = migration_env
    env.src(FOREIGN_KEYS)
    config = env.config(objects={"schemas": ["public"], "exclude": ["public.customers"]})
    run(env, config, "pre_data")
    with pytest.raises(SchemaMigrationError) as info:
        run(env, config, "post_data")
    message = str(info.value)
    assert "references public.customers, which is not selected" in message
    assert "schema_migration.foreign_keys_to_excluded: skip" in message


def test_foreign_keys_to_an_excluded_table_can_be_left_out_and_are_listed(migration_env):
    env = migration_env
    env.src(FOREIGN_KEYS)
    config = env.config(objects={"schemas": ["public"], "exclude": ["public.customers"]},
                        schema_migration={"foreign_keys_to_excluded": "skip"})
    run(env, config, "pre_data")
    post = run(env, config, "post_data")
    skipped = {s["object"]: s["reason"] for s in post.skipped}
    reason = "references public.customers, which is not selected (schema_migration.foreign_keys_to_excluded: skip)"
    assert skipped == {"fk constraint public.orders orders_customer_id_fkey": reason,
                       "fk constraint public.notes notes_customer": reason}
    # The key between selected tables is built; the two to the excluded table are not.
    assert env.dst("SELECT conname FROM pg_constraint WHERE contype = 'f' ORDER BY 1") == [("orders_parent_id_fkey",)]


INDEXES = """
CREATE TABLE public.t (id int PRIMARY KEY, a int, b int);
CREATE INDEX t_a_idx ON public.t (a);
CREATE INDEX t_b_idx ON public.t (b);
COMMENT ON INDEX public.t_b_idx IS 'left out';
CREATE TABLE public.p (k int, v int) PARTITION BY RANGE (k);
CREATE TABLE public.p1 PARTITION OF public.p FOR VALUES FROM (0) TO (10);
CREATE TABLE public.p2 PARTITION OF public.p FOR VALUES FROM (10) TO (20);
CREATE INDEX p_v_idx ON public.p (v);
CREATE INDEX p_k_idx ON public.p (k);
"""


def test_indexes_excluded_from_post_data(migration_env):
    env = migration_env
    env.src(INDEXES)
    config = env.config(schema_migration={"exclude_indexes": ["public.t_b_idx", "public.p_v*"]})
    run(env, config, "pre_data")
    post = run(env, config, "post_data")
    indexes = [r[0] for r in env.dst("SELECT relname FROM pg_class WHERE relkind IN ('i', 'I') "
                                             "AND relnamespace = 'public'::regnamespace ORDER BY 1")]
    assert indexes == ["p1_k_idx", "p2_k_idx", "p_k_idx", "t_a_idx", "t_pkey"]
    skipped = {s["object"]: s["reason"] for s in post.skipped}
    assert skipped["index public.t_b_idx"] == "excluded by schema_migration.exclude_indexes (public.t_b_idx)"
    assert skipped["comment public.INDEX t_b_idx"].startswith("excluded by schema_migration.exclude_indexes")
    # The partitions' indexes go with the partitioned table's index.
    assert {"index public.p_v_idx", "index public.p1_v_idx", "index public.p2_v_idx",
            "index attach public.p1_v_idx", "index attach public.p2_v_idx"} <= set(skipped)


@pytest.mark.parametrize(("pattern", "why"), [
    ("public.nothing_*", "no index of the selected tables matches it"),
    ("public.t_pkey", "it names the index of a constraint (public.t_pkey), which is built with its constraint"),
])
def test_an_index_exclusion_that_leaves_out_nothing_is_an_error(migration_env, pattern, why):
    env = migration_env
    env.src(INDEXES)
    config = env.config(schema_migration={"exclude_indexes": [pattern]})
    run(env, config, "pre_data")
    with pytest.raises(SchemaMigrationError) as info:
        run(env, config, "post_data")
    assert f"schema_migration.exclude_indexes: {pattern!r} leaves out nothing: {why}" in str(info.value)
    assert env.dst("SELECT count(*) FROM pg_class WHERE relkind IN ('i', 'I') "
                   "AND relnamespace = 'public'::regnamespace") == [(0,)]


RENAMED = """
CREATE SCHEMA app;
CREATE TEXT SEARCH DICTIONARY app.stem (TEMPLATE = snowball, LANGUAGE = english);
CREATE TEXT SEARCH CONFIGURATION app.cfg (COPY = pg_catalog.english);
ALTER TEXT SEARCH CONFIGURATION app.cfg ALTER MAPPING FOR asciiword WITH app.stem;
COMMENT ON TEXT SEARCH CONFIGURATION app.cfg IS 'c1';
CREATE OPERATOR FAMILY app.fam USING hash;
CREATE OPERATOR CLASS app.cls FOR TYPE int USING hash FAMILY app.fam AS OPERATOR 1 =, FUNCTION 1 hashint4(int);
COMMENT ON OPERATOR CLASS app.cls USING hash IS 'c2';
CREATE CONVERSION app.conv FOR 'LATIN1' TO 'UTF8' FROM iso8859_1_to_utf8;
COMMENT ON CONVERSION app.conv IS 'c3';
CREATE DOMAIN app.qty AS int;
ALTER DOMAIN app.qty ADD CONSTRAINT not_13 CHECK (VALUE <> 13) NOT VALID;
COMMENT ON CONSTRAINT not_13 ON DOMAIN app.qty IS 'c4';
CREATE TABLE app.t (a int, b app.qty);
CREATE STATISTICS app.st ON a, b FROM app.t;
ALTER STATISTICS app.st SET STATISTICS 300;
COMMENT ON STATISTICS app.st IS 'c5';
"""


def test_schema_mapping_renames_every_kind_of_object(migration_env):
    """A mapped schema: text search, operator classes, conversions, domain constraints and statistics follow it."""
    env = migration_env
    env.src(RENAMED)
    config = env.config(objects={"schemas": ["app"]}, mapping={"schemas": {"app": "app2"}})
    run(env, config, "pre_data")
    run(env, config, "post_data")
    assert env.dst("SELECT to_tsvector('app2.cfg', 'the running dogs')::text") == \
        env.src("SELECT to_tsvector('app.cfg', 'the running dogs')::text")
    assert env.dst("SELECT string_agg(description, ',' ORDER BY description) FROM pg_description "
                   "WHERE description ~ '^c[0-9]$'") == [("c1,c2,c3,c4,c5",)]
    assert env.dst("SELECT count(*) FROM pg_namespace WHERE nspname = 'app'") == [(0,)]
    assert env.dst("SELECT stxstattarget FROM pg_statistic_ext WHERE stxname = 'st' "
                   "AND stxnamespace = 'app2'::regnamespace") == [(300,)]


DATABASE_WIDE = """
CREATE SCHEMA app;
CREATE TYPE app.amount AS (units bigint);
CREATE FUNCTION app.to_numeric(a app.amount) RETURNS numeric LANGUAGE sql AS 'SELECT a.units::numeric';
CREATE CAST (app.amount AS numeric) WITH FUNCTION app.to_numeric(app.amount);
CREATE FOREIGN DATA WRAPPER fdw1;
CREATE SERVER srv1 FOREIGN DATA WRAPPER fdw1;
CREATE USER MAPPING FOR PUBLIC SERVER srv1 OPTIONS (user 'anyone');
"""


def test_database_wide_objects_of_a_partial_selection(migration_env):
    """A cast of a migrated schema's types migrates; the other database-wide objects are named, not lost silently."""
    env = migration_env
    env.src(DATABASE_WIDE)
    config = env.config(objects={"schemas": ["app"]})
    pre = run(env, config, "pre_data")
    assert env.dst("SELECT count(*) FROM pg_cast WHERE castsource = 'app.amount'::regtype") == [(1,)]
    skipped = {s["object"]: s["reason"] for s in pre.skipped}
    reason = "a database-wide object: migrated when the whole database is selected (objects empty)"
    assert skipped == {"foreign data wrapper fdw1": reason, "server srv1": reason,
                       "user mapping USER MAPPING public SERVER srv1": reason}, skipped
    (item,) = [r for r in env.precheck(objects={"schemas": ["app"]}).results if r.name == "not_migrated"]
    assert item.status == "warning"
    assert sorted(o.split(" (")[0] for o in item.objects) == ["foreign data wrapper fdw1", "server srv1"]


def test_a_user_mapping_of_a_role_missing_in_the_destination_is_left_out_and_reported(migration_env):
    env = migration_env
    env.create_role(env.source, "ghost", "ghost-pw")
    env.destination.execute("DROP ROLE IF EXISTS ghost")
    env.src(DATABASE_WIDE + "CREATE USER MAPPING FOR ghost SERVER srv1 OPTIONS (user 'remote_ghost');")
    pre = run(env, env.config(), "pre_data")
    assert {"object": "user mapping USER MAPPING ghost SERVER srv1",
            "reason": "user mapping of a role missing in the destination: ghost"} in pre.skipped
    assert env.dst("SELECT usename FROM pg_user_mappings") == [("public",)]


def test_rerunning_both_phases_creates_nothing_and_reports_every_object_identical(migration_env):
    """Operator families, domain constraints, text search objects and comments exist already on a re-run."""
    from airflow_pgmigrate.engine.state import MigrationState

    env = migration_env
    env.src(RENAMED)
    config = env.config()
    state = MigrationState(env.destination_info(), config.state_schema, config.name)
    first = [migrate_schema(config, env.source_info(), env.destination_info(), phase, state=state)
             for phase in ("pre_data", "post_data")]
    for phase, report in zip(("pre_data", "post_data"), first, strict=True):
        again = migrate_schema(config, env.source_info(), env.destination_info(), phase, state=state).to_dict()
        assert again["created_total"] == 0, again["objects"]
        assert again["differing"] == []
        assert sorted(s["object"] for s in again["skipped"] if s["reason"] == "exists already, identical") == \
            sorted(report.objects)


def test_a_schema_whose_name_holds_a_newline_migrates_whole(migration_env):
    env = migration_env
    env.src('CREATE SCHEMA "two\nlines"; CREATE TABLE "two\nlines".t (id int PRIMARY KEY);'
            'CREATE FUNCTION "two\nlines".f() RETURNS int LANGUAGE sql AS \'SELECT 1\';'
            'CREATE TYPE "two\nlines".mood AS ENUM (\'ok\'); COMMENT ON SCHEMA "two\nlines" IS \'odd\'')
    config = env.config(objects={"schemas": ["two\nlines"]})
    pre = run(env, config, "pre_data")
    run(env, config, "post_data")
    assert pre.skipped == []
    assert env.dst("SELECT obj_description(oid, 'pg_namespace') FROM pg_namespace WHERE nspname = %s",
                   ("two\nlines",)) == [("odd",)]
    assert env.dst('SELECT "two\nlines".f(), count(*) FROM "two\nlines".t') == [(1, 0)]
    assert env.dst("SELECT count(*) FROM pg_type WHERE typname = 'mood'") == [(1,)]
    assert env.dst("SELECT count(*) FROM pg_constraint WHERE conname = 't_pkey'") == [(1,)]


def test_a_selected_table_brings_the_schema_of_the_extension_it_needs(migration_env):
    env = migration_env
    env.src("CREATE SCHEMA ext; CREATE EXTENSION citext SCHEMA ext; CREATE SCHEMA app;"
            "CREATE TABLE app.c (id int PRIMARY KEY, email ext.citext); CREATE TABLE app.other (id int)")
    config = env.config(objects={"tables": ["app.c"]})
    run(env, config, "pre_data")
    run(env, config, "post_data")
    assert env.dst("SELECT extnamespace::regnamespace::text FROM pg_extension WHERE extname = 'citext'") == \
        [("ext",)]
    assert env.dst("SELECT to_regclass('app.c') IS NOT NULL, to_regclass('app.other')") == [(True, None)]


def rerun_after_change(env, roles: tuple[str, ...], before: str, change: str, phase: str = "pre_data") -> dict:
    """Both phases with grants, then ``change`` on the source, then ``phase`` again: its report."""
    from airflow_pgmigrate.engine.state import MigrationState

    for role in roles:
        env.create_role(env.source, role, "pw")
        env.create_role(env.destination, role, "pw")
    env.src(before)
    config = env.config(schema_migration={"migrate_grants": True})
    state = MigrationState(env.destination_info(), config.state_schema, config.name)
    for first in ("pre_data", "post_data"):
        migrate_schema(config, env.source_info(), env.destination_info(), first, state=state)
    env.src(change)
    return migrate_schema(config, env.source_info(), env.destination_info(), phase, state=state).to_dict()


def test_a_rerun_reports_grants_and_comments_that_changed_on_the_source(migration_env):
    """A re-run must not call an object identical, nor keep quiet, when its grants or comment changed on the source:
    the destination would keep a privilege the source revoked."""
    env = migration_env
    again = rerun_after_change(
        env, ("rv_reader", "rv_writer"),
        "CREATE TABLE public.t (id int PRIMARY KEY); GRANT SELECT ON public.t TO rv_reader;"
        "COMMENT ON TABLE public.t IS 'first';"
        "CREATE FUNCTION public.f() RETURNS int LANGUAGE sql AS 'SELECT 1';"
        "REVOKE ALL ON FUNCTION public.f() FROM PUBLIC; GRANT EXECUTE ON FUNCTION public.f() TO rv_reader",
        "REVOKE SELECT ON public.t FROM rv_reader; GRANT SELECT ON public.t TO rv_writer;"
        "COMMENT ON TABLE public.t IS 'second'; REVOKE EXECUTE ON FUNCTION public.f() FROM rv_reader")
    differing = {d["object"] for d in again["differing"]}
    assert {"acl public.TABLE t", "comment public.TABLE t", "acl public.FUNCTION f()"} <= differing, again
    identical = {s["object"] for s in again["skipped"] if s["reason"] == "exists already, identical"}
    assert not identical & differing
    assert env.dst("SELECT has_table_privilege('rv_reader', 'public.t', 'SELECT')") == [(True,)]


def test_user_mapping_secrets_stay_out_of_the_report_and_the_log(migration_env):
    """A user mapping's options may hold secrets under other names than ``password`` (postgres_fdw's
    ``sslpassword``): none reaches the report (XCom) or the log when the mapping differs in the destination."""
    import json

    env = migration_env
    server = "CREATE FOREIGN DATA WRAPPER fdw1; CREATE SERVER srv1 FOREIGN DATA WRAPPER fdw1;"
    env.src(server + "CREATE USER MAPPING FOR PUBLIC SERVER srv1 "
                     "OPTIONS (sslpassword 'ssl-secret-1', password 'pw-secret-2', \"Password\" 'pw-secret-3')")
    env.dst(server + "CREATE USER MAPPING FOR PUBLIC SERVER srv1 OPTIONS (user 'someone')")
    lines: list[str] = []
    report = migrate_schema(env.config(conflicting_tables="ignore"), env.source_info(), env.destination_info(),
                            "pre_data", log=lines.append)
    assert [d["object"] for d in report.differing] == ["user mapping USER MAPPING public SERVER srv1"]
    shown = json.dumps(report.to_dict()) + "\n".join(lines)
    for secret in ("ssl-secret-1", "pw-secret-2", "pw-secret-3"):
        assert secret not in shown


def test_a_rerun_reports_grants_and_comments_the_source_no_longer_has(migration_env):
    """A grant revoked back to the default (pg_dump then writes no ACL at all) or a comment removed on the source
    leaves the destination wider than the source: the re-run says so instead of calling the objects identical."""
    again = rerun_after_change(
        migration_env, ("rv_reader",),
        "CREATE TABLE public.t (id int PRIMARY KEY, note text); GRANT SELECT ON public.t TO rv_reader;"
        "GRANT UPDATE (note) ON public.t TO rv_reader; COMMENT ON TABLE public.t IS 'first';"
        "CREATE FUNCTION public.f(p_id bigint) RETURNS int LANGUAGE sql SECURITY DEFINER AS 'SELECT 1';"
        "REVOKE ALL ON FUNCTION public.f(bigint) FROM PUBLIC; COMMENT ON FUNCTION public.f(bigint) IS 'one'",
        "REVOKE ALL ON public.t FROM rv_reader; REVOKE UPDATE (note) ON public.t FROM rv_reader;"
        "COMMENT ON TABLE public.t IS NULL; GRANT EXECUTE ON FUNCTION public.f(bigint) TO PUBLIC;"
        "COMMENT ON FUNCTION public.f(bigint) IS NULL")
    differing = {d["object"] for d in again["differing"]}
    assert {"acl public.TABLE t", "acl public.COLUMN t.note", "comment public.TABLE t",
            "acl public.FUNCTION f(p_id bigint)", "comment public.FUNCTION f(p_id bigint)"} <= differing, again


def test_a_cast_of_types_a_table_selection_leaves_out_is_not_migrated(migration_env):
    """A table-level selection migrates only what its tables need from their schema: a cast between types of that
    schema that nothing selected needs is left out (and named), instead of failing on its missing type."""
    env = migration_env
    env.src(DATABASE_WIDE + "CREATE TYPE app.mood AS ENUM ('ok'); CREATE TABLE app.c (id int PRIMARY KEY, m app.mood)")
    pre = run(env, env.config(objects={"tables": ["app.c"]}), "pre_data")
    assert env.dst("SELECT to_regclass('app.c') IS NOT NULL, to_regtype('app.amount')") == [(True, None)]
    skipped = {s["object"]: s["reason"] for s in pre.skipped}
    assert "database-wide object" in skipped.get("cast CAST (app.amount AS numeric)", ""), skipped


def test_the_comment_of_a_skipped_foreign_key_is_left_out_with_it(migration_env):
    env = migration_env
    env.src(FOREIGN_KEYS + "COMMENT ON CONSTRAINT notes_customer ON public.notes IS 'to the excluded table'")
    config = env.config(objects={"schemas": ["public"], "exclude": ["public.customers"]},
                        schema_migration={"foreign_keys_to_excluded": "skip"})
    run(env, config, "pre_data")
    post = run(env, config, "post_data")
    skipped = {s["object"]: s["reason"] for s in post.skipped}
    assert "belongs to an object that is not migrated" in skipped.get(
        "comment public.CONSTRAINT notes_customer ON notes", ""), skipped
    assert env.dst("SELECT conname FROM pg_constraint WHERE contype = 'f' ORDER BY 1") == [("orders_parent_id_fkey",)]


def test_a_rerun_reports_default_privileges_that_changed_on_the_source(migration_env):
    """Running a changed ALTER DEFAULT PRIVILEGES again would add its grants to the ones the first run made (the
    destination's future tables readable by both roles): it is reported instead, and the destination kept."""
    env = migration_env
    again = rerun_after_change(
        env, ("rv_reader", "rv_writer"),
        "CREATE TABLE public.t (id int PRIMARY KEY);"
        "ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO rv_reader",
        "ALTER DEFAULT PRIVILEGES IN SCHEMA public REVOKE SELECT ON TABLES FROM rv_reader;"
        "ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO rv_writer", "post_data")
    assert again["created_total"] == 0, again["objects"]
    assert "default acl public.DEFAULT PRIVILEGES FOR TABLES" in {d["object"] for d in again["differing"]}, (again["skipped"], again["differing"])
    env.dst("CREATE TABLE public.later (id int)")
    assert env.dst("SELECT has_table_privilege('rv_reader', 'public.later', 'SELECT'), "
                   "has_table_privilege('rv_writer', 'public.later', 'SELECT')") == [(True, False)]
