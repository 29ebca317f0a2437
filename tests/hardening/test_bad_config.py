"""Bad configs: wrong types, unknown fields, conflicting mappings, filters that are not SQL or try to inject SQL,
names at the edges (quotes, semicolons, unicode, spaces, reserved words, case, 63 and 64+ bytes), YAML traps.

Each gets a ConfigError naming the field and the fix, or works correctly end to end. The end-to-end cases
(``integration``) prove that injection attempts through every config field that reaches SQL changed nothing (sentinel
tables and a side-effect function on both servers), and migrate a source whose names are as odd as PostgreSQL allows.
The cases of tests/unit/test_config.py are not repeated here.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from airflow_pgmigrate.config import MigrationConfig
from airflow_pgmigrate.engine.connection import connect
from airflow_pgmigrate.engine.full_load import FullLoadError, run_full_load
from airflow_pgmigrate.engine.incremental import release, run_incremental
from airflow_pgmigrate.engine.names import QualifiedName
from airflow_pgmigrate.engine.precheck import run_precheck
from airflow_pgmigrate.engine.schema import SchemaMigrationError, migrate_schema
from airflow_pgmigrate.engine.sqlfilter import UnsafeRowFilter, normalize_row_filter
from airflow_pgmigrate.engine.state import MigrationState
from airflow_pgmigrate.engine.verify import compare, verify_migration
from airflow_pgmigrate.exceptions import ConfigError
from tests.hardening.exact_compare import assert_tables_equal, catch_up, start_migration

pytestmark = [pytest.mark.hardening]

MINIMAL: dict[str, Any] = {"name": "shop", "source": {"conn_id": "src"}, "destination": {"conn_id": "dst"}}


def _with(**changes: Any) -> dict[str, Any]:
    data = copy.deepcopy(MINIMAL)
    data.update(changes)
    return data


def _problem(data: dict[str, Any], field: str) -> Any:
    with pytest.raises(ConfigError) as info:
        MigrationConfig.from_dict(data)
    assert field in info.value.fields, str(info.value)
    problem = next(p for p in info.value.problems if p.field == field)
    assert problem.message.strip() and problem.fix.strip()
    return problem


# -- wrong types and unknown fields ------------------------------------------------------------------------------

_WRONG: list[tuple[str, dict[str, Any], str, str]] = [
    ("filter key not a string", _with(filters={1: "id > 1"}), "filters[1]", "a string"),
    ("filter value null", _with(filters={"public.a": None}), "filters['public.a']", "a string"),
    ("filter value a number", _with(filters={"public.a": 5}), "filters['public.a']", "a string"),
    ("table list holding a number", _with(objects={"tables": ["public.a", 5]}), "objects.tables[1]", "a string"),
    ("table rename given as a list", _with(mapping={"tables": {"public.a": ["b"]}}), "mapping.tables['public.a']",
     "a string"),
    ("column renames given as a list", _with(mapping={"columns": {"public.a": ["x"]}}),
     "mapping.columns['public.a']", "a mapping"),
    ("integer given as a string", _with(full_load={"parallel_jobs": "4"}), "full_load.parallel_jobs", "an integer"),
    ("integer given as a fraction", _with(full_load={"parallel_jobs": 2.5}), "full_load.parallel_jobs", "an integer"),
    ("name given as a boolean", _with(name=True), "name", "a string"),
    ("section given as a string", _with(cutover="automatic"), "cutover", "a mapping"),
    ("owner mapping given as a list", _with(schema_migration={"owner_mapping": ["a", "b"]}),
     "schema_migration.owner_mapping", "a mapping"),
]


@pytest.mark.parametrize(("data", "field", "expected"), [c[1:] for c in _WRONG], ids=[c[0] for c in _WRONG])
def test_wrong_types_name_the_field_and_the_expected_type(data: dict[str, Any], field: str, expected: str) -> None:
    assert expected in _problem(data, field).message


@pytest.mark.parametrize(("data", "field", "hint"), [
    (_with(throttling={"full_load": {"rows_per_sec": 1}}), "throttling.full_load.rows_per_sec", "rows_per_second"),
    (_with(mapping={"column": {}}), "mapping.column", "columns"),
    (_with(rds={"db_instance_identifier": "db-1", "regoin": "us-east-1"}), "rds.regoin", "region"),
    (_with(schema_migration={"owner_map": {}}), "schema_migration.owner_map", "owner_mapping"),
], ids=["three levels deep", "mapping", "rds", "schema_migration"])
def test_unknown_nested_fields_get_the_close_name(data: dict[str, Any], field: str, hint: str) -> None:
    assert hint in _problem(data, field).fix


# -- names: 63 bytes is the limit, in UTF-8 bytes --------------------------------------------------------------

NAME_63 = "ü" * 31 + "x"  # 31 two-byte characters and one: 63 bytes, 32 characters
NAME_64 = "é" * 32  # 32 characters, 64 bytes: PostgreSQL would truncate it
assert len(NAME_63.encode()) == 63 and len(NAME_64.encode()) == 64


def _names_everywhere(name: str) -> dict[str, Any]:
    """A config with ``name`` in every field that holds a name (a name of the same length for the state schema,
    which must be a schema of its own)."""
    key = f"public.{name}"
    state_schema = name.replace(name[0], "ö")
    return _with(
        source={"conn_id": "src", "database": name},
        objects={"schemas": [name], "tables": [key], "columns": {key: [name]}},
        mapping={"schemas": {name: name}, "tables": {key: name}, "columns": {key: {name: name}}},
        filters={key: "true"},
        schema_migration={"owner_mapping": {name: name}},
        state_schema=state_schema,
    )


def test_63_byte_multibyte_names_are_accepted_everywhere() -> None:
    config = MigrationConfig.from_dict(_names_everywhere(NAME_63))
    assert config.state_schema == "ö" * 31 + "x"
    assert config.mapping.tables == {f"public.{NAME_63}": NAME_63}


def test_64_byte_names_are_refused_in_every_field_naming_it() -> None:
    with pytest.raises(ConfigError) as info:
        MigrationConfig.from_dict(_names_everywhere(NAME_64))
    key = f"public.{NAME_64}"
    expected = {
        "source.database", "objects.schemas[0]", "objects.tables[0]", f"objects.columns[{key!r}]",
        f"mapping.schemas[{NAME_64!r}]", f"mapping.tables[{key!r}]", f"mapping.columns[{key!r}]",
        f"mapping.columns[{key!r}][{NAME_64!r}]", f"filters[{key!r}]", f"schema_migration.owner_mapping[{NAME_64!r}]",
        "state_schema",
    }
    assert expected <= set(info.value.fields), info.value.fields
    for problem in info.value.problems:
        assert "longer than 63 bytes" in problem.message and "truncates" in problem.fix


# -- conflicting and misplaced names -----------------------------------------------------------------------------


@pytest.mark.parametrize(("data", "field", "words"), [
    (_with(mapping={"tables": {"public.orders": "sales.orders"}}), "mapping.tables['public.orders']", "mapping.schemas"),
    (_with(state_schema="pg_state"), "state_schema", "pg_"),
    (_with(mapping={"schemas": {"public": "pg_catalog"}}), "mapping.schemas['public']", "pg_"),
    (_with(objects={"schemas": ["public", "pg_catalog"]}), "objects.schemas[1]", "system schema"),
    (_with(objects={"schemas": ["information_schema"]}), "objects.schemas[0]", "system schema"),
    (_with(objects={"schemas": ["pgmigrate"]}), "state_schema", "schema of its own"),
    (_with(mapping={"schemas": {"public": "pgmigrate"}}), "state_schema", "schema public"),
    (_with(objects={"tables": ["Pgm.t"]}, mapping={"name_case": "lower"}, state_schema="pgm"), "state_schema",
     "table Pgm.t"),
], ids=["table renamed into another schema", "state schema pg_", "schema mapped to pg_catalog",
        "pg_catalog selected", "information_schema selected", "state schema selected",
        "schema mapped onto the state schema", "table landing in the state schema"])
def test_misplaced_names(data: dict[str, Any], field: str, words: str) -> None:
    problem = _problem(data, field)
    assert words in problem.message + problem.fix


@pytest.mark.parametrize("name", [
    'Or"der;s', "select", "user", "order", "Upper Case", "naïve café ☃", " leading and trailing ", "tab\there",
    "semi;colon", "$1", "a'b", "--comment", NAME_63,
])
def test_odd_names_are_taken_verbatim(name: str) -> None:
    key = '"' + name.replace('"', '""') + '"."' + name.replace('"', '""') + '"'
    config = MigrationConfig.from_dict(_with(
        objects={"tables": [key], "columns": {key: [name]}},
        mapping={"schemas": {name: name}, "tables": {key: name}, "columns": {key: {name: name}}},
        state_schema="pgmigrate_state", filters={key: f'"{name.replace(chr(34), chr(34) * 2)}" IS NOT NULL'}))
    table = QualifiedName(name, name)
    assert config.row_filter(table) is not None
    assert MigrationConfig.from_dict(config.to_dict()) == config


def test_names_that_reach_replication_slots_cannot_carry_sql() -> None:
    """The slot and publication names come from ``name`` and ``incremental.slot_prefix``: both are restricted."""
    for data, field in [
        (_with(name='shop"; DROP TABLE x; --'), "name"),
        (_with(incremental={"slot_prefix": "a';drop_"}), "incremental.slot_prefix"),
        (_with(incremental={"slot_prefix": "pgm "}), "incremental.slot_prefix"),
    ]:
        _problem(data, field)


# -- row filters: not SQL, or SQL trying to do more than filter -------------------------------------------------

_REFUSED_FILTERS: list[tuple[str, str]] = [
    ("id > 0) OR (1=1", "not a valid SQL condition"),
    ("id > 0 /* comment */; DROP TABLE x", "more than one SQL statement"),
    ("id > 0 -- comment\n; DROP TABLE x", "more than one SQL statement"),
    ("$$a$$ = $$a$$; DROP TABLE x", "more than one SQL statement"),
    ("$q$x$q$ <> ''; SELECT pg_terminate_backend(1)", "more than one SQL statement"),
    ("(SELECT pg_terminate_backend(1)) IS NULL", "subqueries"),
    ("id IN (SELECT lo_import('/etc/passwd'))", "subqueries"),
    ("pg_terminate_backend(1)", "pg_terminate_backend"),
    ("lo_import('/etc/passwd') > 0", "lo_import"),
    ("dblink_exec('dbname=x', 'DROP TABLE x') IS NULL", "dblink_exec"),
    ("public.dblink('x', 'y') IS NULL", "dblink"),
    ('"pg_sleep"(1) IS NULL', "pg_sleep"),
    ('U&"pg\\005fsleep"(1) IS NULL', "pg_sleep"),
    ("PG_CATALOG.PG_SLEEP(1) IS NULL", "pg_sleep"),
    ("set_config('role', 'postgres', false) IS NULL", "set_config"),
    ("nextval('orders_id_seq') > 0", "nextval"),
    ("query_to_xml('DELETE FROM x', true, true, '') IS NULL", "query_to_xml"),
    ("ts_rewrite('a'::tsquery, 'SELECT pg_terminate_backend(1)') IS NULL", "ts_rewrite"),
    ("random() < 0.5", "random"),
    ("true FOR UPDATE", "single condition"),
    ("true INTO TEMP x", "not a valid SQL condition"),
    ("id > 0 WINDOW w AS ()", "single condition"),
]


@pytest.mark.parametrize(("condition", "message"), _REFUSED_FILTERS, ids=[c for c, _ in _REFUSED_FILTERS])
def test_filters_that_are_not_one_harmless_condition_are_refused(condition: str, message: str) -> None:
    problem = _problem(_with(filters={"public.orders": condition}), "filters['public.orders']")
    assert message in problem.message


@pytest.mark.parametrize(("condition", "expected"), [
    ("id > 0 /* ; DROP TABLE x */", "id > 0"),
    ("id > 0 -- ; DROP TABLE x", "id > 0"),
    ("note <> $$; DROP TABLE x; $$", "note <> '; DROP TABLE x; '"),
    ("note <> 'x''; DROP TABLE x; --'", "note <> 'x''; DROP TABLE x; --'"),
    ('"select" = 1 AND "we;ird ""col""" <> E\'\\\\\'', "\"select\" = 1 AND \"we;ird \"\"col\"\"\" <> '\\'"),
])
def test_injection_looking_text_inside_literals_and_comments_stays_data(condition: str, expected: str) -> None:
    """What survives normalisation is one condition whose only semicolons sit inside string literals."""
    normalized = normalize_row_filter(condition)
    assert normalized == expected
    from pglast import parse_sql

    assert len(parse_sql(f"SELECT 1 WHERE {normalized}")) == 1


