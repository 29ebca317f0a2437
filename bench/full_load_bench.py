"""Full load speed against the anchors, measured in one run on the same two servers.

Builds a dataset on a throwaway source (``pgbench -i -s <scale>``, a wide table of text, jsonb, numeric, timestamptz,
bytea and int[] columns, and ~20 KB TOASTed rows; about 1.5-2 GB at scale 100), then copies it three ways, each into a
fresh database on the same throwaway destination:

a. ours: schema pre_data (not timed), the full load (timed, in a child process whose peak memory is read), post_data
   (timed: indexes and constraints); full_load.parallel_jobs=2, schema_migration.index_jobs=2;
b. psql_pipe (the freeze pipe): ``psql COPY TO STDOUT (FORMAT binary) | psql -1 -c 'TRUNCATE ONLY t' -c 'COPY t
   FROM STDIN (FORMAT binary, FREEZE)'``, two tables at a time, largest first (timed), then ``pg_restore -j2
   --section=post-data`` (timed);
c. pg_dump_restore: ``pg_dump -Fd -j2`` (default compression) then ``pg_restore -j2`` (timed together).

MB/s figures all use the same basis: the source's table data size (sum of ``pg_table_size`` of the user tables).
Ratios are the anchor's time divided by ours: higher means ours is faster. Absolute figures swing with machine load;
compare the ratios. Besides wall time, each run reports its CPU seconds (every process of both servers and every
client) and the average cores busy (CPU seconds over wall seconds), and the same for the whole machine
(``machine_cores_busy``, from ``/proc/stat``: the kernel's page cache and network work that no process is charged
for counts too; meaningful only on a machine doing nothing else). ``--dataset`` names the issue's two sizes:
``2gb`` (scale 100, 2.08 GB of table data), ``7.5gb`` (pgbench scale 500, the other two tables as at 2gb: 7.55 GB),
``both`` (one after the other, in one run, each dataset removed before the next is built); ``--repeat`` runs each
comparison again on the same dataset. Run on demand::

    .venv/bin/python bench/full_load_bench.py --dataset 2gb --repeat 2 --only ours --only psql_pipe
    .venv/bin/python bench/full_load_bench.py --dataset both --only ours --only psql_pipe
    .venv/bin/python bench/full_load_bench.py --scale 100
    .venv/bin/python bench/full_load_bench.py --scale 100 --workdir /tmp/flbench          # keep the servers' data
    .venv/bin/python bench/full_load_bench.py --scale 100 --workdir /tmp/flbench --reuse  # rerun, no rebuild
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from common import (
    MB,
    BenchError,
    checkpoint,
    client_env,
    clients_cpu_seconds,
    fresh_database,
    ident,
    install_signal_handlers,
    log_fn,
    machine_cpu_seconds,
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
from airflow_pgmigrate.engine.schema import migrate_schema
from airflow_pgmigrate.testing.local_postgres import SOURCE_SETTINGS, LocalPostgres

SOURCE_DB = "bench"
MIGRATION = "bench"
TOAST_PIECES = 640  # 640 md5 hex strings of 32 characters: ~20 KB per row, random hex that pglz barely shrinks
USER_TABLES = """
    SELECT n.nspname, c.relname, pg_table_size(c.oid)
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema')
       AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%'
     ORDER BY 3 DESC, 1, 2
