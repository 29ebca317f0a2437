"""Schema fidelity against real servers: a source with every kind of object pg_dump writes (tests/fixtures/
fidelity_schema.sql) arrives whole, with owners, privileges and comments, 15 -> 15 and 15 -> 18; what is not migrated
is named in the report and by the precheck; re-running a phase creates nothing."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
import pytest

from airflow_pgmigrate.engine.connection import ConnectionInfo
from airflow_pgmigrate.engine.pgdump import available_pg_dumps, run_pg_dump, split_dump
from airflow_pgmigrate.engine.schema import SchemaReport, migrate_schema, normalize_sql
from airflow_pgmigrate.engine.state import MigrationState

pytestmark = pytest.mark.integration

FIXTURE = (Path(__file__).resolve().parents[1] / "fixtures" / "fidelity_schema.sql").read_text()
ROLES = ("fid_owner", "fid_rw", "fid_ro")
#: Entry types docs/schema.md lists as not migrated (and the function written in C the fixture has).
NOT_MIGRATED = ("EVENT TRIGGER", "PUBLICATION", "PUBLICATION TABLE", "SUBSCRIPTION", "PROCEDURAL LANGUAGE")
C_FUNCTION = "fid_handler()"
#: Every privilege of every object of the fixture, per role: (kind, object, role, privilege, granted).
PRIVILEGES = """
WITH roles(r) AS (SELECT unnest(%(roles)s::text[])),
rels AS (SELECT c.oid, format('%%I.%%I', n.nspname, c.relname) AS name, c.relkind FROM pg_class c
           JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname IN ('app', 'Audit Log', 'ext')
            AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S'))
SELECT 'table', name, r, p, has_table_privilege(r, oid, p) FROM rels, roles,
       unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE', 'TRUNCATE', 'REFERENCES', 'TRIGGER']) p
 WHERE relkind <> 'S'
UNION ALL
SELECT 'sequence', name, r, p, has_sequence_privilege(r, oid, p) FROM rels, roles,
       unnest(ARRAY['USAGE', 'SELECT', 'UPDATE']) p WHERE relkind = 'S'
UNION ALL
SELECT 'column', name || '.' || quote_ident(a.attname), r, p, has_column_privilege(r, rels.oid, a.attnum, p)
  FROM rels JOIN pg_attribute a ON a.attrelid = rels.oid AND a.attnum > 0 AND NOT a.attisdropped, roles,
       unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'REFERENCES']) p WHERE relkind <> 'S'
UNION ALL
SELECT 'function', format('%%I.%%I(%%s)', n.nspname, f.proname, pg_get_function_identity_arguments(f.oid)), r,
       'EXECUTE', has_function_privilege(r, f.oid, 'EXECUTE')
  FROM pg_proc f JOIN pg_namespace n ON n.oid = f.pronamespace JOIN pg_language l ON l.oid = f.prolang, roles
 WHERE n.nspname IN ('app', 'Audit Log') AND l.lanname <> 'c'
UNION ALL
SELECT 'schema', nspname, r, p, has_schema_privilege(r, oid, p) FROM pg_namespace, roles,
       unnest(ARRAY['USAGE', 'CREATE']) p WHERE nspname IN ('app', 'Audit Log', 'ext', 'public')
UNION ALL
SELECT 'type', format('%%I.%%I', n.nspname, t.typname), r, 'USAGE', has_type_privilege(r, t.oid, 'USAGE')
  FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace, roles
 WHERE n.nspname = 'app' AND t.typcategory <> 'A' AND t.typtype IN ('b', 'c', 'd', 'e', 'r', 'm')
   AND (t.typrelid = 0 OR EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = t.typrelid AND c.relkind = 'c'))
UNION ALL
SELECT 'server', srvname, r, 'USAGE', has_server_privilege(r, oid, 'USAGE') FROM pg_foreign_server, roles
UNION ALL
SELECT 'wrapper', fdwname, r, 'USAGE', has_foreign_data_wrapper_privilege(r, oid, 'USAGE')
  FROM pg_foreign_data_wrapper, roles
UNION ALL
SELECT 'default', format('%%s %%s %%s', pg_get_userbyid(d.defaclrole), coalesce(n.nspname, '-'), d.defaclobjtype),
       a.grantee::regrole::text, a.privilege_type, true
  FROM pg_default_acl d LEFT JOIN pg_namespace n ON n.oid = d.defaclnamespace, aclexplode(d.defaclacl) a
 WHERE a.grantee <> 0