# -- YAML traps ----------------------------------------------------------------------------------------------------


def test_yaml_keys_written_twice_are_reported_not_silently_dropped(tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text("\n".join([
        "name: shop", "source: {conn_id: src}", "destination: {conn_id: dst}",
        "filters:", "  public.orders: \"id > 1\"", "  public.orders: \"id > 2\"",
        "objects:", "  tables: [public.orders]", "objects:", "  schemas: [public]",
        "mapping:", "  columns:", "    public.orders: {a: b, a: c}", "",
    ]), encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        MigrationConfig.from_yaml(path)
    assert info.value.fields == ["filters['public.orders']", "objects", "mapping.columns['public.orders']['a']"]
    assert "lines 5 and 6" in info.value.problems[0].message
    assert all(p.fix for p in info.value.problems)


def test_yaml_aliases_are_not_duplicates_and_do_not_explode(tmp_path: Path) -> None:
    lines = ["name: shop", "source: {conn_id: src}", "destination: {conn_id: dst}",
             "objects:", "  tables: &t [public.a, public.b]", "  include: *t", "x0: &x0 [a, a, a, a, a, a, a, a, a, a]"]
    lines += [f"x{i}: &x{i} [*x{i - 1}, *x{i - 1}, *x{i - 1}, *x{i - 1}, *x{i - 1}, *x{i - 1}, *x{i - 1}, *x{i - 1}]"
              for i in range(1, 12)]  # 10 * 8**11 items if expanded
    path = tmp_path / "alias.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    started = time.monotonic()
    with pytest.raises(ConfigError) as info:
        MigrationConfig.from_yaml(path)
    assert time.monotonic() - started < 5
    assert set(info.value.fields) == {f"x{i}" for i in range(12)}  # unknown fields, nothing else


# -- end to end: injection attempts through every config field that reaches SQL change nothing -------------------

GUARD = """
CREATE SCHEMA guard;
CREATE TABLE guard.sentinel (n int);
INSERT INTO guard.sentinel VALUES (0);
CREATE FUNCTION guard.hit() RETURNS int LANGUAGE sql VOLATILE AS $$ INSERT INTO guard.sentinel VALUES (1) RETURNING 1 $$;
CREATE FUNCTION guard.same(int, int) RETURNS boolean LANGUAGE sql VOLATILE
    AS $$ INSERT INTO guard.sentinel VALUES (2); SELECT $1 = $2 $$;
CREATE OPERATOR guard.=== (LEFTARG = int, RIGHTARG = int, FUNCTION = guard.same);
"""
DROP = "; DROP TABLE guard.sentinel; --"
CALL = "; SELECT guard.hit(); --"
#: Names carrying SQL after every kind of quote; a database name that libpq would read as connection parameters.
SOURCE_DB = 's\'"' + DROP + " port=1 host=nowhere"
DESTINATION_DB = 'd\'"' + DROP + " port=1 host=nowhere"
TABLE = 't")' + DROP
KEY_COLUMN = 'a");' + CALL
TEXT_COLUMN = "b'" + DROP
SOURCE_ROLE = 'r"' + DROP
DESTINATION_ROLE = "o'" + DROP
EVIL_NOTES = ["x'" + DROP, CALL, "a\\b", '"); DROP TABLE guard.sentinel; --', "plain"]


def _key(schema: str, table: str) -> str:
    return str(QualifiedName(schema, table))


def _guarded_databases(env: Any) -> tuple[Any, Any]:
    """A source and a destination database with odd names, standard_conforming_strings off (so a backslash in a
    literal would mean something else than written, were it not pinned), and a guard schema each."""
    env.source.create_database(SOURCE_DB)
    env.cleanup.append(lambda: env.source.drop_database(SOURCE_DB))
    env.cleanup.append(lambda: env.source.execute(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = %s", params=(SOURCE_DB,)))
    env.destination.create_database(DESTINATION_DB)
    env.cleanup.append(lambda: env.destination.drop_database(DESTINATION_DB))
    source, destination = env.source.info(SOURCE_DB), env.destination.info(DESTINATION_DB)
    for server, info in ((env.source, source), (env.destination, destination)):
        server.execute(sql.SQL("ALTER DATABASE {} SET standard_conforming_strings = off").format(
            sql.Identifier(info.dbname)).as_string(None))
        with psycopg.connect(**info.connect_kwargs(), autocommit=True) as conn:
            conn.execute(GUARD)
    return source, destination


def _assert_guards_intact(env: Any, source: Any, destination: Any) -> None:
    for info in (source, destination):
        with connect(info) as conn:
            assert conn.execute("SELECT n FROM guard.sentinel").fetchall() == [(0,)], f"a sentinel moved on {info}"
    for server in (env.source, env.destination):
        assert server.execute("SELECT count(*) FROM pg_database WHERE datname = 'postgres'") == [(1,)]


def _roles(env: Any) -> None:
    for server, role in ((env.source, SOURCE_ROLE), (env.destination, DESTINATION_ROLE)):
        server.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(role)).as_string(None))
        env.cleanup.append(lambda server=server, role=role: server.execute(
            sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)).as_string(None)))


