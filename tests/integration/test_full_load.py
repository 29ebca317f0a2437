"""The full load against real servers: consistency under writes, splits, mapping, conflicts, throttling, kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import psycopg
import pytest
from psycopg import sql

from airflow_pgmigrate.engine.full_load import run_full_load
from airflow_pgmigrate.engine.schema import migrate_schema
from airflow_pgmigrate.engine.state import MigrationState

pytestmark = pytest.mark.integration

DATA = """
CREATE TABLE public.accounts (id bigint PRIMARY KEY, owner text NOT NULL, balance numeric(14, 2),
                              tags text[], meta jsonb, opened timestamptz, photo bytea);
INSERT INTO public.accounts
SELECT g, 'owner ' || g, g * 1.25, ARRAY['t' || g % 7, 'x'], jsonb_build_object('n', g), now() - g * interval '1 min',
       decode(md5(g::text), 'hex')
  FROM generate_series(1, 60000) g;
CREATE TABLE public.ledger (id bigserial PRIMARY KEY, account_id bigint NOT NULL, amount numeric NOT NULL,
                            note text);
INSERT INTO public.ledger (account_id, amount, note)
SELECT 1 + g % 60000, g % 1000, repeat('n', g % 50) FROM generate_series(1, 100000) g;
CREATE TABLE public.small (k text PRIMARY KEY, v int);
INSERT INTO public.small VALUES ('a', 1), ('b', 2), ('c', 3);
"""


def digest(conn: psycopg.Connection, table: str, columns: list[str], key: str) -> tuple[int, str]:
    """Row count and an md5 over every row's selected columns, in key order."""
    schema, name = table.split(".")
    query = sql.SQL("SELECT count(*), md5(coalesce(string_agg(({cols})::text, '|' ORDER BY {key}), '')) FROM {t}")
    row = conn.execute(query.format(cols=sql.SQL(", ").join(map(sql.Identifier, columns)),
                                    key=sql.Identifier(key), t=sql.Identifier(schema, name))).fetchone()
    return int(row[0]), str(row[1])


def prepare(env, **overrides):
    config = env.config(**overrides)
    state = MigrationState(env.destination_info(), config.state_schema, config.name)
    migrate_schema(config, env.source_info(), env.destination_info(), "pre_data", state=state)
    return config


def connections(env):
    return (psycopg.connect(**env.source_info().connect_kwargs(), autocommit=True),
            psycopg.connect(**env.destination_info().connect_kwargs(), autocommit=True))


def test_copy_equals_the_source_at_the_consistent_point_under_concurrent_writes(migration_env):
    """Writers insert rows while the full load runs; exactly the rows committed before the slot's snapshot (and no
    other) are in the destination: no gap, no duplicate. Visibility is judged independently from each row's xmin."""
    migration_env.src(DATA)
    config = prepare(migration_env, full_load={"split_tables_larger_than": "2MB", "parallel_jobs": 2})
    stop = threading.Event()
    written = []

    def writer(worker: int) -> None:
        with psycopg.connect(**migration_env.source_info().connect_kwargs(), autocommit=True) as conn:
            n = 0
            while not stop.is_set():
                n += 1
                row_id = 1_000_000 * (worker + 1) + n
                with conn.transaction():
                    conn.execute("INSERT INTO public.ledger (id, account_id, amount, note) VALUES (%s, 1, 1, 'w')",
                                 (row_id,))
                    conn.execute("INSERT INTO public.small VALUES (%s, %s)", (f"w{row_id}", n))
                written.append(row_id)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    try:
        report = run_full_load(config, migration_env.source_info(), migration_env.destination_info())
    finally:
        time.sleep(0.3)
        stop.set()
        for t in threads:
            t.join()
    assert report["completed"] and report["slot"] == config.slot_name
    snapshot = report["snapshot"]["visible"]
    src, dst = connections(migration_env)
    with src, dst:
        for table, key in (("public.ledger", "id"), ("public.small", "k")):
            schema, name = table.split(".")
            expected = [r[0] for r in src.execute(sql.SQL(
                "SELECT {k}::text FROM {t} WHERE pg_visible_in_snapshot(xmin::text::xid8, %s::pg_snapshot) "
                "ORDER BY 1").format(k=sql.Identifier(key), t=sql.Identifier(schema, name)), (snapshot,))]
            actual = [r[0] for r in dst.execute(sql.SQL("SELECT {k}::text FROM {t} ORDER BY 1").format(
                k=sql.Identifier(key), t=sql.Identifier(schema, name)))]
            assert actual == expected, f"{table}: destination differs from the snapshot"
        later = src.execute("SELECT count(*) FROM public.ledger WHERE id > 1000000").fetchone()[0]
        copied = dst.execute("SELECT count(*) FROM public.ledger WHERE id > 1000000").fetchone()[0]
        assert later > copied, "writes after the consistent point are not in the copy (they are the slot's)"
        # The slot's consistent point is recorded for incremental sync, and the slot exists.
        assert src.execute("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
                           (config.slot_name,)).fetchone()[0] == report["consistent_lsn"]
        assert MigrationState(migration_env.destination_info(), config.state_schema, config.name).get(
            "full_load")["consistent_lsn"] == report["consistent_lsn"]
    assert len(written) > 10