"""


# -- helpers --------------------------------------------------------------------------------------------------------


def user_tables(server: LocalPostgres, db: str) -> list[tuple[str, str, int]]:
    return [(str(s), str(t), int(b)) for s, t, b in server.execute(USER_TABLES, db)]


def qualified(schema: str, table: str) -> str:
    return sql.Identifier(schema, table).as_string(None)


# -- dataset --------------------------------------------------------------------------------------------------------


def build_dataset(source: LocalPostgres, scale: int, extras_scale: int | None = None) -> None:
    """pgbench at ``scale``, the wide and TOAST tables at ``extras_scale`` (default: the same)."""
    fresh_database(source, SOURCE_DB)
    started = time.monotonic()
    run_tool([*pgbench_args(source), "-i", "-q", "-s", str(scale), SOURCE_DB], source, "pgbench -i",
             pgbench_env(source))
    extras = scale if extras_scale is None else extras_scale
    wide_rows = max(10_000, 1_000_000 * extras // 100)
    toast_rows = max(500, 20_000 * extras // 100)
    source.execute("""
        CREATE TABLE public.bench_wide (
            id bigint PRIMARY KEY, label text, doc jsonb, amount numeric, created timestamptz, digest bytea,
            scores int[])""", SOURCE_DB)
    source.execute(f"""
        INSERT INTO public.bench_wide
        SELECT g, repeat(md5(g::text), 3),
               jsonb_build_object('id', g, 'name', 'item ' || g, 'tags', jsonb_build_array('a', 'b', g % 7),
                                  'price', round((random() * 1000)::numeric, 2), 'active', g % 2 = 0),
               round((random() * 1000000)::numeric, 4), timestamptz '2024-01-01 00:00:00+00' + g * interval '1 s',
               decode(md5(g::text) || md5((g + 1)::text), 'hex'), ARRAY[g, g * 2, g % 100, g % 7, 42]
          FROM generate_series(1, {wide_rows}) g""", SOURCE_DB)
    source.execute("CREATE TABLE public.bench_toast (id int PRIMARY KEY, body text)", SOURCE_DB)
    source.execute(f"""
        INSERT INTO public.bench_toast
        SELECT g, (SELECT string_agg(md5(random()::text || s::text || g::text), '')
                     FROM generate_series(1, {TOAST_PIECES}) s)
          FROM generate_series(1, {toast_rows}) g""", SOURCE_DB)
    source.execute("VACUUM ANALYZE", SOURCE_DB)
    checkpoint(source)
    print(f"bench: dataset built scale={scale} wide_rows={wide_rows} toast_rows={toast_rows} "
          f"seconds={time.monotonic() - started:.1f}", flush=True)


def count_rows(server: LocalPostgres, db: str, tables: list[tuple[str, str, int]]) -> dict[str, int]:
    out = {}
    for schema, table, _ in tables:
        row = server.execute(f"SELECT count(*) FROM {qualified(schema, table)}", db)
        out[f"{schema}.{table}"] = int(row[0][0])
    return out


def verify(name: str, destination: LocalPostgres, db: str, tables: list[tuple[str, str, int]],
           expected: dict[str, int]) -> bool:
    actual = count_rows(destination, db, tables)
    wrong = {t: (expected[t], actual[t]) for t in expected if actual[t] != expected[t]}
    if wrong:
        print(f"bench: verify run={name} MISMATCH (source, destination) {wrong}", flush=True)
        return False
    print(f"bench: verify run={name} ok tables={len(actual)} rows={sum(actual.values())}", flush=True)
    return True


# -- a. ours --------------------------------------------------------------------------------------------------------


def _full_load_child(config: dict[str, Any], source: ConnectionInfo, destination: ConnectionInfo, verbose: bool,
                     conn: Any) -> None:
    """Runs in a spawned process: the full load alone, so that its peak memory is this process's."""
    try:
        log = log_fn(verbose)
        started = time.monotonic()
        report = run_full_load(MigrationConfig.from_dict(config), source, destination, log=log)
        seconds = time.monotonic() - started
        conn.send({"seconds": seconds, "rows": report["rows"], "bytes": report["bytes"],
                   "engine_seconds": report["seconds"], "engine_mb_per_second": report["mb_per_second"],
                   "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss})
    except BaseException as exc:  # noqa: B036 - reported to the parent, which raises
        conn.send({"error": f"{type(exc).__name__}: {exc}"})
    finally:
        conn.close()


def run_ours(source: LocalPostgres, destination: LocalPostgres, db: str, jobs: int, with_slot: bool,
             verbose: bool, split: str = "auto") -> dict[str, Any]:
    types = ["schema", "full", "incremental"] if with_slot else ["schema", "full"]
    config_dict = {"name": MIGRATION, "source": {"conn_id": "bench_source"},
                   "destination": {"conn_id": "bench_destination"}, "migration_types": types,
                   "full_load": {"parallel_jobs": jobs, "split_tables_larger_than": split}, "schema_migration": {"index_jobs": jobs}}
    config = MigrationConfig.from_dict(config_dict)
    src, dst = source.info(SOURCE_DB), destination.info(db)
    log = log_fn(verbose)
    migrate_schema(config, src, dst, "pre_data", log=log)
    checkpoint(source, destination)
    result, wall = run_in_child(_full_load_child, (config_dict, src, dst, verbose), "full-load-bench")
    if "error" in result:
        raise BenchError(f"our full load failed: {redact(result['error'], source)}")
    children_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.monotonic()
    migrate_schema(config, src, dst, "post_data", log=log)
    post = time.monotonic() - started
    if with_slot:
        source.execute("SELECT pg_drop_replication_slot(%s)", SOURCE_DB, (config.slot_name,))
        source.execute(f"DROP PUBLICATION IF EXISTS {ident(config.publication_name)}", SOURCE_DB)
    return {"copy_s": result["seconds"], "post_data_s": post, "total_s": result["seconds"] + post,
            "child_wall_s": wall, "spawn_overhead_s": wall - result["seconds"], "rows": result["rows"],
            "copied_MB": result["bytes"] / MB, "engine_mb_per_second": result["engine_mb_per_second"],
            "peak_worker_MB": result["maxrss_kb"] / 1024, "rusage_children_max_MB": children_kb / 1024,
            "with_slot": with_slot}


# -- b. psql pipe ---------------------------------------------------------------------------------------------------


def _pipe_table(source: LocalPostgres, destination: LocalPostgres, db: str, schema: str, table: str) -> None:
    name = qualified(schema, table)
    psql = tool(source, "psql")
    env = client_env()
    out = subprocess.Popen([psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", source.uri(SOURCE_DB),
                            "-c", f"COPY {name} TO STDOUT (FORMAT binary)"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    into = subprocess.Popen([psql, "-X", "-q", "-1", "-v", "ON_ERROR_STOP=1", "-d", destination.uri(db),
                             "-c", f"TRUNCATE ONLY {name}", "-c", f"COPY {name} FROM STDIN (FORMAT binary, FREEZE)"],
                            stdin=out.stdout, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    assert out.stdout is not None
    out.stdout.close()
    _, into_err = into.communicate()
    out_err = out.stderr.read() if out.stderr else b""
    out.wait()
    if out.returncode or into.returncode:
        message = (out_err + into_err).decode(errors="replace").strip()
        raise BenchError(f"psql pipe of {name} failed: {redact(message, source)}")


def run_pipe(source: LocalPostgres, destination: LocalPostgres, db: str, workdir: Path, jobs: int,
             tables: list[tuple[str, str, int]]) -> dict[str, Any]:
    pipe_schema(source, [tool(source, "pg_dump"), "--schema-only", "--section=pre-data", "-d", source.uri(SOURCE_DB)],
                destination.uri(db), "pre-data for the pipe")
    post_file = workdir / "post-data.dump"
    run_tool([tool(source, "pg_dump"), "-Fc", "--schema-only", "--section=post-data", "-f", str(post_file),
              "-d", source.uri(SOURCE_DB)], source, "pg_dump post-data")
    checkpoint(source, destination)
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="pipe") as pool:  # FIFO: largest first
        futures = [pool.submit(_pipe_table, source, destination, db, s, t) for s, t, _ in tables]
        for future in futures:
            future.result()
    copy = time.monotonic() - started
    started = time.monotonic()
    run_tool([tool(source, "pg_restore"), f"-j{jobs}", "--section=post-data", "-d", destination.uri(db),
              str(post_file)], source, "pg_restore post-data")
    post = time.monotonic() - started
    post_file.unlink(missing_ok=True)
    return {"copy_s": copy, "post_data_s": post, "total_s": copy + post}


# -- c. pg_dump | pg_restore ----------------------------------------------------------------------------------------


def run_dump_restore(source: LocalPostgres, destination: LocalPostgres, db: str, workdir: Path,
                     jobs: int) -> dict[str, Any]:
    folder = workdir / "dump-dir"
    shutil.rmtree(folder, ignore_errors=True)
    checkpoint(source, destination)
    started = time.monotonic()
    run_tool([tool(source, "pg_dump"), "-Fd", f"-j{jobs}", "-f", str(folder), "-d", source.uri(SOURCE_DB)],
             source, "pg_dump -Fd")
    dumped = time.monotonic() - started
    run_tool([tool(source, "pg_restore"), f"-j{jobs}", "-d", destination.uri(db), str(folder)],
             source, "pg_restore")
    total = time.monotonic() - started
    dump_mb = sum(f.stat().st_size for f in folder.iterdir()) / MB
    shutil.rmtree(folder, ignore_errors=True)
    return {"dump_s": dumped, "restore_s": total - dumped, "total_s": total, "dump_MB": dump_mb}


# -- main -----------------------------------------------------------------------------------------------------------


def line(name: str, figures: dict[str, Any], data_mb: float) -> str:
    rate = data_mb / figures["total_s"]
    figures["MB_per_s"] = rate
    if "copy_s" in figures:
        return (f"bench: run={name} copy_s={figures['copy_s']:.2f} post_data_s={figures['post_data_s']:.2f} "
                f"total_s={figures['total_s']:.2f} MB/s={rate:.1f} (copy+post)")
    return (f"bench: run={name} dump_s={figures['dump_s']:.2f} restore_s={figures['restore_s']:.2f} "
            f"total_s={figures['total_s']:.2f} MB/s={rate:.1f} (dump+restore)")


#: The issue's datasets: (pgbench scale, scale of the wide and TOAST tables). 2.08 GB and 7.55 GB of table data.
DATASETS = {"2gb": [(100, 100)], "7.5gb": [(500, 100)], "both": [(100, 100), (500, 100)]}
RUNS = ("ours", "psql_pipe", "pg_dump_restore")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=sorted(DATASETS),
                        help="the issue's dataset sizes: 2gb (scale 100), 7.5gb (scale 500), both (in one run)")
    parser.add_argument("--scale", type=int, default=100, help="pgbench scale (without --dataset); 100: about 2 GB")
    parser.add_argument("--repeat", type=int, default=1, help="run each comparison this many times per dataset")
    parser.add_argument("--workdir", help="keep the servers here (stopped, data kept) instead of a temporary folder")
    parser.add_argument("--reuse", action="store_true", help="reuse the dataset in --workdir when built at --scale")
    parser.add_argument("--with-slot", action="store_true",
                        help="ours with migration_types incremental too: the timed load includes slot creation")
    parser.add_argument("--jobs", type=int, default=2, help="parallel jobs of every run (default 2)")
    parser.add_argument("--major", type=int, help="PostgreSQL major version of both servers (default: the lowest)")
    parser.add_argument("--split", default="auto",
                        help="our full_load.split_tables_larger_than (default auto, the product's default)")
    parser.add_argument("--only", choices=list(RUNS), action="append",
                        help="run only these (repeatable); ratios need ours and the anchor")
    parser.add_argument("--verbose", action="store_true", help="print the engine's log lines")
    args = parser.parse_args()
    if args.reuse and not args.workdir:
        parser.error("--reuse needs --workdir")
    args.scales = DATASETS[args.dataset] if args.dataset else [(args.scale, args.scale)]
    return args


def prepare_dataset(source: LocalPostgres, base: Path, scales: tuple[int, int],
                    reuse: bool) -> tuple[list[Any], float, dict[str, int]]:
    """Build (or reuse) the dataset of (pgbench scale, extras scale); returns its tables, MB of table data and row
    counts."""
    scale, extras = scales
    marker = base / "dataset.json"
    built = json.loads(marker.read_text()) if marker.exists() else {}
    if reuse and built.get("scale") == scale and built.get("extras_scale", scale) == extras:
        print(f"bench: reusing the dataset of scale {scale} in {base}", flush=True)
    else:
        marker.unlink(missing_ok=True)
        build_dataset(source, scale, extras)
        marker.write_text(json.dumps({"scale": scale, "extras_scale": extras}))
    source.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                   "WHERE slot_name = %s", SOURCE_DB, (f"pgmigrate_{MIGRATION}",))
    tables = user_tables(source, SOURCE_DB)
    data_mb = sum(size for _, _, size in tables) / MB
    expected = count_rows(source, SOURCE_DB, tables)
    print(f"bench: dataset scale={scale} tables={len(tables)} rows={sum(expected.values())} "
          f"table_data_MB={data_mb:.1f} (the MB basis of every MB/s)", flush=True)
    for schema, table, size in tables:
        print(f"bench:   table={schema}.{table} MB={size / MB:.1f} rows={expected[f'{schema}.{table}']}")
    return tables, data_mb, expected


def compare(source: LocalPostgres, destination: LocalPostgres, base: Path, args: argparse.Namespace,
            tables: list[Any], data_mb: float, expected: dict[str, int]) -> dict[str, dict[str, Any]]:
    """One round: each selected run into a fresh database, timed, with its CPU seconds, then verified."""
    runs = {"ours": lambda db: run_ours(source, destination, db, args.jobs, args.with_slot, args.verbose, args.split),
            "psql_pipe": lambda db: run_pipe(source, destination, db, base, args.jobs, tables),
            "pg_dump_restore": lambda db: run_dump_restore(source, destination, db, base, args.jobs)}
    results: dict[str, dict[str, Any]] = {}
    for name in RUNS:
        if args.only and name not in args.only:
            continue
        db = f"bench_{name}"
        fresh_database(destination, db)
        cpu_before = server_cpu_seconds(source) + server_cpu_seconds(destination) + clients_cpu_seconds()
        machine_before = machine_cpu_seconds()
        results[name] = runs[name](db)
        cpu = server_cpu_seconds(source) + server_cpu_seconds(destination) + clients_cpu_seconds() - cpu_before
        machine = machine_cpu_seconds() - machine_before
        wall = results[name]["total_s"]
        results[name].update(cpu_s=cpu, cores_busy=cpu / wall, machine_cpu_s=machine, machine_cores_busy=machine / wall)
        print(line(name, results[name], data_mb) + f" cpu_s={cpu:.1f} cores_busy={cpu / wall:.2f}"
              f" machine_cpu_s={machine:.1f} machine_cores_busy={machine / wall:.2f}", flush=True)
        results[name]["verified"] = verify(name, destination, db, tables, expected)
        destination.drop_database(db)
    return results


def ratios_of(results: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Anchor's time (or CPU) over ours: higher means ours is faster."""
    ours = results.get("ours")
    out: dict[str, float] = {}
    if ours is None:
        return out
    if "psql_pipe" in results:
        pipe = results["psql_pipe"]
        out.update(ours_vs_psql_pipe=pipe["total_s"] / ours["total_s"],
                   copy_only_ours_vs_psql_pipe=pipe["copy_s"] / ours["copy_s"],
                   post_data_ours_vs_pg_restore=pipe["post_data_s"] / max(ours["post_data_s"], 1e-3),
                   cpu_ours_vs_psql_pipe=pipe["cpu_s"] / ours["cpu_s"])
    if "pg_dump_restore" in results:
        dump = results["pg_dump_restore"]
        out.update(ours_vs_pg_dump_restore=dump["total_s"] / ours["total_s"],
                   cpu_ours_vs_pg_dump_restore=dump["cpu_s"] / ours["cpu_s"])
    return out


def report_round(scale: int, round_no: int, results: dict[str, dict[str, Any]], data_mb: float) -> dict[str, Any]:
    ratios = ratios_of(results)
    print(f"bench: scale={scale} round={round_no} " + " ".join(f"{k}={v:.2f}x" for k, v in ratios.items())
          + " (higher = ours faster)", flush=True)
    rounded = {k: {f: round(v, 3) if isinstance(v, float) else v for f, v in r.items()} for k, r in results.items()}
    summary = {"scale": scale, "round": round_no, "table_data_MB": round(data_mb, 1), "runs": rounded,
               "ratios": {k: round(v, 3) for k, v in ratios.items()}}
    print("bench-json: " + json.dumps(summary), flush=True)
    return summary


def main() -> int:
    args = parse_args()
    install_signal_handlers()
    base, keep = workdir_base(args.workdir, "pgmigrate-flbench-")
    source = LocalPostgres(base / "source", major=args.major, settings=SOURCE_SETTINGS)
    destination = LocalPostgres(base / "destination", major=args.major)
    failed = False
    summaries: list[dict[str, Any]] = []
    try:
        source.start()
        destination.start()
        print(f"bench: servers PostgreSQL {source.major} source_port={source.port} "
              f"destination_port={destination.port} workdir={base} cores={os.cpu_count()} jobs={args.jobs}",
              flush=True)
        for scale, extras in args.scales:
            tables, data_mb, expected = prepare_dataset(source, base, (scale, extras), args.reuse)
            for round_no in range(1, args.repeat + 1):
                results = compare(source, destination, base, args, tables, data_mb, expected)
                failed = failed or not all(r["verified"] for r in results.values())
                summaries.append(report_round(scale, round_no, results, data_mb))
        for item in summaries:
            runs = item["runs"]
            print(f"bench: summary scale={item['scale']} round={item['round']} " + " ".join(
                f"{name}={r['total_s']:.1f}s/{r['cpu_s']:.1f}cpu-s/{r['cores_busy']:.2f}cores"
                f"/{r['machine_cores_busy']:.2f}machine-cores"
                for name, r in runs.items()) + f" ratio_vs_pipe={item['ratios'].get('ours_vs_psql_pipe', 0):.2f}x",
                flush=True)
    except KeyboardInterrupt:
        print("bench: interrupted, stopping the servers", file=sys.stderr, flush=True)
        failed = True
    except BenchError as exc:
        print(f"bench: FAILED {exc}", file=sys.stderr, flush=True)
        failed = True
    finally:
        stop_servers(base, keep, source, destination)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