@pytest.mark.integration
def test_injection_attempts_through_every_sql_field_change_nothing(migration_env):
    env = migration_env
    _roles(env)
    source, destination = _guarded_databases(env)
    with connect(source) as conn:
        conn.execute("CREATE TABLE public.orders (id int PRIMARY KEY, note text)")
        conn.cursor().executemany("INSERT INTO public.orders VALUES (%s, %s)", list(enumerate(EVIL_NOTES, 1)))
        conn.execute(sql.SQL("CREATE TABLE public.{t} ({k} int PRIMARY KEY, {c} text); ALTER TABLE public.{t} OWNER "
                             "TO {r}").format(t=sql.Identifier(TABLE), k=sql.Identifier(KEY_COLUMN),
                                              c=sql.Identifier(TEXT_COLUMN), r=sql.Identifier(SOURCE_ROLE)))
        conn.cursor().executemany(sql.SQL("INSERT INTO public.{} VALUES (%s, %s)").format(sql.Identifier(TABLE)),
                         list(enumerate(EVIL_NOTES, 1)))
    table_key = _key("public", TABLE)
    target_schema, target_table, target_column = 'app"' + DROP, "u')" + CALL, 'c"' + CALL
    state_schema = 'st"' + DROP
    # One condition whose literals and comment hold statements, and a backslash that standard strings keep.
    condition = ("note <> 'x''" + DROP + "' AND note <> $$" + CALL + "$$ /*" + DROP + " */ AND note <> 'a\\b'")
    config = env.config(
        objects={"tables": ["public.orders", table_key], "columns": {table_key: [KEY_COLUMN, TEXT_COLUMN]}},
        mapping={"schemas": {"public": target_schema}, "tables": {table_key: target_table},
                 "columns": {table_key: {TEXT_COLUMN: target_column}}},
        filters={"public.orders": condition}, state_schema=state_schema,
        schema_migration={"owner_mapping": {SOURCE_ROLE: DESTINATION_ROLE}})
    report = run_precheck(config, source, destination)
    for item in ("selected_objects", "row_filters", "name_mapping", "name_conflicts"):
        assert report.result(item).status == "passed", report.format_table()
    start_migration(config, source, destination)
    renamed = {QualifiedName("public", TABLE): QualifiedName(target_schema, target_table)}
    assert_tables_equal(source, destination, renamed)
    orders = sql.SQL("SELECT id, note FROM {} ORDER BY id")
    with connect(destination) as conn:
        assert conn.execute(orders.format(sql.Identifier(target_schema, "orders"))).fetchall() == \
            [(4, '"); DROP TABLE guard.sentinel; --'), (5, "plain")]
    with connect(source) as conn:  # INSERT, UPDATE (into and out of the filter), UPDATE of the key, DELETE
        conn.cursor().executemany("INSERT INTO public.orders VALUES (%s, %s)", list(enumerate(EVIL_NOTES, 11)))
        conn.execute("UPDATE public.orders SET note = 'moved in' WHERE id = 1")
        conn.execute("UPDATE public.orders SET note = %s WHERE id = 5", (CALL,))
        t, k, c = sql.Identifier("public", TABLE), sql.Identifier(KEY_COLUMN), sql.Identifier(TEXT_COLUMN)
        conn.execute(sql.SQL("UPDATE {t} SET {k} = {k} + 100 WHERE {k} = 1").format(t=t, k=k))
        conn.execute(sql.SQL("UPDATE {t} SET {c} = {c} || %s WHERE {k} = 2").format(t=t, k=k, c=c), (DROP,))
        conn.execute(sql.SQL("DELETE FROM {t} WHERE {k} = 3").format(t=t, k=k))
    catch_up(config, source, destination)
    assert_tables_equal(source, destination, renamed)
    with connect(destination) as conn:
        assert [r[0] for r in conn.execute(orders.format(sql.Identifier(target_schema, "orders")))] == [1, 4, 14, 15]
        assert conn.execute(sql.SQL("SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = {}::regclass").format(
            sql.Literal(sql.Identifier(target_schema, target_table).as_string(conn)))).fetchone() == (DESTINATION_ROLE,)
    assert MigrationState(destination, state_schema, config.name).get("full_load")["completed"] is True
    verified = compare(config, source, destination)
    assert verified["equal"] and verified["rows"] == 4 + 4, verified
    assert release(config, source, log=lambda m: None) == {"slot": True, "publication": True}
    _assert_guards_intact(env, source, destination)