def test_split_tables_and_parallel_copy_are_exact(migration_env):
    migration_env.src(DATA)
    config = prepare(migration_env, full_load={"split_tables_larger_than": "1MB", "parallel_jobs": 3})
    report = run_full_load(config, migration_env.source_info(), migration_env.destination_info())
    assert report["tables"]["public.accounts"]["chunks"] > 3
    assert report["tables"]["public.ledger"]["chunks"] > 3
    assert report["tables"]["public.accounts"]["binary"] is True
    src, dst = connections(migration_env)
    with src, dst:
        columns = ["id", "owner", "balance", "tags", "meta", "opened", "photo"]
        assert digest(src, "public.accounts", columns, "id") == digest(dst, "public.accounts", columns, "id")
        assert digest(src, "public.ledger", ["id", "account_id", "amount", "note"], "id") == \
            digest(dst, "public.ledger", ["id", "account_id", "amount", "note"], "id")
        # Sequences come from the same snapshot.
        assert dst.execute("SELECT last_value FROM public.ledger_id_seq").fetchone()[0] == 100000
    assert report["rows"] == 160003


def test_auto_copies_the_load_s_long_pole_whole_with_its_pages_frozen(migration_env):
    """With ``auto``, a table far larger than the rest of the load is not split: parts written side by side cost more
    than they gain (docs/full_load.md), and one ``COPY ... FREEZE`` leaves every page all-visible."""
    env = migration_env
    env.src("CREATE TABLE public.wide (id int PRIMARY KEY, body text NOT NULL);"
            "ALTER TABLE public.wide ALTER COLUMN body SET STORAGE PLAIN;"
            "INSERT INTO public.wide SELECT g, repeat(chr(65 + g % 26), 600) FROM generate_series(1, 130000) g;"
            "CREATE TABLE public.small (k text PRIMARY KEY, v int);"
            "INSERT INTO public.small SELECT 'k' || g, g FROM generate_series(1, 100) g;")
    assert env.src("SELECT pg_relation_size('public.wide') > 64 * 1024 * 1024")[0][0]
    config = prepare(env, full_load={"parallel_jobs": 2})
    report = run_full_load(config, env.source_info(), env.destination_info())
    assert report["tables"]["public.wide"]["chunks"] == 1
    src, dst = connections(env)
    with src, dst:
        assert digest(src, "public.wide", ["id", "body"], "id") == digest(dst, "public.wide", ["id", "body"], "id")
        dst.execute("ANALYZE public.wide")  # reads the visibility map into relallvisible
        pages, visible = dst.execute(
            "SELECT relpages, relallvisible FROM pg_class WHERE oid = 'public.wide'::regclass").fetchone()
    assert pages > 0 and visible == pages, f"{visible} of {pages} pages all-visible"


