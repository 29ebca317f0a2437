"""Ownership and grants of the schema migration, against real servers: default owner, owner_mapping, grants."""

from __future__ import annotations

import psycopg
import pytest

from airflow_pgmigrate.engine.schema import actual_definitions, expected_definitions, migrate_schema
from airflow_pgmigrate.engine.state import MigrationState

pytestmark = pytest.mark.integration

#: A few objects of each kind whose owner the migration decides: tables (with a serial and an identity sequence),
#: a view, a materialized view, a free sequence, a type and functions.
SOURCE = """
CREATE SCHEMA sales;
CREATE TYPE sales.mood AS ENUM ('sad', 'happy');
CREATE SEQUENCE sales.counter;
CREATE TABLE sales.t (id serial PRIMARY KEY, name text, mood sales.mood);
CREATE TABLE sales.u (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, t_id int REFERENCES sales.t (id));
CREATE VIEW sales.v AS SELECT id, name FROM sales.t;
CREATE MATERIALIZED VIEW sales.mv AS SELECT count(*) AS n FROM sales.u;
CREATE FUNCTION sales.twice(x int) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT x * 2';
CREATE PROCEDURE sales.noop() LANGUAGE sql AS 'SELECT 1';
"""
OWN_EVERYTHING = """
ALTER SCHEMA sales OWNER TO app_owner;
ALTER TYPE sales.mood OWNER TO app_owner;
ALTER SEQUENCE sales.counter OWNER TO app_owner;
ALTER TABLE sales.t OWNER TO app_owner;
ALTER TABLE sales.u OWNER TO app_owner;
ALTER VIEW sales.v OWNER TO app_owner;
ALTER MATERIALIZED VIEW sales.mv OWNER TO app_owner;
ALTER FUNCTION sales.twice(int) OWNER TO app_owner;
ALTER PROCEDURE sales.noop() OWNER TO app_owner;
"""
#: Every object above (and the sequences the tables own), as "kind name".
OBJECTS = {"r t", "r u", "v v", "m mv", "S counter", "S t_id_seq", "S u_id_seq", "f twice", "f noop", "T mood"}
OWNERS = """
SELECT c.relkind::text || ' ' || c.relname, pg_get_userbyid(c.relowner) FROM pg_class c
 WHERE c.relnamespace = 'sales'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm', 'S')
UNION ALL
SELECT 'f ' || p.proname, pg_get_userbyid(p.proowner) FROM pg_proc p WHERE p.pronamespace = 'sales'::regnamespace
UNION ALL
SELECT 'T ' || t.typname, pg_get_userbyid(t.typowner) FROM pg_type t
 WHERE t.typnamespace = 'sales'::regnamespace AND t.typtype = 'e'
"""


def owners(rows: list[tuple[str, str]]) -> dict[str, str]:
    """{"kind name": owner} from the OWNERS query."""
    return dict(rows)


def as_role(env, role: str, password: str, statement: str) -> list[tuple]:
    """Run a statement on the destination database, logged in as this role."""
    info = env.destination_info(role, password)
    with psycopg.connect(**info.connect_kwargs(), autocommit=True) as conn:
        cur = conn.execute(statement)
        return cur.fetchall() if cur.description else []


def migrate(env, config, state: MigrationState | None = None) -> tuple[dict, dict]:
    pre = migrate_schema(config, env.source_info(), env.destination_info(), "pre_data", state=state)
    post = migrate_schema(config, env.source_info(), env.destination_info(), "post_data", state=state)
    return pre.to_dict(), post.to_dict()


@pytest.fixture
def owned_source(migration_env):
    """The source objects, all owned by the role app_owner (which exists on the source only)."""
    migration_env.create_role(migration_env.source, "app_owner", "app-owner-pw")
    migration_env.src(SOURCE + OWN_EVERYTHING)
    source_owners = owners(migration_env.src(OWNERS))
    assert set(source_owners) == OBJECTS and set(source_owners.values()) == {"app_owner"}
    return migration_env


def test_default_owner_is_the_destination_account(owned_source):
    env = owned_source
    migrate(env, env.config(objects={"schemas": ["sales"]}))
    found = owners(env.dst(OWNERS))
    assert set(found) == OBJECTS
    assert set(found.values()) == {env.destination_info().user} == {"postgres"}
    assert env.dst("SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = 'sales'") == [("postgres",)]