@pytest.mark.integration
def test_filters_calling_volatile_functions_are_refused_before_anything_evaluates_them(migration_env):
    """Functions and operators with side effects pass the static check (they are the user's own); each step refuses
    them on the server it would run them on, before evaluating the filter: precheck, full load and verification on
    the source, incremental sync on the destination."""
    env = migration_env
    source, destination = env.source_info(), env.destination_info()
    for info in (source, destination):
        with psycopg.connect(**info.connect_kwargs(), autocommit=True) as conn:
            conn.execute(GUARD)
    env.src("CREATE TABLE public.orders (id int PRIMARY KEY, note text); CREATE TABLE public.items (id int PRIMARY KEY);"
            "INSERT INTO public.orders SELECT g, 'n' FROM generate_series(1, 5) g;"
            "INSERT INTO public.items SELECT generate_series(1, 5);"
            # Harmless on the source, a side effect on the destination: only the destination's check can tell.
            "CREATE FUNCTION guard.pure() RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT 1'")
    env.dst("CREATE FUNCTION guard.pure() RETURNS int LANGUAGE sql VOLATILE "
            "AS $$ INSERT INTO guard.sentinel VALUES (3) RETURNING 1 $$")
    selection = {"tables": ["public.orders", "public.items"]}
    bad = env.config(objects=selection, filters={"public.orders": "guard.hit() = 1",
                                                 "public.items": "id OPERATOR(guard.===) 1"})
    report = run_precheck(bad, source, destination)
    item = report.result("row_filters")
    assert item.status == "failed" and "guard.hit()" in item.detail and "operator ===" in item.detail, item.detail
    migrate_schema(bad, source, destination, "pre_data")
    with pytest.raises(UnsafeRowFilter, match="calls VOLATILE function.*nothing was evaluated"):
        run_full_load(bad, source, destination)
    assert env.src("SELECT count(*) FROM pg_replication_slots WHERE database = current_database()") == [(0,)]
    with pytest.raises(UnsafeRowFilter, match="on the source"):
        compare(bad, source, destination)
    only_destination = env.config(objects=selection, filters={"public.orders": "guard.pure() = 1"})
    run_full_load(only_destination, source, destination)
    env.src("INSERT INTO public.orders VALUES (6, 'after')")
    with pytest.raises(UnsafeRowFilter, match=r"on the destination: guard\.pure\(\)"):
        run_incremental(only_destination, source, destination, window_seconds=10)
    assert env.dst("SELECT max(id) FROM public.orders") == [(5,)]
    _assert_guards_intact(env, source, destination)