def test_filters_column_selection_and_renaming_apply_in_the_copy(migration_env):
    migration_env.src(DATA)
    config = prepare(
        migration_env,
        objects={"tables": ["public.accounts", "public.small"], "columns": {"public.accounts": ["id", "owner"]}},
        filters={"public.accounts": "id % 3 = 0 AND owner LIKE 'owner %'"},
        mapping={"schemas": {"public": "crm"}, "tables": {"public.accounts": "clients"},
                 "columns": {"public.accounts": {"owner": "holder"}}, "name_case": "upper"},
    )
    report = run_full_load(config, migration_env.source_info(), migration_env.destination_info())
    assert set(report["tables"]) == {"public.accounts", "public.small"}
    src, dst = connections(migration_env)
    with src, dst:
        expected = src.execute("SELECT count(*), md5(string_agg(id || ':' || owner, ',' ORDER BY id)) "
                               "FROM public.accounts WHERE id % 3 = 0").fetchone()
        actual = dst.execute('SELECT count(*), md5(string_agg("ID" || \':\' || holder, \',\' ORDER BY "ID")) '
                             "FROM crm.clients").fetchone()
        assert actual == expected and actual[0] == 20000
        assert dst.execute('SELECT count(*) FROM crm."SMALL"').fetchone()[0] == 3


def test_conflict_mode_ignore_skips_and_counts_clashing_rows(migration_env):
    migration_env.src(DATA)
    config = prepare(migration_env, conflicting_tables="ignore", objects={"tables": ["public.small"]})
    migration_env.dst("INSERT INTO public.small VALUES ('a', 100), ('z', 26)")
    report = run_full_load(config, migration_env.source_info(), migration_env.destination_info())
    assert report["tables"]["public.small"]["skipped_rows"] == 1
    assert report["tables"]["public.small"]["rows"] == 2
    assert migration_env.dst("SELECT k, v FROM public.small ORDER BY k") == \
        [("a", 100), ("b", 2), ("c", 3), ("z", 26)]


def test_full_load_without_incremental_uses_no_slot(migration_env):
    migration_env.src(DATA)
    config = prepare(migration_env, migration_types=["schema", "full"])
    report = run_full_load(config, migration_env.source_info(), migration_env.destination_info())
    assert report["slot"] is None and report["rows"] == 160003
    assert migration_env.src("SELECT count(*) FROM pg_replication_slots WHERE database = current_database()") == \
        [(0,)]


def test_large_objects_are_copied(migration_env):
    migration_env.src("CREATE TABLE public.docs (id int PRIMARY KEY, body oid);"
                      "INSERT INTO public.docs VALUES (1, lo_from_bytea(424242, decode(repeat('ab', 1500000), 'hex')))")
    config = prepare(migration_env)
    report = run_full_load(config, migration_env.source_info(), migration_env.destination_info())
    assert report["large_objects"] == 1
    assert migration_env.dst("SELECT length(lo_get(424242)), md5(lo_get(424242))") == \
        migration_env.src("SELECT length(lo_get(424242)), md5(lo_get(424242))")


@pytest.mark.parametrize("cap, value", [("mb_per_second", 4.0), ("rows_per_second", 20000.0)])
def test_throttling_keeps_the_rate_under_the_cap(migration_env, cap, value):
    """Never above the cap (15% for the measurement's edges); not far below it either: a throttle that sleeps twice
    too long is a bug too, but a busy machine may not reach the cap, so the lower bound is loose."""
    migration_env.src("CREATE TABLE public.payload (id bigint PRIMARY KEY, body text);"
                      "INSERT INTO public.payload SELECT g, repeat(md5(g::text), 3) FROM generate_series(1, 80000) g")
    # The caps pace the copy; index builds (not data moved, and on the destination only) are left to post_data so
    # that the measured time is the copy's.
    config = prepare(migration_env, migration_types=["schema", "full"],
                     throttling={"full_load": {cap: value}}, full_load={"parallel_jobs": 2, "build_indexes": False,
                                                                        "split_tables_larger_than": "2MB"})
    started = time.monotonic()
    report = run_full_load(config, migration_env.source_info(), migration_env.destination_info())
    seconds = time.monotonic() - started
    amount = report["bytes"] / 1048576 if cap == "mb_per_second" else report["rows"]
    rate = amount / seconds
    assert seconds > 1.5, "the copy is long enough to measure"
    assert rate <= value * 1.15, f"{cap}: measured {rate:.1f} for a cap of {value}"
    assert rate >= value * 0.5, f"{cap}: measured {rate:.1f} for a cap of {value}: throttled far below the cap"