def test_owner_mapping_gives_the_objects_to_the_mapped_role(owned_source):
    env = owned_source
    env.create_role(env.destination, "app_rw", "app-rw-pw")
    config = env.config(objects={"schemas": ["sales"]}, schema_migration={"owner_mapping": {"app_owner": "app_rw"}})
    state = MigrationState(env.destination_info(), config.state_schema, config.name)
    migrate(env, config, state)
    found = owners(env.dst(OWNERS))
    assert set(found) == OBJECTS
    assert set(found.values()) == {"app_rw"}, found
    assert env.dst("SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = 'sales'") == [("app_rw",)]
    # The mapped owner uses its objects without any grant: the serial default, the materialized view.
    as_role(env, "app_rw", "app-rw-pw", "INSERT INTO sales.t (name) VALUES ('x')")
    as_role(env, "app_rw", "app-rw-pw", "REFRESH MATERIALIZED VIEW sales.mv")
    # Re-running changes nothing: the mapped ownership is what the migration expects, so nothing differs.
    for phase in ("pre_data", "post_data"):
        again = migrate_schema(config, env.source_info(), env.destination_info(), phase, state=state).to_dict()
        assert again["created_total"] == 0, again["created"]
        assert again["differing"] == [], again["differing"]
    assert set(owners(env.dst(OWNERS)).values()) == {"app_rw"}


def test_owner_mapping_to_a_missing_role_keeps_the_destination_account(owned_source):
    env = owned_source
    assert env.destination.execute("SELECT count(*) FROM pg_roles WHERE rolname IN ('nobody_here', 'app_owner')") \
        == [(0,)]
    config = env.config(objects={"schemas": ["sales"]},
                        schema_migration={"owner_mapping": {"app_owner": "nobody_here"}})
    pre, post = migrate(env, config)
    assert pre["created"]["table"] == 2 and post["created"]["constraint"] == 2
    found = owners(env.dst(OWNERS))
    assert set(found) == OBJECTS
    assert set(found.values()) == {"postgres"}, found


def test_unmapped_source_owner_missing_on_the_destination_keeps_the_destination_account(owned_source):
    """owner_mapping for another role: app_owner is neither mapped nor present on the destination."""
    env = owned_source
    env.create_role(env.destination, "app_rw", "app-rw-pw")
    config = env.config(objects={"schemas": ["sales"]}, schema_migration={"owner_mapping": {"someone": "app_rw"}})
    migrate(env, config)
    assert set(owners(env.dst(OWNERS)).values()) == {"postgres"}


GRANTS = """
CREATE SCHEMA sales;
CREATE TABLE sales.t (id int PRIMARY KEY, secret text);
CREATE TABLE sales.w (id int PRIMARY KEY);
GRANT USAGE ON SCHEMA sales TO reader;
GRANT SELECT ON sales.t TO reader;
GRANT SELECT, INSERT ON sales.w TO reader, ghost;
GRANT UPDATE ON sales.t TO ghost;
"""


@pytest.fixture
def granting_source(migration_env):
    """Grants on the source to reader (on both sides) and ghost (source only)."""
    env = migration_env
    env.create_role(env.source, "reader", "reader-pw")
    env.create_role(env.source, "ghost", "ghost-pw")
    env.create_role(env.destination, "reader", "reader-pw")
    env.destination.execute("DROP ROLE IF EXISTS ghost")
    env.src(GRANTS)
    return env


def privilege(env, role: str, table: str, what: str) -> bool:
    return env.dst("SELECT has_table_privilege(%s, %s, %s)", (role, table, what))[0][0]


def test_grants_migrate_to_roles_that_exist_on_the_destination(granting_source):
    env = granting_source
    config = env.config(objects={"schemas": ["sales"]}, schema_migration={"migrate_grants": True})
    pre, post = migrate(env, config)
    assert privilege(env, "reader", "sales.t", "SELECT")
    assert privilege(env, "reader", "sales.w", "SELECT") and privilege(env, "reader", "sales.w", "INSERT")
    assert not privilege(env, "reader", "sales.t", "UPDATE")
    assert env.dst("SELECT has_schema_privilege('reader', 'sales', 'USAGE')") == [(True,)]
    # The reader can really read through the migrated grants.
    assert as_role(env, "reader", "reader-pw", "SELECT count(*) FROM sales.t") == [(0,)]
    # ghost exists only on the source: its grants are left out and reported; the grant to reader alongside stays.
    skipped = [s for s in pre["skipped"] + post["skipped"] if "ghost" in s["reason"]]
    assert sorted(s["object"] for s in skipped) == ["acl sales.TABLE t", "acl sales.TABLE w"], skipped
    assert all(s["reason"] == "grants to roles missing in the destination: ghost" for s in skipped)
    assert not any("reader" in s["reason"] for s in pre["skipped"] + post["skipped"])
    # The tables are still owned by the destination account (no owner_mapping).
    assert set(owners(env.dst(OWNERS)).values()) == {"postgres"}