# -- end to end: a source whose names are as odd as PostgreSQL allows, renamed to other odd names ---------------

S1, S2, S3 = 'Mixed Case "Schema"; --', "select", NAME_63
T2 = "表" * 21  # 63 bytes
COL_63 = "é" * 31 + "z"
NASTY_NAMES = sql.SQL("""
CREATE SCHEMA {s1}; CREATE SCHEMA {s2}; CREATE SCHEMA {s3};
CREATE TABLE {s1}."order" ("user" int PRIMARY KEY, "select" text, {q} int, "naïve café ☃" text, {c63} text,
                           "CamelCase" int);
CREATE TABLE {s2}.{t2} (id bigserial PRIMARY KEY, "a" int, "A" int, "group" text, "tab le; spaces" text);
CREATE TABLE {s3}."User" (id int PRIMARY KEY, order_user int REFERENCES {s1}."order" ("user") ON UPDATE CASCADE,
                          note text);
CREATE INDEX "idx ""note""; x" ON {s3}."User" (note);
INSERT INTO {s1}."order" SELECT g, CASE WHEN g % 4 = 0 THEN 'skip me' ELSE 'keep ' || g END, g, 'ü' || g,
                                repeat('é', g), -g FROM generate_series(1, 20) g;
INSERT INTO {s2}.{t2} ("a", "A", "group", "tab le; spaces") SELECT g, -g, 'g' || g, E'tab\\there' FROM generate_series(1, 20) g;
INSERT INTO {s3}."User" SELECT g, CASE WHEN g % 4 = 0 OR g = 5 THEN NULL ELSE g END, 'note ' || g
                         FROM generate_series(1, 20) g;  -- no reference to an order the filter leaves out
""").format(s1=sql.Identifier(S1), s2=sql.Identifier(S2), s3=sql.Identifier(S3), t2=sql.Identifier(T2),
            q=sql.Identifier('Col "Q"; x'), c63=sql.Identifier(COL_63))


