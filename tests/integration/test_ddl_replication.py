"""DDL replicated during incremental sync (``incremental.ddl: replicate``), against real servers with a write load
running while the DDL happens: every supported statement ends with the destination's definitions equal to the
source's (normalised ``pg_dump --schema-only``) and its rows equal; what cannot be replicated stops the sync with the
statement and the fix; a restart never applies a DDL twice; release leaves nothing on the source."""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from typing import Any

import psycopg
import pytest
from psycopg import sql

from airflow_pgmigrate.engine.connection import ConnectionInfo
from airflow_pgmigrate.engine.ddl_capture import capture_names
from airflow_pgmigrate.engine.incremental import SyncError, release, run_incremental
from airflow_pgmigrate.engine.pgdump import available_pg_dumps, run_pg_dump, split_dump
from airflow_pgmigrate.engine.schema import normalize_sql
from airflow_pgmigrate.engine.verify import compare
from tests.integration.test_incremental import start_migration

pytestmark = [pytest.mark.integration, pytest.mark.ddl]

SCHEMA = """
CREATE SCHEMA app;
CREATE TABLE app.orders (id bigint PRIMARY KEY, qty int NOT NULL, note text, placed date DEFAULT '2026-01-01');
CREATE TABLE app.items (id serial PRIMARY KEY, order_id bigint, name text);
CREATE TABLE app.events (id bigint NOT NULL, at date NOT NULL, what text, PRIMARY KEY (id, at))
    PARTITION BY RANGE (at);
CREATE TABLE app.events_2026 PARTITION OF app.events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
CREATE TABLE app.old_stuff (id int PRIMARY KEY, v text);
INSERT INTO app.orders SELECT g, g % 7, 'note ' || g FROM generate_series(1, 500) g;
INSERT INTO app.items (order_id, name) SELECT g, 'item ' || g FROM generate_series(1, 300) g;
INSERT INTO app.events SELECT g, date '2026-01-01' + g % 300, 'e' || g FROM generate_series(1, 400) g;
INSERT INTO app.old_stuff SELECT g, 'v' || g FROM generate_series(1, 50) g;
"""


def config_of(env: Any, **overrides: Any) -> Any:
    return start_migration(env, objects={"schemas": ["app"]}, incremental={"ddl": "replicate"}, **overrides)