def test_queries_per_second_cap(migration_env):
    migration_env.src("CREATE TABLE public.parts (id bigint PRIMARY KEY, body text);"
                      "INSERT INTO public.parts SELECT g, md5(g::text) FROM generate_series(1, 100000) g")
    config = prepare(migration_env, migration_types=["schema", "full"],
                     throttling={"full_load": {"queries_per_second": 4}},
                     full_load={"parallel_jobs": 2, "split_tables_larger_than": "1MB"})
    started = time.monotonic()
    report = run_full_load(config, migration_env.source_info(), migration_env.destination_info())
    seconds = time.monotonic() - started
    queries = report["chunks_copied_now"]
    assert queries >= 8
    rate = queries / seconds
    assert rate <= 4 * 1.15, f"{queries} chunk queries in {seconds:.1f} s"


KILLABLE = """
import json, sys
from airflow_pgmigrate.config import MigrationConfig
from airflow_pgmigrate.engine.connection import ConnectionInfo
from airflow_pgmigrate.engine.full_load import run_full_load
args = json.loads(sys.argv[1])
config = MigrationConfig.from_dict(args["config"])
report = run_full_load(config, ConnectionInfo(**args["source"]), ConnectionInfo(**args["destination"]),
                       log=lambda m: print(m, flush=True))
print("RESULT " + json.dumps({k: v for k, v in report.items() if k != "plan"}), flush=True)
"""