@pytest.mark.integration
def test_odd_names_migrate_and_replicate_exactly_when_renamed_to_other_odd_names(migration_env):
    env = migration_env
    with connect(env.source_info()) as conn:
        conn.execute(NASTY_NAMES)
    order, t2 = _key(S1, "order"), _key(S2, T2)
    d1, d2, d3 = 'Another "one"; DROP', "user", "€" * 21  # the last is 63 bytes
    config = env.config(
        objects={"schemas": [S1, S2, S3]},
        mapping={"schemas": {S1: d1, S2: d2, S3: d3}, "tables": {order: "from", t2: 'Ta;ble "2"'},
                 "columns": {order: {"select": "where", 'Col "Q"; x': "ü" * 31 + "y"}, t2: {"a": "A", "A": "a"}}},
        filters={order: "\"select\" IS DISTINCT FROM 'skip me'"})
    source, destination = env.source_info(), env.destination_info()
    report = run_precheck(config, source, destination)
    for item in ("selected_objects", "row_filters", "name_mapping", "name_conflicts"):
        assert report.result(item).status == "passed", report.format_table()
    start_migration(config, source, destination)
    tables = {QualifiedName(S1, "order"): QualifiedName(d1, "from"), QualifiedName(S2, T2): QualifiedName(d2, 'Ta;ble "2"'),
              QualifiedName(S3, "User"): QualifiedName(d3, "User")}
    kept = {QualifiedName(S1, "order"): "\"select\" IS DISTINCT FROM 'skip me'"}
    assert_tables_equal(source, destination, tables, kept)
    with connect(source) as conn:
        conn.execute(sql.SQL("UPDATE {}.\"order\" SET \"user\" = \"user\" + 100 WHERE \"user\" <= 3").format(
            sql.Identifier(S1)))  # a key update, cascaded to {S3}."User" on the source
        conn.execute(sql.SQL("UPDATE {}.\"order\" SET \"select\" = 'skip me' WHERE \"user\" = 5").format(
            sql.Identifier(S1)))  # leaves the filter
        conn.execute(sql.SQL("UPDATE {}.\"order\" SET \"select\" = 'back' WHERE \"user\" = 8").format(
            sql.Identifier(S1)))  # enters it
        conn.execute(sql.SQL("UPDATE {t} SET \"a\" = \"A\", \"A\" = \"a\" WHERE id % 2 = 0; "
                             "DELETE FROM {t} WHERE id = 7; INSERT INTO {t} (\"a\", \"group\") VALUES (99, 'new')")
                     .format(t=sql.Identifier(S2, T2)))
        conn.execute(sql.SQL("DELETE FROM {}.\"User\" WHERE id = 20").format(sql.Identifier(S3)))
    catch_up(config, source, destination)
    assert_tables_equal(source, destination, tables, kept)
    verified = verify_migration(config, source, destination)  # brings the bigserial's sequence to the snapshot too
    assert verified["equal"], verified
    (sequence,) = verified["sequences"]
    assert sequence["sequence"].startswith(f"{d2}.表") and sequence["equal"]
    with connect(destination) as conn:
        columns = conn.execute(sql.SQL("SELECT array_agg(attname::text ORDER BY attnum) FROM pg_attribute "
                                       "WHERE attrelid = {}::regclass AND attnum > 0").format(
            sql.Literal(sql.Identifier(d1, "from").as_string(conn)))).fetchone()[0]
        assert columns == ["user", "where", "ü" * 31 + "y", "naïve café ☃", COL_63, "CamelCase"]
        swapped = conn.execute(sql.SQL('SELECT "a", "A" FROM {} WHERE id = 1').format(
            sql.Identifier(d2, 'Ta;ble "2"'))).fetchone()
        assert swapped == (-1, 1)  # source "a" = 1 lives in destination "A"