UNION ALL
SELECT 'default', format('%%s %%s %%s', pg_get_userbyid(d.defaclrole), coalesce(n.nspname, '-'), d.defaclobjtype),
       'PUBLIC', a.privilege_type, true
  FROM pg_default_acl d LEFT JOIN pg_namespace n ON n.oid = d.defaclnamespace, aclexplode(d.defaclacl) a
 WHERE a.grantee = 0
"""


def query(info: ConnectionInfo, text: str, params: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(**info.connect_kwargs(), autocommit=True) as conn:
        cur = conn.execute(text, params)
        return cur.fetchall() if cur.description else []


def privileges(info: ConnectionInfo) -> dict[tuple[str, str, str, str], bool]:
    return {row[:4]: row[4] for row in query(info, PRIVILEGES, {"roles": list(ROLES)})}


def normalised_dump(info: ConnectionInfo, state_schema: str) -> Counter[str]:
    """The normalised entries of ``pg_dump --schema-only`` of a whole database (with owners, privileges, comments),
    written by the newest pg_dump for both sides so that only the servers' own differences remain."""
    dump = available_pg_dumps()[-1]
    entries = split_dump(run_pg_dump(dump, info, ["--schema-only"]))[1]
    return Counter(normalize_sql(e.settings + e.sql) for e in entries
                   if e.schema != state_schema and not (e.type == "SCHEMA" and e.name == state_schema))


def not_migrated(info: ConnectionInfo) -> Counter[str]:
    """The entries of the source's dump of the kinds not migrated (and their comments)."""
    dump = available_pg_dumps()[-1]
    entries = split_dump(run_pg_dump(dump, info, ["--schema-only"]))[1]
    attached = ("EVENT TRIGGER ", "PUBLICATION ", "SUBSCRIPTION ", "LANGUAGE ", "FUNCTION " + C_FUNCTION)
    return Counter(normalize_sql(e.settings + e.sql) for e in entries
                   if e.type in NOT_MIGRATED or e.name == C_FUNCTION
                   or (e.type in ("COMMENT", "ACL") and e.name.startswith(attached)))


@pytest.fixture
def fidelity_roles(migration_env):
    """The fixture's roles on the source and the destination."""
    env = migration_env
    for role in ROLES:
        env.create_role(env.source, role, f"{role}-pw")
        env.create_role(env.destination, role, f"{role}-pw")
    return env


@pytest.fixture
def fidelity(fidelity_roles):
    """The fixture's roles, and its schema in the source database (its subscription dropped at the end: a database
    with a subscription cannot be dropped)."""
    fidelity_roles.src(FIXTURE)
    yield fidelity_roles
    fidelity_roles.src("ALTER SUBSCRIPTION fid_sub DISABLE; DROP SUBSCRIPTION fid_sub")


def config_of(env):
    """The whole database, owners kept (same role names on both sides), grants migrated."""
    return env.config(schema_migration={"owner_mapping": {"fid_owner": "fid_owner"}, "migrate_grants": True})


def both_phases(env, config, destination: ConnectionInfo) -> tuple[SchemaReport, SchemaReport]:
    state = MigrationState(destination, config.state_schema, config.name)
    pre = migrate_schema(config, env.source_info(), destination, "pre_data", state=state)
    post = migrate_schema(config, env.source_info(), destination, "post_data", state=state)
    return pre, post


