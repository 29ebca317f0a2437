"""Change apply speed against native logical replication, measured in one run on the same two servers.

Builds a source for one workload shape (``--shape``), then brings two copies of its tables up to date on the same
destination server:

- ``pgbench`` (default): ``pgbench -i -s <scale>`` (``pgbench_history`` gets a ``hid bigserial`` primary key so that it
  can be replicated with a key); the backlog is pgbench's tpcb-like transaction (three updates and one insert);
- ``delete-heavy``: one table of ``--rows`` rows (default 2 M; ``id bigserial`` primary key, an int and a 32-character
  text); each backlog transaction deletes a random range of 5 keys and inserts 2 new rows. Each batch then deletes
  thousands of scattered keys from a table of millions of rows: the shape where a set-based statement planned as a
  join over the whole table costs the table instead of the batch.

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
ratio ``ours_vs_native`` is our transactions/s divided by native's: higher means ours is faster. Absolute figures swing
with machine load; compare the ratio, and the CPU seconds each catch-up cost: our process's, and the source's and the
destination's servers' (postmaster and every backend, the walsender and apply worker included). Run on demand::

    .venv/bin/python bench/incremental_bench.py --scale 100 --seconds 60 --clients 4
    .venv/bin/python bench/incremental_bench.py --shape delete-heavy --rows 2000000 --seconds 30 --clients 4
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
TABLES = {"public.pgbench_accounts": "aid", "public.pgbench_branches": "bid", "public.pgbench_tellers": "tid",
          "public.pgbench_history": "hid"}
#: With --big-transaction-mb: a table that gets one transaction of that size (rows of about 1 kB) after pgbench.
BIG_TABLE = "public.bench_big"
#: A tpcb-like pgbench transaction: three updates and one insert.
CHANGES_PER_TXN = 4
#: --shape delete-heavy: the table, and the backlog's transaction (a pgbench script; :rows is the table's initial size).
DELETE_HEAVY_TABLE = "public.bench_rows"
DELETE_HEAVY_SCRIPT = """\\set k random(1, :rows)
BEGIN;
DELETE FROM public.bench_rows WHERE id BETWEEN :k AND :k + 4;
INSERT INTO public.bench_rows (k, body) VALUES (:k, md5(:k::text)), (:k + 1, md5((:k + 1)::text));
END;
"""
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


def build_delete_heavy(source: LocalPostgres, rows: int) -> None:
    fresh_database(source, SOURCE_DB)
    started = time.monotonic()
    source.execute(f"CREATE TABLE {qualified(DELETE_HEAVY_TABLE)} (id bigserial PRIMARY KEY, k int NOT NULL, body text);"
                   f"INSERT INTO {qualified(DELETE_HEAVY_TABLE)} (k, body) SELECT g, md5(g::text) "  # noqa: S608
                   f"FROM generate_series(1, {int(rows)}) g", SOURCE_DB)
    source.execute("VACUUM ANALYZE", SOURCE_DB)
    checkpoint(source)
    print(f"bench: dataset built shape=delete-heavy rows={rows} seconds={time.monotonic() - started:.1f}", flush=True)


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


def build_backlog(source: LocalPostgres, clients: int, seconds: int, big_mb: int = 0,
                  script: list[str] | None = None) -> dict[str, Any]:
    """The backlog: pgbench's own transaction, or ``script`` (pgbench options naming a script file)."""
    env = pgbench_env(source)
    before = current_lsn(source)
    changed_before = row_changes(source)
    started = time.monotonic()
    result = run_tool([*pgbench_args(source), "-c", str(clients), "-j", str(min(2, clients)), "-T", str(seconds),
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


def prepare_dataset(args: argparse.Namespace, source: LocalPostgres, base: Path) -> list[str] | None:
    """Build (or reuse) the shape's source dataset; return the pgbench options of its backlog script (None: pgbench's
    own transaction)."""
    marker = base / "dataset.json"
    wanted = {"shape": args.shape, "scale": args.scale} if args.shape == "pgbench" else \
        {"shape": args.shape, "rows": args.rows}
    built = json.loads(marker.read_text()) if marker.exists() else {}
    if args.shape == "delete-heavy":
        TABLES.clear()
        TABLES[DELETE_HEAVY_TABLE] = "id"
    if args.reuse and built == wanted:
        if args.shape == "pgbench":
            source.execute("TRUNCATE public.pgbench_history", SOURCE_DB)
        print(f"bench: reusing the dataset {wanted} in {base}", flush=True)
    else:
        marker.unlink(missing_ok=True)
        if args.shape == "pgbench":
            build_dataset(source, args.scale)
        else:
            build_delete_heavy(source, args.rows)
        marker.write_text(json.dumps(wanted))
    if args.shape == "pgbench":
        return None
    script = base / "delete_heavy.sql"
    script.write_text(DELETE_HEAVY_SCRIPT)
    os.chmod(script, 0o644)
    return ["-f", str(script), "-D", f"rows={int(args.rows)}"]




def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=["pgbench", "delete-heavy"], default="pgbench",
                        help="the workload (default pgbench; see above)")
    parser.add_argument("--scale", type=int, default=100, help="pgbench scale of the source (default 100)")
    parser.add_argument("--rows", type=int, default=2_000_000, help="--shape delete-heavy: the table's rows "
                        "(default 2000000)")
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
    timeout = args.timeout or max(600.0, 30.0 * args.seconds)
    install_signal_handlers()

    base, keep = workdir_base(args.workdir, "pgmigrate-incbench-")
    source = LocalPostgres(base / "source", major=args.major, settings=SOURCE_SETTINGS)
    destination = LocalPostgres(base / "destination", major=args.major)
    failed = False
    started_servers = False
    try:
        source.start()
        destination.start()
        started_servers = True
        print(f"bench: servers PostgreSQL {source.major} source_port={source.port} "
              f"destination_port={destination.port} workdir={base}", flush=True)
        drop_native(source, destination)
        drop_ours(source, args.verbose)
        script = prepare_dataset(args, source, base)
        if args.big_transaction_mb:
            TABLES[BIG_TABLE] = "id"
            source.execute(f"DROP TABLE IF EXISTS {qualified(BIG_TABLE)}; "
                           f"CREATE TABLE {qualified(BIG_TABLE)} (id bigint PRIMARY KEY, body text)", SOURCE_DB)
        fresh_database(destination, OURS_DB)
        fresh_database(destination, NATIVE_DB)

        ours_setup = setup_ours(source, destination, args.verbose)
        native_setup = setup_native(source, destination, timeout)
        catch_up_ours_untimed(source, destination, args.verbose)

        checkpoint(source, destination)
        backlog = build_backlog(source, args.clients, args.seconds, args.big_transaction_mb, script)
        txns = backlog["transactions"]
        print(f"bench: backlog transactions={txns} changes~={backlog['changes_estimate']} "
              f"wal_MB={backlog['wal_MB']:.1f} (pgbench -c {args.clients} -j {min(2, args.clients)} "
              f"-T {args.seconds}: tps={backlog['pgbench_tps']}) target_lsn={backlog['target_lsn']}", flush=True)

        checkpoint(source, destination)
        cpu = servers_cpu(source, destination)
        ours = time_ours(source, destination, backlog["target_lsn"], args.verbose)
        ours.update(servers_cpu_since(cpu, source, destination))
        ours["txn_per_s"] = ours["transactions"] / ours["seconds"]
        ours["changes_per_s"] = ours["changes"] / ours["seconds"]
        ours.update(setup=ours_setup)
        print(f"bench: run=ours seconds={ours['seconds']:.2f} txn/s={ours['txn_per_s']:.0f} "
              f"changes/s={ours['changes_per_s']:.0f} peak_MB={ours['peak_MB']:.0f} "
              f"(transactions={ours['transactions']} changes={ours['changes']} calls={ours['calls']} "
              f"child_wall_s={ours['child_wall_s']:.2f} child_cpu_s={ours['cpu_s']:.2f} "
              f"source_cpu_s={ours['source_cpu_s']:.2f} destination_cpu_s={ours['destination_cpu_s']:.2f} "
              f"loadavg={os.getloadavg()[0]:.2f})", flush=True)
        if ours["transactions"] != txns:
            print(f"bench: note: ours applied {ours['transactions']} transactions, pgbench reported {txns}",
                  flush=True)

        checkpoint(source, destination)
        cpu = servers_cpu(source, destination)
        native = time_native(source, destination, backlog["target_lsn"], timeout)
        native.update(servers_cpu_since(cpu, source, destination))
        native["txn_per_s"] = txns / native["seconds"]
        native["changes_per_s"] = backlog["changes_estimate"] / native["seconds"]
        native.update(setup=native_setup)
        print(f"bench: run=native seconds={native['seconds']:.2f} txn/s={native['txn_per_s']:.0f} "
              f"(changes/s~={native['changes_per_s']:.0f} source_cpu_s={native['source_cpu_s']:.2f} "
              f"destination_cpu_s={native['destination_cpu_s']:.2f} loadavg={os.getloadavg()[0]:.2f})", flush=True)
        ratio = ours["txn_per_s"] / native["txn_per_s"]
        print(f"bench: ours_vs_native={ratio:.2f}x (transactions/s; higher = ours faster)", flush=True)

        verified = verify(source, destination)
        failed = not all(verified.values())

        def rounded(figures: dict[str, Any]) -> dict[str, Any]:
            return {k: (round(v, 3) if isinstance(v, float) else rounded(v) if isinstance(v, dict) else v)
                    for k, v in figures.items()}

        print("bench-json: " + json.dumps({
            "postgres": source.major, "shape": args.shape, "scale": args.scale, "rows": args.rows,
            "seconds": args.seconds, "clients": args.clients,
            "cores": os.cpu_count(), "backlog": rounded(backlog), "runs": {"ours": rounded(ours),
                                                                             "native": rounded(native)},
            "ours_vs_native": round(ratio, 3), "peak_MB": round(ours["peak_MB"], 1), "verified": verified}),
            flush=True)
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