def query(info: ConnectionInfo, text: str, params: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(**info.connect_kwargs(), autocommit=True) as conn:
        cur = conn.execute(text, params)
        return cur.fetchall() if cur.description else []


def table_dump(info: ConnectionInfo, schema: str = "app") -> Counter[str]:
    """The normalised entries of one schema's ``pg_dump --schema-only`` (newest pg_dump for both sides)."""
    dump = available_pg_dumps()[-1]
    entries = split_dump(run_pg_dump(dump, info, ["--schema-only", "--no-owner", "--no-privileges",
                                                  "--schema", schema]))[1]
    # PostgreSQL 18 names the NOT NULL constraints a partition inherits; 15 has no such names: not a difference.
    return Counter(re.sub(r"CONSTRAINT \w+_not_null NOT NULL", "NOT NULL", normalize_sql(e.settings + e.sql))
                   for e in entries if e.type not in ("PUBLICATION TABLE", "SCHEMA") and "PUBLICATION" not in e.type)


def rows(info: ConnectionInfo, schema: str = "app") -> dict[str, tuple[int, str]]:
    """Row count and digest of every table of a schema (partitioned parents read through their partitions)."""
    out = {}
    with psycopg.connect(**info.connect_kwargs(), autocommit=True) as conn:
        tables = conn.execute("SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                              "WHERE n.nspname = %s AND c.relkind IN ('r', 'p') ORDER BY 1", (schema,)).fetchall()
        for (name,) in tables:
            row = conn.execute(sql.SQL("SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), "
                                       "'')) FROM {} t").format(sql.Identifier(schema, name))).fetchone()
            out[name] = (int(row[0]), str(row[1]))
    return out


def catch_up(env: Any, config: Any, rounds: int = 20) -> Any:
    for _ in range(rounds):
        result = run_incremental(config, env.source_info(), env.destination_info(), window_seconds=15)
        if result.caught_up:
            return result
    raise AssertionError("incremental sync did not catch up")


class WriteLoad:
    """Inserts and updates on app.orders and app.items from another session while the test runs DDL."""

    def __init__(self, info: ConnectionInfo) -> None:
        self.info, self.stop, self.errors, self.done = info, threading.Event(), [], 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        n = 10_000
        with psycopg.connect(**self.info.connect_kwargs(), autocommit=True) as conn:
            while not self.stop.is_set():
                n += 1
                try:
                    conn.execute("INSERT INTO app.orders (id, qty) VALUES (%s, %s)", (n, n % 5))
                    conn.execute("UPDATE app.orders SET qty = qty + 1 WHERE id = %s", (n % 400 + 1,))
                    conn.execute("INSERT INTO app.items (order_id, name) VALUES (%s, 'load')", (n,))
                    self.done += 1
                except psycopg.Error as exc:  # a DDL's lock or a dropped column: the load goes on
                    self.errors.append(str(exc))
                time.sleep(0.002)

    def __enter__(self) -> WriteLoad:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.thread.join(30)


#: Each supported statement, as a user would run it on the source during the sync (unqualified names go through the
#: search_path, so they are set here).
STATEMENTS = [
    "SET search_path = app, public",
    "ALTER TABLE orders ADD COLUMN status text",
    "ALTER TABLE orders ADD COLUMN priority int NOT NULL DEFAULT 3",
    "UPDATE orders SET status = 'new' WHERE id <= 20",
    "ALTER TABLE orders ALTER COLUMN status SET DEFAULT 'open'",
    "ALTER TABLE orders ALTER COLUMN placed SET NOT NULL",
    "ALTER TABLE orders ALTER COLUMN placed DROP NOT NULL",
    "ALTER TABLE orders ALTER COLUMN placed DROP DEFAULT",
    "ALTER TABLE orders ALTER COLUMN qty TYPE bigint",
    "ALTER TABLE orders ADD CONSTRAINT qty_positive CHECK (qty >= 0)",
    "ALTER TABLE orders RENAME COLUMN note TO remark",
    "UPDATE orders SET remark = 'renamed ' || id WHERE id % 50 = 0",
    "ALTER TABLE items ADD CONSTRAINT items_order_fk FOREIGN KEY (order_id) REFERENCES orders (id) NOT VALID",
    "ALTER TABLE items DROP CONSTRAINT items_order_fk",
    "ALTER TABLE items DROP COLUMN name",
    "CREATE INDEX orders_status_idx ON orders (status)",
    "CREATE INDEX items_order_idx ON items (order_id)",
    "DROP INDEX items_order_idx",
    "CREATE TABLE customers (id bigint PRIMARY KEY, name text NOT NULL)",
    "INSERT INTO customers SELECT g, 'c' || g FROM generate_series(1, 30) g",
    "ALTER TABLE old_stuff RENAME TO older_stuff",
    "UPDATE older_stuff SET v = v || '!' WHERE id < 10",
    "DROP TABLE older_stuff",
    "CREATE TABLE events_2027 PARTITION OF events FOR VALUES FROM ('2027-01-01') TO ('2028-01-01')",
    "INSERT INTO events VALUES (9001, '2027-03-01', 'next year')",
    "CREATE TABLE events_2028 (id bigint NOT NULL, at date NOT NULL, what text)",
    "INSERT INTO events_2028 VALUES (9002, '2028-05-05', 'attached later')",
    "ALTER TABLE events ATTACH PARTITION events_2028 FOR VALUES FROM ('2028-01-01') TO ('2029-01-01')",
    "ALTER TABLE events DETACH PARTITION events_2026",
    "INSERT INTO events_2026 VALUES (9003, '2026-02-02', 'detached')",
    "UPDATE orders SET status = 'done' WHERE id % 3 = 0",
]


def test_every_supported_statement_is_replicated_under_a_write_load(migration_env):
    env = migration_env
    env.src(SCHEMA)
    config = config_of(env)
    with WriteLoad(env.source_info()) as load:
        catch_up(env, config)
        with psycopg.connect(**env.source_info().connect_kwargs(), autocommit=True) as src:
            for statement in STATEMENTS:
                src.execute(statement)
                time.sleep(0.05)
        time.sleep(0.5)
    assert load.done > 0
    result = catch_up(env, config)
    assert result.caught_up
    assert table_dump(env.destination_info()) == table_dump(env.source_info())
    assert rows(env.destination_info()) == rows(env.source_info())
    tables = {r[0] for r in query(env.destination_info(), "SELECT tablename FROM pg_tables WHERE schemaname = 'app'")}
    assert "customers" in tables and "older_stuff" not in tables and "old_stuff" not in tables


def test_a_table_created_with_rows_in_one_transaction_arrives_whole(migration_env):
    env = migration_env
    env.src(SCHEMA)
    config = config_of(env)
    with psycopg.connect(**env.source_info().connect_kwargs()) as src:
        src.execute("CREATE TABLE app.made_here (id int PRIMARY KEY, v text)")
        src.execute("INSERT INTO app.made_here SELECT g, 'v' || g FROM generate_series(1, 100) g")
        src.execute("ALTER TABLE app.made_here ADD COLUMN extra int DEFAULT 7")
        src.execute("INSERT INTO app.made_here VALUES (101, 'after', 8)")
        src.commit()
        src.execute("CREATE TABLE app.made_as AS SELECT g AS id, md5(g::text) AS h FROM generate_series(1, 40) g")
        src.execute("SELECT g AS id INTO app.selected_into FROM generate_series(1, 5) g")
        src.commit()
        src.execute("UPDATE app.made_as SET h = 'changed' WHERE id = 3")
        src.execute("DELETE FROM app.selected_into WHERE id = 5")
        src.commit()
    catch_up(env, config)
    assert table_dump(env.destination_info()) == table_dump(env.source_info())
    got = rows(env.destination_info())
    assert got == rows(env.source_info())
    assert got["made_here"][0] == 101 and got["made_as"][0] == 40 and got["selected_into"][0] == 4


def test_ddl_in_a_transaction_that_rolls_back_changes_nothing(migration_env):
    env = migration_env
    env.src(SCHEMA)
    config = config_of(env)
    before = table_dump(env.destination_info())
    with psycopg.connect(**env.source_info().connect_kwargs()) as src:
        src.execute("ALTER TABLE app.orders ADD COLUMN gone int")
        src.execute("CREATE TABLE app.never (id int)")
        src.execute("INSERT INTO app.orders (id, qty) VALUES (77777, 1)")
        src.rollback()
        src.execute("INSERT INTO app.orders (id, qty) VALUES (77778, 1)")
        src.commit()
    catch_up(env, config)
    assert table_dump(env.destination_info()) == before
    assert rows(env.destination_info()) == rows(env.source_info())


def test_ddl_on_a_renamed_table_follows_the_case_policy(migration_env):
    env = migration_env
    env.src(SCHEMA)
    config = config_of(env, mapping={"name_case": "upper"})
    env.src("ALTER TABLE app.orders ADD COLUMN Status text DEFAULT 'x'; "
            "ALTER TABLE app.orders RENAME TO orders_v2; "
            "ALTER TABLE app.orders_v2 RENAME COLUMN qty TO quantity; "
            "CREATE INDEX ON app.orders_v2 (status); "
            "INSERT INTO app.orders_v2 (id, quantity, status) VALUES (5000, 5, 'y'); "
            "CREATE TABLE app.fresh (id int PRIMARY KEY, label text); INSERT INTO app.fresh VALUES (1, 'one')")
    catch_up(env, config)
    columns = query(env.destination_info(), "SELECT attname FROM pg_attribute WHERE attrelid = "
                    "'\"APP\".\"ORDERS_V2\"'::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum")
    assert [c[0] for c in columns] == ["ID", "QUANTITY", "NOTE", "PLACED", "STATUS"]
    assert query(env.destination_info(), 'SELECT "QUANTITY", "STATUS" FROM "APP"."ORDERS_V2" WHERE "ID" = 5000') \
        == [(5, "y")]
    assert query(env.destination_info(), 'SELECT "LABEL" FROM "APP"."FRESH"') == [("one",)]
    assert query(env.destination_info(), "SELECT count(*) FROM pg_indexes WHERE schemaname = 'APP' "
                 "AND tablename = 'ORDERS_V2' AND indexdef LIKE '%STATUS%'") == [(1,)]
    # Names PostgreSQL chose are the source's (orders_v2_status_idx, fresh_pkey), not ones made of the mapped names.
    report = compare(config, env.source_info(), env.destination_info())
    assert [d for d in report["definitions"] if not d["equal"]] == []
    assert report["equal"], report["differences"]


def test_unsupported_ddl_stops_with_the_statement_and_the_fix(migration_env):
    env = migration_env
    env.src(SCHEMA)
    config = config_of(env)
    env.src("INSERT INTO app.orders (id, qty) VALUES (60001, 1)")
    env.src("CREATE VIEW app.big_orders AS SELECT id FROM app.orders WHERE qty > 3")
    env.src("INSERT INTO app.orders (id, qty) VALUES (60002, 1)")
    with pytest.raises(SyncError) as err:
        catch_up(env, config)
    message = str(err.value)
    assert "CREATE VIEW" in message and "cannot be replicated" in message and "ddl_applied_by_hand" in message
    assert re.search(r"LSN [0-9A-F]+/[0-9A-F]+", message)
    # Everything before it is applied, nothing after it.
    ids = {r[0] for r in query(env.destination_info(), "SELECT id FROM app.orders WHERE id > 60000")}
    assert ids == {60001}
    # The fix the message gives: apply it by hand, mark it done, resume.
    env.dst("CREATE VIEW app.big_orders AS SELECT id FROM app.orders WHERE qty > 3")
    mark = re.search(r"INSERT INTO .*?;", message)
    assert mark is not None
    env.dst(mark.group(0))
    catch_up(env, config)
    assert rows(env.destination_info()) == rows(env.source_info())


def test_ddl_inside_a_function_stops_rather_than_guessing(migration_env):
    env = migration_env
    env.src(SCHEMA)
    config = config_of(env)
    env.src("DO $$ BEGIN EXECUTE 'ALTER TABLE app.orders ADD COLUMN hidden int'; END $$")
    with pytest.raises(SyncError, match="inside a function, procedure or DO block"):
        catch_up(env, config)


def test_release_leaves_nothing_of_the_capture_on_the_source(migration_env):
    env = migration_env
    env.src(SCHEMA)
    config = config_of(env)
    names = capture_names(config)
    assert query(env.source_info(), "SELECT count(*) FROM pg_event_trigger WHERE evtname IN (%s, %s)",
                 (names.end_trigger, names.drop_trigger)) == [(2,)]
    dropped = release(config, env.source_info(), log=lambda message: None)
    assert dropped["ddl_capture"] is True
    assert query(env.source_info(), "SELECT count(*) FROM pg_event_trigger") == [(0,)]
    assert query(env.source_info(), "SELECT count(*) FROM pg_namespace WHERE nspname = 'pgmigrate_ddl'") == [(0,)]
    assert query(env.source_info(), "SELECT count(*) FROM pg_proc WHERE proname = %s", (names.table.name,)) == [(0,)]
    # DDL after the release runs as before, recorded nowhere.
    env.src("ALTER TABLE app.orders ADD COLUMN after_release int")


def test_stop_mode_installs_nothing(migration_env):
    env = migration_env
    env.src(SCHEMA)
    start_migration(env, objects={"schemas": ["app"]})
    assert query(env.source_info(), "SELECT count(*) FROM pg_event_trigger") == [(0,)]
    assert query(env.source_info(), "SELECT count(*) FROM pg_namespace WHERE nspname = 'pgmigrate_ddl'") == [(0,)]


#: An applier that kills itself (SIGKILL, as kill -9 would) right after the first replicated DDL ran on the destination
#: (``after=ddl``: not committed yet), or right after the transaction that carried it committed (``after=commit``:
#: before the source is told).
KILLED_APPLIER = """
import json, os, signal, sys
from airflow_pgmigrate.config import MigrationConfig
from airflow_pgmigrate.engine.connection import ConnectionInfo
from airflow_pgmigrate.engine.incremental import positions, run_incremental, writer
args = json.loads(sys.argv[1])
seen = []
original_apply, original_committed = writer.apply_ddl, positions.PositionTracker.committed

def apply_then_die(*a, **k):
    original_apply(*a, **k)
    seen.append(1)
    if args["after"] == "ddl":
        os.kill(os.getpid(), signal.SIGKILL)

def committed_then_die(self, *a, **k):
    original_committed(self, *a, **k)
    if seen and args["after"] == "commit":
        os.kill(os.getpid(), signal.SIGKILL)

writer.apply_ddl = apply_then_die
positions.PositionTracker.committed = committed_then_die
run_incremental(MigrationConfig.from_dict(args["config"]), ConnectionInfo(**args["source"]),
                ConnectionInfo(**args["destination"]), window_seconds=30, log=lambda m: print(m, flush=True))
print("NOT KILLED", flush=True)
"""


@pytest.mark.parametrize("after", ["ddl", "commit"])
def test_kill_9_right_after_a_ddl_resumes_without_applying_it_twice(migration_env, after):
    import json
    import subprocess
    import sys

    env = migration_env
    env.src(SCHEMA)
    overrides = {"objects": {"schemas": ["app"]}, "incremental": {"ddl": "replicate"}}
    config = config_of(env)
    env.src("INSERT INTO app.orders (id, qty) VALUES (70001, 1)")
    env.src("BEGIN; UPDATE app.orders SET qty = 9 WHERE id = 1; ALTER TABLE app.orders ADD COLUMN added int DEFAULT 1;"
            " CREATE INDEX orders_added_idx ON app.orders (added); UPDATE app.orders SET added = 2 WHERE id = 2;"
            " COMMIT")
    env.src("INSERT INTO app.orders (id, qty, added) VALUES (70002, 1, 3)")
    info = {"config": env.config_dict(**overrides), "after": after,
            "source": {"host": "127.0.0.1", "port": env.source.port, "dbname": env.source_db,
                       "user": "postgres", "password": env.source.password},
            "destination": {"host": "127.0.0.1", "port": env.destination.port, "dbname": env.destination_db,
                            "user": "postgres", "password": env.destination.password}}
    proc = subprocess.run([sys.executable, "-c", KILLED_APPLIER, json.dumps(info)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == -9, proc.stdout + proc.stderr
    applied = query(env.destination_info(), "SELECT count(*) FROM pg_attribute WHERE attrelid = 'app.orders'::regclass "
                    "AND attname = 'added'")
    assert applied == [(0 if after == "ddl" else 1,)]
    catch_up(env, config)
    assert table_dump(env.destination_info()) == table_dump(env.source_info())
    assert rows(env.destination_info()) == rows(env.source_info())


@pytest.fixture
def newer_destination(migration_env, pg_servers):
    """A destination database (same name) on the other PostgreSQL major version of the machine (18)."""
    other = pg_servers.other_version()
    if other is None:
        pytest.skip("only one PostgreSQL major version on this machine")
    other.create_database(migration_env.destination_db)
    try:
        yield other.info(migration_env.destination_db)
    finally:
        other.drop_database(migration_env.destination_db)


def test_ddl_is_replicated_from_15_to_18(migration_env, newer_destination):
    from airflow_pgmigrate.engine.full_load import run_full_load
    from airflow_pgmigrate.engine.schema import migrate_schema
    from airflow_pgmigrate.engine.state import MigrationState

    env = migration_env
    env.src(SCHEMA)
    config = env.config(objects={"schemas": ["app"]}, incremental={"ddl": "replicate"})
    state = MigrationState(newer_destination, config.state_schema, config.name)
    migrate_schema(config, env.source_info(), newer_destination, "pre_data", state=state)
    run_full_load(config, env.source_info(), newer_destination)
    migrate_schema(config, env.source_info(), newer_destination, "post_data", state=state)
    with WriteLoad(env.source_info()) as load, \
            psycopg.connect(**env.source_info().connect_kwargs(), autocommit=True) as src:
        for statement in STATEMENTS:
            src.execute(statement)
            time.sleep(0.05)
    assert load.done > 0
    for _ in range(20):
        if run_incremental(config, env.source_info(), newer_destination, window_seconds=15).caught_up:
            break
    assert table_dump(newer_destination) == table_dump(env.source_info())
    assert rows(newer_destination) == rows(env.source_info())


def test_ddl_inside_a_streamed_transaction_is_applied_at_its_place(migration_env):
    """A transaction larger than logical_decoding_work_mem (64 kB here) reaches the sync in pieces before its commit
    and is spilled: its DDL is applied at its place among the spilled changes; an aborted one applies nothing."""
    env = migration_env
    env.src(SCHEMA)
    config = config_of(env)
    env.source.execute("ALTER SYSTEM SET logical_decoding_work_mem = '64kB'")
    env.source.execute("SELECT pg_reload_conf()")
    try:
        with psycopg.connect(**env.source_info().connect_kwargs()) as src:
            src.execute("INSERT INTO app.orders (id, qty, note) SELECT g, 1, repeat('x', 200) "
                        "FROM generate_series(100001, 110000) g")
            src.execute("ALTER TABLE app.orders ADD COLUMN batch int")
            src.execute("INSERT INTO app.orders (id, qty, batch) SELECT g, 2, g % 10 FROM generate_series(110001, "
                        "115000) g")
            src.execute("CREATE TABLE app.streamed (id int PRIMARY KEY, v text)")
            src.execute("INSERT INTO app.streamed SELECT g, repeat('y', 100) FROM generate_series(1, 5000) g")
            src.commit()
            src.execute("INSERT INTO app.orders (id, qty) SELECT g, 3 FROM generate_series(200001, 210000) g")
            src.execute("ALTER TABLE app.orders ADD COLUMN never int")
            src.execute("CREATE TABLE app.never (id int)")
            src.rollback()
        catch_up(env, config)
    finally:
        env.source.execute("ALTER SYSTEM RESET logical_decoding_work_mem")
        env.source.execute("SELECT pg_reload_conf()")
    assert table_dump(env.destination_info()) == table_dump(env.source_info())
    assert rows(env.destination_info()) == rows(env.source_info())
    assert rows(env.destination_info())["streamed"][0] == 5000


def test_an_index_or_constraint_already_made_by_post_data_is_not_an_error(migration_env):
    """DDL during the full load is in the stream and, when it made an index or a named constraint, in the post-data
    section too: the destination has it already when the sync applies it."""
    env = migration_env
    env.src(SCHEMA)
    config = config_of(env)
    for side in (env.src, env.dst):
        side("CREATE INDEX orders_qty_idx ON app.orders (qty); "
             "ALTER TABLE app.orders ADD CONSTRAINT qty_small CHECK (qty < 1000) NOT VALID")
    env.src("INSERT INTO app.orders (id, qty) VALUES (80001, 4)")
    lines: list[str] = []
    for _ in range(10):
        if run_incremental(config, env.source_info(), env.destination_info(), window_seconds=15,
                           log=lines.append).caught_up:
            break
    assert sum("already_there" in line for line in lines) == 2
    assert table_dump(env.destination_info()) == table_dump(env.source_info())
    assert rows(env.destination_info()) == rows(env.source_info())


def test_a_column_added_with_a_clock_default_gets_the_source_s_values(migration_env):
    """ADD COLUMN ... DEFAULT now() gives the existing rows the source transaction's time, which the change stream
    does not carry: the destination adds the column with that recorded time, then sets the default back."""
    env = migration_env
    env.src(SCHEMA)
    config = config_of(env)
    with psycopg.connect(**env.source_info().connect_kwargs()) as src:
        src.execute("SET TimeZone = 'Pacific/Kiritimati'")  # +14: CURRENT_DATE is often another day than in UTC
        src.execute("SELECT pg_sleep(1.2)")  # the destination's own now() would differ
        src.execute("ALTER TABLE app.orders ADD COLUMN stamped timestamptz NOT NULL DEFAULT now(), "
                    "ADD COLUMN stamped_day date DEFAULT CURRENT_DATE, "
                    "ADD COLUMN stamped_local timestamp(0) DEFAULT LOCALTIMESTAMP(0) + interval '1 hour'")
        src.commit()
    env.src("INSERT INTO app.orders (id, qty) VALUES (90001, 1)")
    catch_up(env, config)
    assert rows(env.destination_info()) == rows(env.source_info())
    assert table_dump(env.destination_info()) == table_dump(env.source_info())  # the defaults as written


@pytest.mark.parametrize(("column", "why"), [
    ("token uuid DEFAULT gen_random_uuid()", "gen_random_uuid()"),
    ("n serial", "serial column"),
    ("n bigint GENERATED ALWAYS AS IDENTITY", "identity column"),
    ("who text DEFAULT current_user", "CURRENT_USER"),
])
def test_a_column_added_with_values_the_destination_cannot_compute_stops_the_sync(migration_env, column, why):
    env = migration_env
    env.src(SCHEMA)
    config = config_of(env)
    env.src(f"ALTER TABLE app.orders ADD COLUMN {column}")
    with pytest.raises(SyncError) as err:
        catch_up(env, config)
    assert why in str(err.value) and "does not carry" in str(err.value)