def assert_faithful(env, config, destination: ConnectionInfo, pre: SchemaReport, post: SchemaReport) -> None:
    source = env.source_info()
    expected = normalised_dump(source, config.state_schema)
    actual = normalised_dump(destination, config.state_schema)
    left_out = not_migrated(source)
    assert left_out, "the fixture has objects that are not migrated"
    missing = sorted((expected - actual) - left_out)
    extra = sorted(actual - expected)
    assert not missing and not extra, "missing in the destination:\n" + "\n".join(missing) + \
        "\n\nnot in the source:\n" + "\n".join(extra)
    assert sorted((expected - actual).elements()) == sorted(left_out.elements())
    # Each object not migrated is in the report, with its reason.
    skipped = {s["object"]: s["reason"] for s in pre.skipped + post.skipped}
    for what, reason in (("event trigger fid_on_ddl", "event triggers are database-wide"),
                         ("publication fid_pub", "publications belong"),
                         ("publication table app.fid_pub customer", "publications belong"),
                         ("subscription fid_sub", "subscriptions belong"),
                         ("procedural language fid_lang", "needs its handler, written in C"),
                         ("function app.fid_handler()", "written in C"),
                         ("comment EVENT TRIGGER fid_on_ddl", "belongs to an object that is not migrated"),
                         ("comment LANGUAGE fid_lang", "belongs to an object that is not migrated"),
                         ("comment SUBSCRIPTION fid_sub", "belongs to an object that is not migrated"),
                         ("comment PUBLICATION fid_pub", "belongs to an object that is not migrated")):
        assert reason in skipped.get(what, ""), (what, skipped)
    # Effective privileges: the same for every role over every object (neither widened nor narrowed).
    before, after = privileges(source), privileges(destination)
    assert len(before) > 500
    changed = sorted(f"{k}: source {before.get(k)}, destination {after.get(k)}"
                     for k in set(before) | set(after) if before.get(k) != after.get(k))
    assert not changed, "\n".join(changed)


def assert_rerun_changes_nothing(env, config, destination: ConnectionInfo, first: tuple[SchemaReport, ...]) -> None:
    state = MigrationState(destination, config.state_schema, config.name)
    before = normalised_dump(destination, config.state_schema)
    for phase, report in zip(("pre_data", "post_data"), first, strict=True):
        again = migrate_schema(config, env.source_info(), destination, phase, state=state).to_dict()
        assert again["created_total"] == 0, again["objects"]
        assert again["differing"] == [], again["differing"]
        identical = [s["object"] for s in again["skipped"] if s["reason"] == "exists already, identical"]
        assert sorted(identical) == sorted(report.objects), set(identical) ^ set(report.objects)
    assert normalised_dump(destination, config.state_schema) == before


def test_every_object_privilege_and_comment_arrives_15_to_15(fidelity):
    env = fidelity
    config = config_of(env)
    pre, post = both_phases(env, config, env.destination_info())
    assert_faithful(env, config, env.destination_info(), pre, post)
    assert_rerun_changes_nothing(env, config, env.destination_info(), (pre, post))


def test_every_object_privilege_and_comment_arrives_15_to_18(fidelity, pg_servers):
    env = fidelity
    other = pg_servers.other_version()
    if other is None or other.major <= env.source.major:
        pytest.skip("no newer PostgreSQL major version on this machine")
    for role in ROLES:
        env.create_role(other, role, f"{role}-pw")
    # The rig's servers have no TLS: said so (sslmode=disable), the newer pg_dump may dump the source even when it
    # was built without TLS (the wheel's); under libpq's default sslmode=prefer it may not.
    plain = env.source_info
    env.monkeypatch.setattr(env, "source_info", lambda *args: replace(plain(*args), params={
        **plain(*args).params, "sslmode": "disable"}))
    other.create_database(env.destination_db)
    try:
        destination = other.info(env.destination_db)
        config = config_of(env)
        pre, post = both_phases(env, config, destination)
        assert pre.pg_dump.startswith(f"{other.major} "), "the newer pg_dump writes the source for the newer server"
        assert_faithful(env, config, destination, pre, post)
        assert_rerun_changes_nothing(env, config, destination, (pre, post))
    finally:
        other.drop_database(env.destination_db)


