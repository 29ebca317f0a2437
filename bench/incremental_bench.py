"""Change apply speed against native logical replication, measured in one run on the same two servers.

Builds a source for one workload shape (``--shape``), then brings two copies of its tables up to date on the same
destination server:

- ``pgbench`` (default): ``pgbench -i -s <scale>`` (``pgbench_history`` gets a ``hid bigserial`` primary key so that it
  can be replicated with a key); the backlog is pgbench's tpcb-like transaction (three updates and one insert);
- ``hot-rows``: 200 rows, each backlog transaction updates one of them (8 clients by default): most changes of a batch
  hit a row changed before in the same batch;
- ``wide-toast``: ``--rows`` rows (default 20 k) with a 6.4 kB column stored out of line (TOAST, ``STORAGE
  EXTERNAL``); each transaction updates the small column of one random row, so the TOASTed value arrives unchanged;
- ``bulk-insert``: 20 transactions of ``INSERT ... SELECT`` of 100 k rows each (one client): 2 M inserts;
- ``delete-heavy``: one table of ``--rows`` rows (default 2 M; ``id bigserial`` primary key, an int and a 32-character
  text); each backlog transaction deletes a random range of 5 keys and inserts 2 new rows. Each batch then deletes
  thousands of scattered keys from a table of millions of rows: the shape where a set-based statement planned as a
  join over the whole table costs the table instead of the batch;
- ``many-tables``: 50 tables of 2,000 rows; each transaction updates one random row of one random table;
- ``long-mixed``: ONE transaction of 500 k changes over 3 tables (200 k inserts into one, 150 k updates of another,
  150 k deletes from the third), which the source streams in pieces (protocol 2) to ours;
- ``all``: every shape above, one after the other on the same two servers, then a table of the figures.

``--big-transaction-mb N`` adds one transaction of N MB (1 kB rows) to the backlog of a shape (``all``: of pgbench).

The two copies:

a. ours: database ``ours``; schema pre_data, full load, post_data (none timed; the full load creates our slot and
   publication), then one untimed catch-up so that our slot stands at the current end of the WAL;
b. native: database ``native``; ``pg_dump --schema-only`` of the four tables piped into psql, ``CREATE PUBLICATION`` on
   the source, ``CREATE SUBSCRIPTION ... WITH (copy_data = true)``, wait for the initial sync (all tables ``r``) and
   for the slot to confirm the current end of the WAL, then ``ALTER SUBSCRIPTION ... DISABLE``.

With both stopped, ONE backlog is built: ``pgbench -c <clients> -j 2 -T <seconds> -n`` on the source (with the
shape's script); the source's
``pg_current_wal_insert_lsn()`` right after it is the target of both catch-ups, which run one after the other (never
competing for the cores):

a. ours (timed): ``run_incremental(window_seconds=<very large>, stop_when_caught_up=True, target_lsn=<target>)``
   repeated until caught up, in a spawned child process whose peak memory (ru_maxrss) is read;
b. native (timed): ``ALTER SUBSCRIPTION ... ENABLE``, then poll every 0.2 s until the subscription slot's
   ``confirmed_flush_lsn`` on the source reaches the target.

Both copies are then checked against the source (row count and an md5 over the rows in key order, per table). The
ratio ``ours_vs_native`` is native's time divided by ours over the same backlog: higher means ours is faster. Absolute figures swing
with machine load; compare the ratio, and the CPU seconds each catch-up cost: our process's, and the source's and the
destination's servers' (postmaster and every backend, the walsender and apply worker included). Run on demand::

    .venv/bin/python bench/incremental_bench.py --scale 100 --seconds 60 --clients 4
    .venv/bin/python bench/incremental_bench.py --shape delete-heavy --rows 2000000 --seconds 30 --clients 4
    .venv/bin/python bench/incremental_bench.py --shape all --scale 20 --seconds 20 --big-transaction-mb 1024
    .venv/bin/python bench/incremental_bench.py --workdir /tmp/incbench          # keep the servers' data
    .venv/bin/python bench/incremental_bench.py --workdir /tmp/incbench --reuse  # rerun, no pgbench -i
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import (
    MB,
    BenchError,
    checkpoint,
    fresh_database,
    ident,
    install_signal_handlers,
    log_fn,
    pgbench_args,
    pgbench_env,
    pipe_schema,
    redact,
    run_in_child,
    run_tool,
    server_cpu_seconds,
    stop_servers,
    tool,
    workdir_base,
)
from psycopg import sql

from airflow_pgmigrate.config import MigrationConfig
from airflow_pgmigrate.engine.connection import ConnectionInfo
from airflow_pgmigrate.engine.full_load import run_full_load
from airflow_pgmigrate.engine.incremental import release, run_incremental
from airflow_pgmigrate.engine.schema import migrate_schema
from airflow_pgmigrate.testing.local_postgres import SOURCE_SETTINGS, LocalPostgres

SOURCE_DB = "bench"
OURS_DB = "ours"
NATIVE_DB = "native"
MIGRATION = "bench_incremental"
NATIVE = "bench_native"  # the subscription, its slot and its publication
#: The four pgbench tables and the key each is ordered by for the checksum.
PGBENCH_TABLES = {"public.pgbench_accounts": "aid", "public.pgbench_branches": "bid",
                  "public.pgbench_tellers": "tid", "public.pgbench_history": "hid"}
#: The tables of the shape being measured.
TABLES = dict(PGBENCH_TABLES)
#: With --big-transaction-mb: a table that gets one transaction of that size (rows of about 1 kB) after pgbench.
BIG_TABLE = "public.bench_big"
#: A tpcb-like pgbench transaction: three updates and one insert.
CHANGES_PER_TXN = 4


@dataclass
class Shape:
    """One workload: its tables (name -> key column, for the checksum), how they are built on the source, and its
    backlog as pgbench scripts (none: pgbench's own transaction)."""

    tables: dict[str, str]
    #: SQL that creates and fills the tables, given the shape's row count.
    build: Callable[[int], str]
    #: pgbench scripts (each in a file of its own; pgbench picks one at random per transaction), given the rows.
    scripts: Callable[[int], list[str]]
    rows: int = 0
    #: Fixed pgbench clients, and transactions per client (None: --clients and -T --seconds).
    clients: int | None = None
    transactions: int | None = None


def _keyed_table(name: str, rows: int) -> str:
    return (f"CREATE TABLE {name} (id bigint PRIMARY KEY, n bigint NOT NULL DEFAULT 0, body text);"
            f"INSERT INTO {name} (id, body) SELECT g, md5(g::text) FROM generate_series(1, {int(rows)}) g;")


def _update_one(name: str) -> str:
    return f"\\set k random(1, :rows)\nUPDATE {name} SET n = n + 1 WHERE id = :k;\n"


MANY_TABLES = 50
WIDE_BODY = "(SELECT string_agg(md5(g::text || '-' || i::text), '') FROM generate_series(1, 200) i)"  # 6.4 kB
SHAPES: dict[str, Shape] = {
    "pgbench": Shape(PGBENCH_TABLES, lambda rows: "", lambda rows: []),
    "hot-rows": Shape({"public.bench_hot": "id"}, lambda rows: _keyed_table("public.bench_hot", rows),
                      lambda rows: [_update_one("public.bench_hot")], rows=200, clients=8),
    "wide-toast": Shape(
        {"public.bench_wide": "id"},
        lambda rows: ("CREATE TABLE public.bench_wide (id bigint PRIMARY KEY, n bigint NOT NULL DEFAULT 0, "
                      "body text); ALTER TABLE public.bench_wide ALTER COLUMN body SET STORAGE EXTERNAL;"
                      f"INSERT INTO public.bench_wide (id, body) SELECT g, {WIDE_BODY} "
                      f"FROM generate_series(1, {int(rows)}) g;"),
        lambda rows: [_update_one("public.bench_wide")], rows=20_000),
    "bulk-insert": Shape(
        {"public.bench_bulk": "id"},
        lambda rows: "CREATE TABLE public.bench_bulk (id bigserial PRIMARY KEY, k int NOT NULL, body text);",
        lambda rows: ["INSERT INTO public.bench_bulk (k, body) SELECT g, md5(g::text) "
                      "FROM generate_series(1, 100000) g;\n"], clients=1, transactions=20),
    "delete-heavy": Shape(
        {"public.bench_rows": "id"},
        lambda rows: ("CREATE TABLE public.bench_rows (id bigserial PRIMARY KEY, k int NOT NULL, body text);"
                      "INSERT INTO public.bench_rows (k, body) SELECT g, md5(g::text) "
                      f"FROM generate_series(1, {int(rows)}) g;"),
        lambda rows: ["\\set k random(1, :rows)\nBEGIN;\n"
                      "DELETE FROM public.bench_rows WHERE id BETWEEN :k AND :k + 4;\n"
                      "INSERT INTO public.bench_rows (k, body) VALUES (:k, md5(:k::text)), "
                      "(:k + 1, md5((:k + 1)::text));\nEND;\n"], rows=2_000_000),
    "many-tables": Shape(
        {f"public.bench_t{i}": "id" for i in range(1, MANY_TABLES + 1)},
        lambda rows: "".join(_keyed_table(f"public.bench_t{i}", rows) for i in range(1, MANY_TABLES + 1)),
        lambda rows: [_update_one(f"public.bench_t{i}") for i in range(1, MANY_TABLES + 1)], rows=2_000),
    "long-mixed": Shape(
        {"public.bench_m1": "id", "public.bench_m2": "id", "public.bench_m3": "id"},
        lambda rows: ("CREATE TABLE public.bench_m1 (id bigserial PRIMARY KEY, k int NOT NULL, body text);"
                      + _keyed_table("public.bench_m2", rows) + _keyed_table("public.bench_m3", rows)),
        lambda rows: ["BEGIN;\nINSERT INTO public.bench_m1 (k, body) SELECT g, md5(g::text) "
                      "FROM generate_series(1, 200000) g;\n"
                      "UPDATE public.bench_m2 SET n = n + 1 WHERE id <= 150000;\n"
                      "DELETE FROM public.bench_m3 WHERE id <= 150000;\nEND;\n"],
        rows=200_000, clients=1, transactions=1),
}
WINDOW_SECONDS = 7 * 24 * 3600.0
MAX_CALLS = 100
POLL_SECONDS = 0.2


# -- helpers --------------------------------------------------------------------------------------------------------


def qualified(key: str) -> str:
    schema, table = key.split(".", 1)
    return sql.Identifier(schema, table).as_string(None)


def current_lsn(source: LocalPostgres) -> str:
    return str(source.execute("SELECT pg_current_wal_insert_lsn()::text", SOURCE_DB)[0][0])


def lsn_diff(source: LocalPostgres, a: str, b: str) -> int:
    return int(source.execute("SELECT pg_wal_lsn_diff(%s::pg_lsn, %s::pg_lsn)::bigint", SOURCE_DB, (a, b))[0][0])


def make_config() -> dict[str, Any]:
    return {"name": MIGRATION, "source": {"conn_id": "bench_source"}, "destination": {"conn_id": "bench_destination"},
            "migration_types": ["schema", "full", "incremental"], "objects": {"tables": list(TABLES)}}


# -- dataset and leftovers ------------------------------------------------------------------------------------------


def build_shape(source: LocalPostgres, name: str, shape: Shape, rows: int) -> None:
    fresh_database(source, SOURCE_DB)
    started = time.monotonic()
    source.execute(shape.build(rows), SOURCE_DB)
    source.execute("VACUUM ANALYZE", SOURCE_DB)
    checkpoint(source)
    print(f"bench: dataset built shape={name} rows={rows} seconds={time.monotonic() - started:.1f}", flush=True)


def build_dataset(source: LocalPostgres, scale: int) -> None:
    fresh_database(source, SOURCE_DB)
    started = time.monotonic()
    run_tool([*pgbench_args(source), "-i", "-q", "-s", str(scale), SOURCE_DB], source, "pgbench -i",
             pgbench_env(source))
    source.execute("ALTER TABLE public.pgbench_history ADD COLUMN hid bigserial PRIMARY KEY", SOURCE_DB)
    source.execute("VACUUM ANALYZE", SOURCE_DB)
    checkpoint(source)
    print(f"bench: dataset built scale={scale} seconds={time.monotonic() - started:.1f}", flush=True)


def drop_native(source: LocalPostgres, destination: LocalPostgres) -> None:
    """Drop the native subscription (and its slot on the source) and publication, wherever they are left."""
    rows = destination.execute("SELECT d.datname FROM pg_subscription s JOIN pg_database d ON d.oid = s.subdbid "
                               "WHERE s.subname = %s", "postgres", (NATIVE,))
    for (db,) in rows:
        try:
            destination.execute(f"DROP SUBSCRIPTION {ident(NATIVE)}", db)  # also drops its slot on the source
        except Exception as exc:  # noqa: BLE001 - fall back to detaching the slot, dropped below
            print(f"bench: DROP SUBSCRIPTION failed ({redact(str(exc).strip(), source)}), detaching its slot",
                  flush=True)
            destination.execute(f"ALTER SUBSCRIPTION {ident(NATIVE)} DISABLE", db)
            destination.execute(f"ALTER SUBSCRIPTION {ident(NATIVE)} SET (slot_name = NONE)", db)
            destination.execute(f"DROP SUBSCRIPTION {ident(NATIVE)}", db)
    if source.execute("SELECT 1 FROM pg_database WHERE datname = %s", "postgres", (SOURCE_DB,)):
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            slot = source.execute("SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s", SOURCE_DB,
                                  (NATIVE,))
            if not slot:
                break
            if slot[0][0] is None:
                source.execute("SELECT pg_drop_replication_slot(%s)", SOURCE_DB, (NATIVE,))
                break
            source.execute("SELECT pg_terminate_backend(%s)", SOURCE_DB, (slot[0][0],))
            time.sleep(0.5)
        source.execute(f"DROP PUBLICATION IF EXISTS {ident(NATIVE)}", SOURCE_DB)


def drop_ours(source: LocalPostgres, verbose: bool) -> None:
    if source.execute("SELECT 1 FROM pg_database WHERE datname = %s", "postgres", (SOURCE_DB,)):
        release(MigrationConfig.from_dict(make_config()), source.info(SOURCE_DB), log=log_fn(verbose))


# -- a. ours --------------------------------------------------------------------------------------------------------


def setup_ours(source: LocalPostgres, destination: LocalPostgres, verbose: bool) -> dict[str, Any]:
    config = MigrationConfig.from_dict(make_config())
    src, dst = source.info(SOURCE_DB), destination.info(OURS_DB)
    log = log_fn(verbose)
    started = time.monotonic()
    migrate_schema(config, src, dst, "pre_data", log=log)
    report = run_full_load(config, src, dst, log=log)
    migrate_schema(config, src, dst, "post_data", log=log)
    seconds = time.monotonic() - started
    print(f"bench: ours set up (schema + full load + post-data, not timed) rows={report['rows']} "
          f"seconds={seconds:.1f}", flush=True)
    return {"setup_s": seconds, "rows": report["rows"]}


def catch_up_ours_untimed(source: LocalPostgres, destination: LocalPostgres, verbose: bool) -> None:
    """Bring our slot to the current end of the WAL, so that the timed catch-up applies the backlog only."""
    config = MigrationConfig.from_dict(make_config())
    for _ in range(MAX_CALLS):
        result = run_incremental(config, source.info(SOURCE_DB), destination.info(OURS_DB),
                                 window_seconds=WINDOW_SECONDS, stop_when_caught_up=True, log=log_fn(verbose))
        if result.caught_up:
            return
    raise BenchError("our pre-backlog catch-up never reported caught_up")


def _catch_up_child(config: dict[str, Any], source: ConnectionInfo, destination: ConnectionInfo, target_lsn: str,
                    verbose: bool, conn: Any) -> None:
    """Runs in a spawned process: the catch-up alone, so that its peak memory is this process's."""
    try:
        log = log_fn(verbose)
        migration = MigrationConfig.from_dict(config)
        calls: list[dict[str, Any]] = []
        started = time.monotonic()
        caught_up = False
        while not caught_up and len(calls) < MAX_CALLS:
            result = run_incremental(migration, source, destination, window_seconds=WINDOW_SECONDS,
                                     stop_when_caught_up=True, target_lsn=target_lsn, log=log)
            calls.append(result.to_dict())
            caught_up = result.caught_up
        seconds = time.monotonic() - started
        conn.send({"seconds": seconds, "caught_up": caught_up, "calls": len(calls),
                   "transactions": sum(c["transactions"] for c in calls),
                   "changes": sum(c["changes"] for c in calls),
                   "skipped_transactions": sum(c["skipped_transactions"] for c in calls),
                   "engine_seconds": sum(c["seconds"] for c in calls), "applied_lsn": calls[-1]["applied_lsn"],
                   "cpu_s": (usage := resource.getrusage(resource.RUSAGE_SELF)).ru_utime + usage.ru_stime,
                   "maxrss_kb": usage.ru_maxrss})
    except BaseException as exc:  # noqa: B036 - reported to the parent, which raises
        conn.send({"error": f"{type(exc).__name__}: {exc}"})
    finally:
        conn.close()


def time_ours(source: LocalPostgres, destination: LocalPostgres, target_lsn: str, verbose: bool) -> dict[str, Any]:
    result, wall = run_in_child(_catch_up_child, (make_config(), source.info(SOURCE_DB), destination.info(OURS_DB),
                                                  target_lsn, verbose), "incremental-bench")
    if "error" in result:
        raise BenchError(f"our catch-up failed: {redact(result['error'], source)}")
    if not result["caught_up"]:
        raise BenchError(f"our catch-up did not catch up in {result['calls']} calls: {result}")
    result["child_wall_s"] = wall
    result["peak_MB"] = result.pop("maxrss_kb") / 1024
    return result


# -- b. native ------------------------------------------------------------------------------------------------------


def setup_native(source: LocalPostgres, destination: LocalPostgres, timeout: float) -> dict[str, Any]:
    started = time.monotonic()
    dump_args = [tool(source, "pg_dump"), "--schema-only", "--no-publications", "--no-subscriptions"]
    for key in TABLES:
        dump_args += ["-t", qualified(key)]
    pipe_schema(source, [*dump_args, "-d", source.uri(SOURCE_DB)], destination.uri(NATIVE_DB),
                "schema for the native subscription")
    tables = ", ".join(qualified(key) for key in TABLES)
    source.execute(f"CREATE PUBLICATION {ident(NATIVE)} FOR TABLE {tables}", SOURCE_DB)
    destination.execute(sql.SQL("CREATE SUBSCRIPTION {} CONNECTION {} PUBLICATION {} WITH (copy_data = true)").format(
        sql.Identifier(NATIVE), sql.Literal(source.uri(SOURCE_DB)), sql.Identifier(NATIVE)).as_string(None),
        NATIVE_DB)
    deadline = time.monotonic() + timeout
    while True:
        states = destination.execute(
            "SELECT r.srsubstate::text, count(*) FROM pg_subscription_rel r JOIN pg_subscription s "
            "ON s.oid = r.srsubid WHERE s.subname = %s GROUP BY 1", NATIVE_DB, (NATIVE,))
        counts = {str(state): int(n) for state, n in states}
        if counts.get("r", 0) == len(TABLES) and len(counts) == 1:
            break
        if time.monotonic() > deadline:
            raise BenchError(f"the native initial sync did not finish in {timeout:.0f} s: states {counts}")
        time.sleep(POLL_SECONDS)
    synced = time.monotonic() - started
    # Let the slot confirm the current end of the WAL, so that the timed catch-up applies the backlog only.
    wait_confirmed(source, current_lsn(source), timeout)
    destination.execute(f"ALTER SUBSCRIPTION {ident(NATIVE)} DISABLE", NATIVE_DB)
    while source.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s AND active", SOURCE_DB, (NATIVE,)):
        if time.monotonic() > deadline:
            raise BenchError("the native slot stayed active after ALTER SUBSCRIPTION DISABLE")
        time.sleep(POLL_SECONDS)
    print(f"bench: native set up (schema + initial sync, not timed) seconds={synced:.1f}", flush=True)
    return {"setup_s": synced}


def wait_confirmed(source: LocalPostgres, target_lsn: str, timeout: float) -> float:
    """Seconds until the native slot's confirmed_flush_lsn reaches ``target_lsn`` (polled every 0.2 s)."""
    started = time.monotonic()
    while True:
        row = source.execute("SELECT confirmed_flush_lsn >= %s::pg_lsn, confirmed_flush_lsn::text "
                             "FROM pg_replication_slots WHERE slot_name = %s", SOURCE_DB, (target_lsn, NATIVE))
        if not row:
            raise BenchError(f"the native slot {NATIVE} does not exist on the source")
        if row[0][0]:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise BenchError(f"native did not reach {target_lsn} in {timeout:.0f} s (confirmed {row[0][1]})")
        time.sleep(POLL_SECONDS)


def time_native(source: LocalPostgres, destination: LocalPostgres, target_lsn: str, timeout: float) -> dict[str, Any]:
    started = time.monotonic()
    destination.execute(f"ALTER SUBSCRIPTION {ident(NATIVE)} ENABLE", NATIVE_DB)
    wait_confirmed(source, target_lsn, timeout)
    return {"seconds": time.monotonic() - started}


# -- backlog and verification ---------------------------------------------------------------------------------------


def row_changes(source: LocalPostgres) -> int:
    """Rows inserted, updated and deleted in the source database so far (its statistics)."""
    return int(source.execute("SELECT coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0)::bigint "
                              "FROM pg_stat_user_tables", SOURCE_DB)[0][0])


def build_backlog(source: LocalPostgres, clients: int, timing: list[str], big_mb: int = 0,
                  script: list[str] | None = None) -> dict[str, Any]:
    """The backlog: pgbench's own transaction, or ``script`` (pgbench options naming script files), run for
    ``timing`` (``-T <seconds>`` or ``-t <transactions per client>``)."""
    env = pgbench_env(source)
    before = current_lsn(source)
    changed_before = row_changes(source)
    started = time.monotonic()
    result = run_tool([*pgbench_args(source), "-c", str(clients), "-j", str(min(2, clients)), *timing,
                       "-n", *(script or []), SOURCE_DB], source, "pgbench", env)
    wall = time.monotonic() - started
    match = re.search(r"number of transactions actually processed:\s*(\d+)", result.stdout)
    if not match:
        raise BenchError(f"pgbench printed no transaction count: {result.stdout[-1000:]}")
    tps = re.search(r"tps = ([\d.]+)", result.stdout)
    transactions = int(match.group(1))
    # The ended pgbench sessions have reported their statistics; a short wait covers a late one.
    time.sleep(1.0)
    changes = row_changes(source) - changed_before if script else CHANGES_PER_TXN * transactions
    if big_mb:
        rows = big_mb * 1024
        big_started = time.monotonic()
        source.execute(f"INSERT INTO {BIG_TABLE} SELECT g, repeat(md5(g::text), 32) "  # noqa: S608 - constants
                       f"FROM generate_series(1, {rows}) g", SOURCE_DB)
        print(f"bench: one transaction of {rows} rows (~{big_mb} MB of changes) added to the backlog in "
              f"{time.monotonic() - big_started:.1f} s", flush=True)
        transactions, changes = transactions + 1, changes + rows
    target = current_lsn(source)
    return {"transactions": transactions, "changes_estimate": changes,
            "pgbench_tps": float(tps.group(1)) if tps else None, "pgbench_wall_s": wall, "start_lsn": before,
            "target_lsn": target, "wal_MB": lsn_diff(source, target, before) / MB, "big_transaction_mb": big_mb}


def table_fingerprints(server: LocalPostgres, db: str, columns: dict[str, list[str]]) -> dict[str, tuple[int, str]]:
    out = {}
    for key, key_column in TABLES.items():
        row_expr = "ROW(" + ", ".join(ident(c) for c in columns[key]) + ")::text"
        row = server.execute(f"SELECT count(*), md5(coalesce(string_agg(md5({row_expr}), '' ORDER BY "
                             f"{ident(key_column)}), '')) FROM {qualified(key)}", db)
        out[key] = (int(row[0][0]), str(row[0][1]))
    return out


def source_columns(source: LocalPostgres) -> dict[str, list[str]]:
    columns = {}
    for key in TABLES:
        rows = source.execute("SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 "
                              "AND NOT attisdropped ORDER BY attnum", SOURCE_DB, (qualified(key),))
        columns[key] = [str(r[0]) for r in rows]
    return columns


def verify(source: LocalPostgres, destination: LocalPostgres) -> dict[str, bool]:
    columns = source_columns(source)
    expected = table_fingerprints(source, SOURCE_DB, columns)
    verdict = {}
    for name, db in (("ours", OURS_DB), ("native", NATIVE_DB)):
        actual = table_fingerprints(destination, db, columns)
        wrong = {t: {"source": expected[t], name: actual[t]} for t in TABLES if actual[t] != expected[t]}
        if wrong:
            print(f"bench: verify run={name} MISMATCH (rows, md5) {wrong}", flush=True)
        else:
            print(f"bench: verify run={name} ok tables={len(actual)} rows={sum(n for n, _ in actual.values())} "
                  f"(counts and md5 match the source)", flush=True)
        verdict[name] = not wrong
    return verdict


def servers_cpu(source: LocalPostgres, destination: LocalPostgres) -> tuple[float, float]:
    return server_cpu_seconds(source), server_cpu_seconds(destination)


def servers_cpu_since(before: tuple[float, float], source: LocalPostgres,
                      destination: LocalPostgres) -> dict[str, float]:
    source_now, destination_now = servers_cpu(source, destination)
    return {"source_cpu_s": source_now - before[0], "destination_cpu_s": destination_now - before[1]}


# -- main -----------------------------------------------------------------------------------------------------------


def prepare_dataset(args: argparse.Namespace, name: str, source: LocalPostgres, base: Path) -> list[str] | None:
    """Build (or reuse) the shape's source dataset; return the pgbench options of its backlog scripts (None: pgbench's
    own transaction)."""
    shape = SHAPES[name]
    rows = args.rows or shape.rows
    marker = base / "dataset.json"
    wanted = {"shape": name, "scale": args.scale} if name == "pgbench" else {"shape": name, "rows": rows}
    built = json.loads(marker.read_text()) if marker.exists() else {}
    TABLES.clear()
    TABLES.update(shape.tables)
    if args.reuse and built == wanted:
        if name == "pgbench":
            source.execute("TRUNCATE public.pgbench_history", SOURCE_DB)
        print(f"bench: reusing the dataset {wanted} in {base}", flush=True)
    else:
        marker.unlink(missing_ok=True)
        if name == "pgbench":
            build_dataset(source, args.scale)
        else:
            build_shape(source, name, shape, rows)
        marker.write_text(json.dumps(wanted))
    options = []
    for i, text in enumerate(shape.scripts(rows)):
        script = base / f"{name}-{i + 1}.sql"
        script.write_text(text)
        os.chmod(script, 0o644)
        options += ["-f", str(script)]
    return [*options, "-D", f"rows={int(rows)}"] if options else None


def rounded(figures: dict[str, Any]) -> dict[str, Any]:
    return {k: (round(v, 3) if isinstance(v, float) else rounded(v) if isinstance(v, dict) else v)
            for k, v in figures.items()}


def run_shape(args: argparse.Namespace, name: str, source: LocalPostgres, destination: LocalPostgres, base: Path,
              timeout: float, big_mb: int) -> dict[str, Any]:
    """One shape, measured: ours and native catch up the same backlog, one after the other; both verified."""
    shape = SHAPES[name]
    drop_native(source, destination)
    drop_ours(source, args.verbose)
    script = prepare_dataset(args, name, source, base)
    if big_mb:
        TABLES[BIG_TABLE] = "id"
        source.execute(f"DROP TABLE IF EXISTS {qualified(BIG_TABLE)}; "
                       f"CREATE TABLE {qualified(BIG_TABLE)} (id bigint PRIMARY KEY, body text)", SOURCE_DB)
    fresh_database(destination, OURS_DB)
    fresh_database(destination, NATIVE_DB)

    ours_setup = setup_ours(source, destination, args.verbose)
    native_setup = setup_native(source, destination, timeout)
    catch_up_ours_untimed(source, destination, args.verbose)

    checkpoint(source, destination)
    clients = shape.clients or args.clients
    timing = ["-t", str(shape.transactions)] if shape.transactions else ["-T", str(args.seconds)]
    backlog = build_backlog(source, clients, timing, big_mb, script)
    txns = backlog["transactions"]
    print(f"bench: shape={name} backlog transactions={txns} changes~={backlog['changes_estimate']} "
          f"wal_MB={backlog['wal_MB']:.1f} (pgbench -c {clients} {' '.join(timing)}: tps={backlog['pgbench_tps']}) "
          f"target_lsn={backlog['target_lsn']}", flush=True)

    checkpoint(source, destination)
    cpu = servers_cpu(source, destination)
    ours = time_ours(source, destination, backlog["target_lsn"], args.verbose)
    ours.update(servers_cpu_since(cpu, source, destination))
    ours["txn_per_s"] = ours["transactions"] / ours["seconds"]
    ours["changes_per_s"] = ours["changes"] / ours["seconds"]
    ours.update(setup=ours_setup)
    print(f"bench: shape={name} run=ours seconds={ours['seconds']:.2f} txn/s={ours['txn_per_s']:.0f} "
          f"changes/s={ours['changes_per_s']:.0f} peak_MB={ours['peak_MB']:.0f} "
          f"(transactions={ours['transactions']} changes={ours['changes']} calls={ours['calls']} "
          f"child_wall_s={ours['child_wall_s']:.2f} child_cpu_s={ours['cpu_s']:.2f} "
          f"source_cpu_s={ours['source_cpu_s']:.2f} destination_cpu_s={ours['destination_cpu_s']:.2f} "
          f"loadavg={os.getloadavg()[0]:.2f})", flush=True)
    if ours["transactions"] != txns:
        print(f"bench: note: ours applied {ours['transactions']} transactions, pgbench reported {txns}", flush=True)

    checkpoint(source, destination)
    cpu = servers_cpu(source, destination)
    native = time_native(source, destination, backlog["target_lsn"], timeout)
    native.update(servers_cpu_since(cpu, source, destination))
    native["txn_per_s"] = txns / native["seconds"]
    native["changes_per_s"] = backlog["changes_estimate"] / native["seconds"]
    native.update(setup=native_setup)
    print(f"bench: shape={name} run=native seconds={native['seconds']:.2f} txn/s={native['txn_per_s']:.0f} "
          f"(changes/s~={native['changes_per_s']:.0f} source_cpu_s={native['source_cpu_s']:.2f} "
          f"destination_cpu_s={native['destination_cpu_s']:.2f} loadavg={os.getloadavg()[0]:.2f})", flush=True)
    # Same backlog, same target LSN: the ratio of the times (the transactions/s of each over the same work).
    ratio = native["seconds"] / ours["seconds"]
    print(f"bench: shape={name} ours_vs_native={ratio:.2f}x (native time / our time; higher = ours faster)",
          flush=True)
    verified = verify(source, destination)
    figures = {"postgres": source.major, "shape": name, "scale": args.scale, "rows": args.rows or shape.rows,
               "seconds": args.seconds, "clients": clients, "cores": os.cpu_count(), "backlog": rounded(backlog),
               "runs": {"ours": rounded(ours), "native": rounded(native)}, "ours_vs_native": round(ratio, 3),
               "peak_MB": round(ours["peak_MB"], 1), "verified": verified}
    print("bench-json: " + json.dumps(figures), flush=True)
    return figures


def shape_table(results: list[dict[str, Any]]) -> str:
    """The figures of a run as a Markdown table (the one docs/incremental.md shows)."""
    lines = ["| shape | backlog (txns / changes / WAL MB) | ours s | native s | ratio | our CPU s | "
             "source CPU s ours / native | destination CPU s ours / native | our peak MB | verified |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        b, o, n = r["backlog"], r["runs"]["ours"], r["runs"]["native"]
        name = r["shape"] + (f" + {b['big_transaction_mb']} MB transaction" if b["big_transaction_mb"] else "")
        lines.append(f"| {name} | {b['transactions']:,} / {o['changes']:,} / {b['wal_MB']:.0f} | {o['seconds']:.1f} | "
                     f"{n['seconds']:.1f} | {r['ours_vs_native']:.2f} | {o['cpu_s']:.1f} | "
                     f"{o['source_cpu_s']:.1f} / {n['source_cpu_s']:.1f} | "
                     f"{o['destination_cpu_s']:.1f} / {n['destination_cpu_s']:.1f} | {r['peak_MB']:.0f} | "
                     f"{'yes' if all(r['verified'].values()) else 'NO'} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=[*SHAPES, "all"], default="pgbench",
                        help="the workload (default pgbench; see above)")
    parser.add_argument("--scale", type=int, default=100, help="pgbench scale of the source (default 100)")
    parser.add_argument("--rows", type=int, help="the shape's table rows (default: the shape's own, see above)")
    parser.add_argument("--seconds", type=int, default=60, help="pgbench -T of the backlog (default 60)")
    parser.add_argument("--clients", type=int, default=4, help="pgbench -c of the backlog (default 4)")
    parser.add_argument("--big-transaction-mb", type=int, default=0,
                        help="also put one transaction of this many MB (1 kB rows) in the backlog, to read the "
                             "engine's peak memory with a transaction far larger than its batches (e.g. 1024)")
    parser.add_argument("--workdir", help="keep the servers here (stopped, data kept) instead of a temporary folder")
    parser.add_argument("--reuse", action="store_true", help="reuse the source dataset in --workdir when built at "
                        "--scale or --rows (pgbench_history is emptied)")
    parser.add_argument("--major", type=int, help="PostgreSQL major version of both servers (default: the lowest)")
    parser.add_argument("--timeout", type=float, help="seconds a native sync or catch-up may take "
                        "(default max(600, 30 x --seconds))")
    parser.add_argument("--verbose", action="store_true", help="print the engine's log lines")
    args = parser.parse_args()
    if args.reuse and not args.workdir:
        parser.error("--reuse needs --workdir")
    if args.shape == "all" and args.rows:
        parser.error("--rows applies to one shape; --shape all uses each shape's own")
    timeout = args.timeout or max(600.0, 30.0 * args.seconds)
    install_signal_handlers()

    base, keep = workdir_base(args.workdir, "pgmigrate-incbench-")
    source = LocalPostgres(base / "source", major=args.major, settings=SOURCE_SETTINGS)
    destination = LocalPostgres(base / "destination", major=args.major)
    failed = False
    started_servers = False
    results: list[dict[str, Any]] = []
    try:
        source.start()
        destination.start()
        started_servers = True
        print(f"bench: servers PostgreSQL {source.major} source_port={source.port} "
              f"destination_port={destination.port} workdir={base}", flush=True)
        names = list(SHAPES) if args.shape == "all" else [args.shape]
        for name in names:
            big_mb = args.big_transaction_mb if name == "pgbench" or args.shape != "all" else 0
            results.append(run_shape(args, name, source, destination, base, timeout, big_mb))
            failed = failed or not all(results[-1]["verified"].values())
        print("bench: shapes (ratio = native time / our time over the same backlog; higher = ours faster)\n"
              + shape_table(results), flush=True)
    except KeyboardInterrupt:
        print("bench: interrupted, stopping the servers", file=sys.stderr, flush=True)
        failed = True
    except BenchError as exc:
        print(f"bench: FAILED {exc}", file=sys.stderr, flush=True)
        failed = True
    finally:
        if started_servers:
            try:
                drop_native(source, destination)
                drop_ours(source, args.verbose)
                if not failed:
                    destination.drop_database(OURS_DB)
                    destination.drop_database(NATIVE_DB)
            except Exception as exc:  # noqa: BLE001 - the servers are stopped below either way
                print(f"bench: cleanup failed: {redact(str(exc), source)}", file=sys.stderr, flush=True)
        stop_servers(base, keep, source, destination)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