def _run_killable(env, config_dict, kill_when: str | None):
    info = {"config": config_dict,
            "source": {"host": "127.0.0.1", "port": env.source.port, "dbname": env.source_db,
                       "user": "postgres", "password": env.source.password},
            "destination": {"host": "127.0.0.1", "port": env.destination.port, "dbname": env.destination_db,
                            "user": "postgres", "password": env.destination.password}}
    proc = subprocess.Popen([sys.executable, "-c", KILLABLE, json.dumps(info)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:  # type: ignore[union-attr]
        lines.append(line)
        if kill_when is not None and kill_when in line:
            os.kill(proc.pid, signal.SIGKILL)
            break
    proc.wait(timeout=120)
    return proc.returncode, lines


def test_kill_9_mid_copy_then_retry_ends_equal_to_the_source(migration_env):
    migration_env.src(DATA)
    config_dict = migration_env.config_dict(full_load={"split_tables_larger_than": "1MB", "parallel_jobs": 2},
                                            throttling={"full_load": {"mb_per_second": 8}})
    config = prepare(migration_env, **{k: v for k, v in config_dict.items()
                                       if k in ("full_load", "throttling")})
    code, lines = _run_killable(migration_env, config_dict, kill_when="tables_done=1/")
    assert code == -signal.SIGKILL, "".join(lines[-5:])
    done_before = {r[0] for r in migration_env.dst(
        "SELECT table_name FROM pgmigrate.full_load_chunks WHERE migration = %s", (config.name,))}
    plan = MigrationState(migration_env.destination_info(), config.state_schema, config.name).get("full_load")
    chunks_of = {p["source"]: {c["id"] for c in p["chunks"]} for p in plan["plan"]}
    ids_done = {r[0] for r in migration_env.dst(
        "SELECT chunk_id FROM pgmigrate.full_load_chunks WHERE migration = %s", (config.name,))}
    finished = {t for t, ids in chunks_of.items() if ids <= ids_done}
    assert finished and finished != set(chunks_of), (finished, done_before)
    # The retry (Airflow's next try): committed chunks are kept, unfinished tables are redone under a new snapshot.
    code, lines = _run_killable(migration_env, config_dict, kill_when=None)
    assert code == 0, "".join(lines[-20:])
    result = json.loads(next(line for line in lines if line.startswith("RESULT "))[7:])
    assert result["resumed"] is True
    assert any("full_load resuming" in line for line in lines)
    src, dst = connections(migration_env)
    with src, dst:
        for table, columns in (("public.accounts", ["id", "owner", "balance", "tags", "meta", "opened", "photo"]),
                               ("public.ledger", ["id", "account_id", "amount", "note"]),
                               ("public.small", ["k", "v"])):
            key = columns[0]
            assert digest(src, table, columns, key) == digest(dst, table, columns, key), table
        # Tables finished before the kill start at the original consistent point; redone ones at the new one.
        starts = result["table_start_lsn"]
        assert set(starts) == {"public.accounts", "public.ledger", "public.small"}
        for table, lsn in starts.items():
            assert (lsn == result["consistent_lsn"]) == (table in finished), (table, lsn, result["consistent_lsn"])
        # Chunks committed before the kill were not copied again.
        assert result["chunks_copied_now"] == sum(len(chunks_of[t]) for t in chunks_of if t not in finished)
        slots = src.execute("SELECT slot_name FROM pg_replication_slots WHERE database = current_database()")
        assert [r[0] for r in slots] == [config.slot_name], "the temporary slot went away with its connection"


def test_incompressible_toast_is_copied_without_compression_attempts(migration_env, monkeypatch):
    from airflow_pgmigrate.engine import full_load

    monkeypatch.setattr(full_load, "INCOMPRESSIBLE_MIN_TOAST", 0)
    env = migration_env
    # ``noise``: random hex, which the source could not compress; ``prose``: repetitive, which it did.
    env.src("CREATE TABLE public.docs (id int PRIMARY KEY, noise text, prose text);"
            "INSERT INTO public.docs SELECT g, (SELECT string_agg(md5(random()::text || s), '') "
            "FROM generate_series(1, 200) s), repeat('lorem ipsum ', 800) FROM generate_series(1, 300) g")
    config = env.config(migration_types=["schema", "full"])
    migrate_schema(config, env.source_info(), env.destination_info(), "pre_data")
    lines: list[str] = []
    run_full_load(config, env.source_info(), env.destination_info(), log=lines.append)
    assert any("column=noise incompressible" in line for line in lines), lines
    assert not any("column=prose incompressible" in line for line in lines)
    # The same data, stored as the source stores it, and the columns' storage as before.
    assert env.dst("SELECT attname, attstorage FROM pg_attribute WHERE attrelid = 'public.docs'::regclass "
                   "AND attname IN ('noise', 'prose') ORDER BY 1") == [("noise", "x"), ("prose", "x")]
    assert env.dst("SELECT count(*) FILTER (WHERE pg_column_compression(noise) IS NULL), "
                   "count(*) FILTER (WHERE pg_column_compression(prose) IS NOT NULL) FROM public.docs") == [(300, 300)]
    digest = "SELECT md5(string_agg(id || noise || prose, ',' ORDER BY id)) FROM public.docs"
    assert env.src(digest) == env.dst(digest)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("parent_waits", [False, True])
def test_an_inheritance_parent_copied_beside_its_split_child_keeps_the_child_rows(migration_env, parent_waits):
    """Legacy inheritance: the parent and the child are separate plans. The parent's chunk must never empty (or
    lock) the child that another worker is copying, whichever starts first."""
    from airflow_pgmigrate.engine import full_load

    env = migration_env
    real = full_load.FullLoad._empty_for_freeze

    def empty(dst, target):
        if "parent" in target.as_string(dst) and parent_waits:  # until a part of the child is being written
            with psycopg.connect(**env.destination_info().connect_kwargs(), autocommit=True) as probe:
                for _ in range(500):
                    if probe.execute("SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
                                     "WHERE c.relname = 'child' AND l.mode = 'RowExclusiveLock'").fetchone()[0]:
                        break
                    time.sleep(0.01)
        return real(dst, target)

    env.monkeypatch.setattr(full_load.FullLoad, "_empty_for_freeze", staticmethod(empty))
    env.src("CREATE TABLE public.parent (id bigint, payload text);"
            "CREATE TABLE public.child () INHERITS (public.parent);"
            "INSERT INTO public.child SELECT g, repeat('p', 100) FROM generate_series(1, 200000) g")
    config = env.config(migration_types=["schema", "full"],
                        full_load={"split_tables_larger_than": "4MB", "parallel_jobs": 2})
    migrate_schema(config, env.source_info(), env.destination_info(), "pre_data")
    report = run_full_load(config, env.source_info(), env.destination_info())
    assert report["tables"]["public.child"]["rows"] == 200000
    assert env.dst("SELECT count(*) FROM ONLY public.child") == [(200000,)]