#: (source SQL, a query whose result must be the same on both sides): one per way a privilege, a comment or an
#: object used to get lost.
CASES = {
    "function with named arguments keeps its REVOKE, grants and comment": (
        "CREATE SCHEMA app; CREATE FUNCTION app.secure_lookup(p_id bigint) RETURNS bigint LANGUAGE sql "
        "SECURITY DEFINER AS 'SELECT p_id'; REVOKE ALL ON FUNCTION app.secure_lookup(bigint) FROM PUBLIC; "
        "GRANT EXECUTE ON FUNCTION app.secure_lookup(bigint) TO fid_ro; "
        "COMMENT ON FUNCTION app.secure_lookup(bigint) IS 'for readers only'",
        "SELECT has_function_privilege('fid_rw', 'app.secure_lookup(bigint)', 'EXECUTE'), "
        "has_function_privilege('fid_ro', 'app.secure_lookup(bigint)', 'EXECUTE'), "
        "obj_description('app.secure_lookup(bigint)'::regprocedure)"),
    "procedure with named arguments keeps its REVOKE and comment": (
        "CREATE SCHEMA app; CREATE PROCEDURE app.p(IN a int, INOUT b int) LANGUAGE sql AS 'SELECT 1'; "
        "REVOKE ALL ON PROCEDURE app.p(int, int) FROM PUBLIC; COMMENT ON PROCEDURE app.p(int, int) IS 'p'",
        "SELECT has_function_privilege('fid_rw', 'app.p(int, int)', 'EXECUTE'), "
        "obj_description('app.p(int, int)'::regprocedure)"),
    "type keeps its REVOKE and grants": (
        "CREATE SCHEMA app; CREATE DOMAIN app.email AS text; REVOKE ALL ON TYPE app.email FROM PUBLIC; "
        "GRANT USAGE ON TYPE app.email TO fid_rw; CREATE TYPE app.mood AS ENUM ('a'); "
        "REVOKE USAGE ON TYPE app.mood FROM PUBLIC",
        "SELECT has_type_privilege('fid_ro', 'app.email', 'USAGE'), has_type_privilege('fid_rw', 'app.email', "
        "'USAGE'), has_type_privilege('fid_ro', 'app.mood', 'USAGE')"),
    "schema with a space keeps its grant and comment": (
        'CREATE SCHEMA "Audit Log"; GRANT USAGE ON SCHEMA "Audit Log" TO fid_ro; '
        "COMMENT ON SCHEMA \"Audit Log\" IS 'audit'",
        "SELECT has_schema_privilege('fid_ro', 'Audit Log', 'USAGE'), "
        "obj_description('\"Audit Log\"'::regnamespace, 'pg_namespace')"),
    "default privileges without IN SCHEMA": (
        "CREATE SCHEMA app; ALTER DEFAULT PRIVILEGES FOR ROLE fid_owner REVOKE ALL ON FUNCTIONS FROM PUBLIC; "
        "ALTER DEFAULT PRIVILEGES FOR ROLE fid_owner GRANT SELECT ON TABLES TO fid_ro",
        "SELECT defaclrole::regrole::text, defaclnamespace, defaclobjtype, defaclacl::text FROM pg_default_acl "
        "ORDER BY 3"),
    "cast": (
        "CREATE SCHEMA app; CREATE TYPE app.money_amount AS (units bigint); CREATE FUNCTION app.to_numeric("
        "m app.money_amount) RETURNS numeric LANGUAGE sql AS 'SELECT m.units::numeric'; CREATE CAST "
        "(app.money_amount AS numeric) WITH FUNCTION app.to_numeric(app.money_amount) AS ASSIGNMENT; "
        "COMMENT ON CAST (app.money_amount AS numeric) IS 'units'",
        "SELECT castcontext, obj_description(oid, 'pg_cast') FROM pg_cast WHERE castsource = 'app.money_amount'"
        "::regtype"),
    "comments on domain constraints, operators, operator classes and families, statistics": (
        "CREATE SCHEMA app; CREATE DOMAIN app.qty AS int CONSTRAINT positive CHECK (VALUE > 0); "
        "ALTER DOMAIN app.qty ADD CONSTRAINT not_13 CHECK (VALUE <> 13) NOT VALID; "
        "COMMENT ON CONSTRAINT positive ON DOMAIN app.qty IS 'c1'; COMMENT ON CONSTRAINT not_13 ON DOMAIN app.qty "
        "IS 'c2'; CREATE FUNCTION app.lt(int, int) RETURNS bool LANGUAGE sql IMMUTABLE AS 'SELECT $1 < $2'; "
        "CREATE OPERATOR app.<< (leftarg = int, rightarg = int, function = app.lt); "
        "COMMENT ON OPERATOR app.<< (int, int) IS 'c3'; CREATE OPERATOR FAMILY app.fam USING hash; "
        "COMMENT ON OPERATOR FAMILY app.fam USING hash IS 'c4'; CREATE OPERATOR CLASS app.cls FOR TYPE int "
        "USING hash FAMILY app.fam AS OPERATOR 1 =, FUNCTION 1 hashint4(int); "
        "COMMENT ON OPERATOR CLASS app.cls USING hash IS 'c5'; CREATE TABLE app.t (a int, b int); "
        "CREATE STATISTICS app.st ON a, b FROM app.t; COMMENT ON STATISTICS app.st IS 'c6'",
        "SELECT string_agg(description, ',' ORDER BY description) FROM pg_description WHERE description ~ '^c'"),
    "text search configuration mapping to a custom dictionary, with owners": (
        "CREATE SCHEMA app; CREATE TEXT SEARCH DICTIONARY app.stem (TEMPLATE = snowball, LANGUAGE = english); "
        "CREATE TEXT SEARCH CONFIGURATION app.cfg (COPY = pg_catalog.english); "
        "ALTER TEXT SEARCH CONFIGURATION app.cfg ALTER MAPPING FOR asciiword WITH app.stem",
        "SELECT to_tsvector('app.cfg', 'the running dogs')::text"),
    "a table whose name holds a newline": (
        'CREATE TABLE public."two\nlines" (id int PRIMARY KEY, "a\nb" text); '
        "COMMENT ON TABLE public.\"two\nlines\" IS 'two lines'",
        "SELECT c.relname, obj_description(c.oid, 'pg_class'), "
        "(SELECT count(*) FROM pg_constraint WHERE conrelid = c.oid) FROM pg_class c WHERE c.relname ~ 'two'"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_privileges_comments_and_objects_arrive(fidelity_roles, case):
    """Each way an object, privilege or comment used to get lost: the same answer on both sides after both phases."""
    env = fidelity_roles
    setup, check = CASES[case]
    env.src(setup)
    expected = env.src(check)
    assert expected and any(v not in (None, 0, "") for v in expected[0]), expected
    pre, post = both_phases(env, config_of(env), env.destination_info())
    assert env.dst(check) == expected, (pre.to_dict(), post.to_dict())


def test_unlogged_table_is_copied_not_published_and_warned_about(migration_env):
    """An unlogged table: the precheck warns before anything runs, the schema keeps it unlogged, the full load copies
    its rows and leaves it out of the publication (PostgreSQL refuses it there), saying it cannot be synced."""
    from airflow_pgmigrate.engine.full_load import run_full_load

    env = migration_env
    env.src("CREATE TABLE public.orders (id int PRIMARY KEY); INSERT INTO public.orders SELECT generate_series(1, 5);"
            "CREATE UNLOGGED TABLE public.session_cache (k text PRIMARY KEY, v text);"
            "INSERT INTO public.session_cache SELECT g::text, 'v' FROM generate_series(1, 7) g")
    report = env.precheck()
    (item,) = [r for r in report.results if r.name == "unlogged_tables"]
    assert item.status == "warning" and item.objects == ["public.session_cache"]
    assert "cannot be synced incrementally" in item.detail
    config = env.config()
    migrate_schema(config, env.source_info(), env.destination_info(), "pre_data")
    assert env.dst("SELECT relpersistence FROM pg_class WHERE oid = 'public.session_cache'::regclass") == [("u",)]
    lines: list[str] = []
    loaded = run_full_load(config, env.source_info(), env.destination_info(), log=lines.append)
    assert loaded["completed"]
    assert env.dst("SELECT count(*) FROM public.session_cache") == [(7,)]
    assert env.src("SELECT tablename FROM pg_publication_tables WHERE pubname = %s",
                   (config.publication_name,)) == [("orders",)]
    assert any("unlogged_tables=public.session_cache not published" in ln and "cannot be synced incrementally" in ln
               for ln in lines), lines
    # Incremental sync follows the logged table; the unlogged one keeps its rows as of the full load.
    from airflow_pgmigrate.engine.incremental import run_incremental

    migrate_schema(config, env.source_info(), env.destination_info(), "post_data")
    env.src("INSERT INTO public.orders VALUES (6); INSERT INTO public.session_cache VALUES ('8', 'v')")
    for _ in range(20):
        if run_incremental(config, env.source_info(), env.destination_info(), window_seconds=20).caught_up:
            break
    assert env.dst("SELECT count(*) FROM public.orders") == [(6,)]
    assert env.dst("SELECT count(*) FROM public.session_cache") == [(7,)]


def test_precheck_names_what_the_schema_migration_leaves_out(fidelity):
    report = fidelity.precheck()
    (item,) = [r for r in report.results if r.name == "not_migrated"]
    assert item.status == "warning"
    assert sorted(o.split(" (")[0] for o in item.objects) == [
        "event trigger fid_on_ddl", "procedural language fid_lang", "publication fid_pub", "subscription fid_sub"]
    (unlogged,) = [r for r in report.results if r.name == "unlogged_tables"]
    assert unlogged.status == "warning" and unlogged.objects == ["app.session_cache"]