def test_grants_made_by_a_role_missing_on_the_destination_are_left_out(granting_source):
    """pg_dump writes a grant of another grantor than the owner as SET SESSION AUTHORIZATION grantor; GRANT ...:
    with ghost missing on the destination, its grants are reported, not a reason to fail the phase."""
    env = granting_source
    env.src("GRANT USAGE ON SCHEMA sales TO ghost; GRANT SELECT ON sales.t TO ghost WITH GRANT OPTION")
    env.source.execute("SET ROLE ghost; GRANT SELECT ON sales.t TO reader", env.source_db)
    assert env.src("SELECT count(*) FROM pg_class c, aclexplode(c.relacl) a WHERE c.oid = 'sales.t'::regclass "
                   "AND a.grantor = 'ghost'::regrole") == [(1,)]
    config = env.config(objects={"schemas": ["sales"]}, schema_migration={"migrate_grants": True})
    pre, _ = migrate(env, config)
    reasons = {s["reason"] for s in pre["skipped"]}
    assert "grants made by a role missing in the destination: ghost" in reasons, pre["skipped"]
    assert pre["created"]["table"] == 2
    # reader's own grant from the owner migrated; the one through ghost could not.
    assert privilege(env, "reader", "sales.t", "SELECT")
    assert env.dst("SELECT count(*) FROM pg_class c, aclexplode(c.relacl) a WHERE c.oid = 'sales.t'::regclass "
                   "AND a.grantee = 'reader'::regrole") == [(1,)]


def test_grants_are_not_migrated_by_default(granting_source):
    env = granting_source
    pre, post = migrate(env, env.config(objects={"schemas": ["sales"]}))
    assert not privilege(env, "reader", "sales.t", "SELECT")
    assert not privilege(env, "reader", "sales.w", "SELECT")
    assert env.dst("SELECT has_schema_privilege('reader', 'sales', 'USAGE')") == [(False,)]
    assert env.dst("SELECT count(*) FROM pg_class WHERE relnamespace = 'sales'::regnamespace "
                   "AND relacl IS NOT NULL") == [(0,)]
    assert not any("grant" in s["reason"] for s in pre["skipped"] + post["skipped"])


def test_grants_with_owner_mapping(migration_env):
    """Both together: ownership goes to the mapped role, grants of the mapped role's objects follow."""
    env = migration_env
    env.create_role(env.source, "app_owner", "app-owner-pw")
    env.create_role(env.source, "reader", "reader-pw")
    env.create_role(env.destination, "app_rw", "app-rw-pw")
    env.create_role(env.destination, "reader", "reader-pw")
    env.src("CREATE SCHEMA sales; CREATE TABLE sales.t (id int PRIMARY KEY); ALTER TABLE sales.t OWNER TO app_owner;"
            "GRANT SELECT ON sales.t TO reader")
    config = env.config(objects={"schemas": ["sales"]},
                        schema_migration={"owner_mapping": {"app_owner": "app_rw"}, "migrate_grants": True})
    migrate(env, config)
    assert env.dst("SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = 'sales.t'::regclass") == [("app_rw",)]
    assert privilege(env, "reader", "sales.t", "SELECT")
    assert privilege(env, "app_rw", "sales.t", "DELETE")


DEFAULT_PRIVILEGES = """
CREATE SCHEMA sales AUTHORIZATION app_owner;
CREATE TABLE sales.t (id int PRIMARY KEY);
ALTER TABLE sales.t OWNER TO app_owner;
ALTER DEFAULT PRIVILEGES FOR ROLE app_owner IN SCHEMA sales GRANT SELECT ON TABLES TO reader, ghost;
"""


def test_default_privileges_follow_the_owner_mapping(migration_env):
    env = migration_env
    for role in ("app_owner", "reader", "ghost"):
        env.create_role(env.source, role, f"{role}-pw")
    env.create_role(env.destination, "app_rw", "app-rw-pw")
    env.create_role(env.destination, "reader", "reader-pw")
    env.destination.execute("DROP ROLE IF EXISTS ghost")
    env.src(DEFAULT_PRIVILEGES)
    config = env.config(objects={"schemas": ["sales"]},
                        schema_migration={"owner_mapping": {"app_owner": "app_rw"}, "migrate_grants": True})
    _, post = migrate(env, config)
    assert env.dst("SELECT defaclrole::regrole::text, defaclnamespace::regnamespace::text FROM pg_default_acl") == \
        [("app_rw", "sales")]
    assert {s["reason"] for s in post["skipped"]} == {"grants to roles missing in the destination: ghost"}
    # A table app_rw creates later in sales is readable by reader, as on the source.
    as_role(env, "app_rw", "app-rw-pw", "CREATE TABLE sales.later (id int)")
    assert privilege(env, "reader", "sales.later", "SELECT")