@pytest.mark.integration
def test_conflicting_and_overlong_destination_names_are_caught_by_the_precheck(migration_env):
    """What only the source catalog can tell: a rename onto an existing column, names that outgrow 63 bytes through
    name_case (Python's lower() of 'İ' is two characters), entries for tables the selection leaves out."""
    env = migration_env
    long_table, long_column = "İ" * 31 + "x", "İ" * 31 + "y"  # 63 bytes each; 94 once lower-cased
    env.src(sql.SQL("CREATE TABLE public.t (a int PRIMARY KEY, b int); CREATE TABLE public.{} ({} int PRIMARY KEY);"
                    "CREATE TABLE public.other (id int PRIMARY KEY)").format(
        sql.Identifier(long_table), sql.Identifier(long_column)).as_string(None))
    selection = {"tables": ["public.t", _key("public", long_table)]}
    config = env.config(objects=selection, mapping={"columns": {"public.t": {"a": "b"}},
                                                    "tables": {"public.other": "renamed"}, "name_case": "lower"},
                        filters={"public.other": "id > 0"})
    report = run_precheck(config, env.source_info(), env.destination_info())
    mapping = report.result("name_mapping")
    assert mapping.status == "failed"
    assert "columns a and b of public.t both map to b" in mapping.detail
    assert f"maps to a name longer than 63 bytes: {long_table.lower()}" in mapping.detail
    assert f"column {long_column} of public.{long_table} maps to a name longer than 63 bytes" in mapping.detail
    selected = [r for r in report.results if r.name == "selected_objects" and r.status == "failed"]
    assert selected and "mapping.tables names public.other, which the selection does not migrate" in selected[0].detail
    assert "filters names public.other, which the selection does not migrate" in selected[0].detail
    # Run anyway: the collision stops the schema step with the destination unchanged.
    with pytest.raises(SchemaMigrationError, match='column "b" specified more than once') as info:
        migrate_schema(config, env.source_info(), env.destination_info(), "pre_data")
    assert "the destination is as it was" in str(info.value)
    assert env.dst("SELECT count(*) FROM pg_class WHERE relname IN ('t', 'renamed', 'other')") == [(0,)]
    # Entries for unselected tables would do nothing: the full load's planning refuses them too, naming them.
    config = env.config(objects={"tables": ["public.t"]}, mapping={"tables": {"public.other": "renamed"}},
                        filters={"public.other": "id > 0"}, migration_types=["schema", "full"])
    env.src("INSERT INTO public.t VALUES (1, 2); INSERT INTO public.other VALUES (1)")
    with pytest.raises(FullLoadError, match="filters names public.other, which the selection does not migrate"):
        start_migration(config, env.source_info(), env.destination_info())


@pytest.mark.integration
def test_a_source_schema_named_like_the_state_schema_is_caught(migration_env):
    """A source that was itself the destination of a migration has a schema "pgmigrate": migrating it into the
    destination's state schema would mix (and clash with) the migration's own tables."""
    env = migration_env
    env.src("CREATE SCHEMA pgmigrate; CREATE TABLE pgmigrate.migration_state (x int PRIMARY KEY);"
            "INSERT INTO pgmigrate.migration_state VALUES (1); CREATE TABLE public.t (id int PRIMARY KEY)")
    item = env.precheck().result("name_mapping")
    assert item.status == "failed" and "state_schema pgmigrate is also the destination schema" in item.detail
    assert "pgmigrate_state" in item.detail
    config = env.config(state_schema="pgmigrate_state", migration_types=["schema", "full"])
    start_migration(config, env.source_info(), env.destination_info())
    assert env.dst("SELECT x FROM pgmigrate.migration_state") == [(1,)]