def test_default_privileges_of_a_missing_role_are_left_out(migration_env):
    env = migration_env
    for role in ("app_owner", "reader", "ghost"):
        env.create_role(env.source, role, f"{role}-pw")
    env.create_role(env.destination, "reader", "reader-pw")
    env.src(DEFAULT_PRIVILEGES)
    config = env.config(objects={"schemas": ["sales"]}, schema_migration={"migrate_grants": True})
    _, post = migrate(env, config)
    assert env.dst("SELECT count(*) FROM pg_default_acl") == [(0,)]
    assert [s["reason"] for s in post["skipped"]] == \
        ["default privileges of roles missing in the destination: app_owner"]


def test_column_grants_migrate(granting_source):
    env = granting_source
    env.src("ALTER TABLE sales.w ADD COLUMN note text; GRANT UPDATE (note) ON sales.w TO reader")
    migrate(env, env.config(objects={"schemas": ["sales"]}, schema_migration={"migrate_grants": True}))
    assert env.dst("SELECT has_column_privilege('reader', 'sales.w', 'note', 'UPDATE')") == [(True,)]


def test_verification_without_role_options(owned_source):
    """expected_definitions and actual_definitions agree for the default (no owners, no grants)."""
    env = owned_source
    config = env.config(objects={"schemas": ["sales"]})
    migrate(env, config)
    expected = expected_definitions(config, env.source_info())
    actual = actual_definitions(config, env.destination_info(), ["sales"])
    assert sorted(set(expected) ^ set(actual)) == []


#: A SECURITY DEFINER function and a type PUBLIC may not use on the source; reader (on both sides) may.
NARROWED = """
CREATE FUNCTION sales.secure_lookup(account_id bigint) RETURNS bigint LANGUAGE sql SECURITY DEFINER
    AS 'SELECT account_id';
REVOKE ALL ON FUNCTION sales.secure_lookup(bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION sales.secure_lookup(bigint) TO reader;
CREATE TYPE sales.grade AS ENUM ('low', 'high');
REVOKE USAGE ON TYPE sales.grade FROM PUBLIC;
"""
NARROWED_PRIVILEGES = """
SELECT r, has_function_privilege(r, 'sales.secure_lookup(bigint)', 'EXECUTE'),
       has_type_privilege(r, 'sales.grade', 'USAGE')
  FROM unnest(ARRAY['reader', 'outsider']) AS r ORDER BY r
"""


@pytest.fixture
def narrowing_source(granting_source):
    env = granting_source
    env.create_role(env.source, "outsider", "outsider-pw")
    env.create_role(env.destination, "outsider", "outsider-pw")
    env.src(NARROWED)
    assert env.src(NARROWED_PRIVILEGES) == [("outsider", False, False), ("reader", True, False)]
    return env


def test_revokes_from_public_are_named_in_the_report_when_grants_are_not_migrated(narrowing_source):
    env = narrowing_source
    pre, _ = migrate(env, env.config(objects={"schemas": ["sales"]}))
    named = {r["object"]: r["reason"] for r in pre["review"]}
    assert set(named) == {"function sales.secure_lookup(account_id bigint) (no EXECUTE for PUBLIC)",
                          "type sales.grade (no USAGE for PUBLIC)"}, pre["review"]
    assert all("open to every role" in why and "migrate_grants: true" in why for why in named.values())
    # What the report warns about: every role may use them on the destination.
    assert env.dst(NARROWED_PRIVILEGES) == [("outsider", True, True), ("reader", True, True)]


def test_revokes_from_public_migrate_with_grants(narrowing_source):
    env = narrowing_source
    config = env.config(objects={"schemas": ["sales"]}, schema_migration={"migrate_grants": True})
    assert env.precheck(objects={"schemas": ["sales"]}, schema_migration={"migrate_grants": True}).result(
        "privileges_not_migrated").status == "passed"
    pre, _ = migrate(env, config)
    assert not any("for PUBLIC" in r["object"] for r in pre["review"])
    assert env.dst(NARROWED_PRIVILEGES) == env.src(NARROWED_PRIVILEGES)
