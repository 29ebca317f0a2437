"""The wait before cutover: does the destination stay "not delayed" for as long as the question waits?

Builds a source with ``pgbench -i -s <scale>`` (``pgbench_history`` gets a primary key), migrates schema and rows with
the engine, then, while ``pgbench -R <tps>`` writes steadily, does what ``sync_while_waiting`` does in the DAG: short
apply windows (``--window`` seconds, ``--poke`` seconds apart) for ``--minutes``. After each window it records the lag
(bytes and seconds). Then the cutover (freeze, drain, sequences, verify, release) and its drain time.

It prints one line per minute and a summary: the largest lag in bytes and seconds over the wait, how many windows
exceeded ``incremental.max_lag_seconds`` (5 s) or ``max_lag_bytes`` (16 MB), and the drain at cutover compared
with one window. The issue's benchmark is ``--minutes 60``::

    .venv/bin/python bench/wait_bench.py --minutes 60 --tps 200 --scale 20

Absolute figures depend on the machine's load: compare within one run.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import install_signal_handlers, pgbench_args, pgbench_env, run_tool

from airflow_pgmigrate.config import MigrationConfig, parse_size
from airflow_pgmigrate.engine.cutover import run_cutover
from airflow_pgmigrate.engine.full_load import run_full_load
from airflow_pgmigrate.engine.incremental import run_incremental
from airflow_pgmigrate.engine.schema import migrate_schema
from airflow_pgmigrate.testing.local_postgres import SOURCE_SETTINGS, LocalPostgres

DB = "bench"


def prepare(source: LocalPostgres, destination: LocalPostgres, scale: int) -> MigrationConfig:
    source.create_database(DB)
    destination.create_database(DB)
    run_tool([*pgbench_args(source), "-i", "-q", "-s", str(scale), DB], source, "pgbench -i", pgbench_env(source))
    source.execute("ALTER TABLE public.pgbench_history ADD COLUMN hid bigserial PRIMARY KEY", DB)
    config = MigrationConfig.from_dict({
        "name": "bench_wait", "source": {"conn_id": "s"}, "destination": {"conn_id": "d"},
        "objects": {"schemas": ["public"]}, "cutover": {"approval": "automatic", "freeze_source": True}})
    src, dst = source.info(DB), destination.info(DB)
    migrate_schema(config, src, dst, phase="pre_data")
    loaded = run_full_load(config, src, dst)
    migrate_schema(config, src, dst, phase="post_data")
    print(f"wait_bench: full load rows={loaded['rows']} seconds={loaded['seconds']}", flush=True)
    return config


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=5.0, help="how long the question waits (default 5)")
    parser.add_argument("--tps", type=int, default=200, help="pgbench -R: transactions per second (default 200)")
    parser.add_argument("--scale", type=int, default=20, help="pgbench scale of the source (default 20)")
    parser.add_argument("--window", type=float, default=10.0, help="apply window in seconds (default 10, the DAG's)")
    parser.add_argument("--poke", type=float, default=1.0, help="seconds between windows (default 1, the DAG's)")
    parser.add_argument("--major", type=int, help="PostgreSQL major version (default: the lowest found)")
    args = parser.parse_args()
    install_signal_handlers()
    work = Path(tempfile.mkdtemp(prefix="pgmigrate-wait-bench-"))
    work.chmod(0o755)
    source = LocalPostgres(work / "source", major=args.major, settings=SOURCE_SETTINGS).start()
    destination = LocalPostgres(work / "destination", major=source.major).start()
    load = None
    try:
        config = prepare(source, destination, args.scale)
        src, dst = source.info(DB), destination.info(DB)
        seconds = int(args.minutes * 60) + 60
        load = subprocess.Popen([*pgbench_args(source), "-n", "-c", "2", "-j", "2", "-R", str(args.tps), "-T",
                                 str(seconds), DB], env=pgbench_env(source), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        max_bytes, max_seconds = parse_size(config.incremental.max_lag_bytes), config.incremental.max_lag_seconds
        worst_bytes, worst_seconds, over, windows = 0, 0.0, 0, 0
        started = time.monotonic()
        next_line = started + 60
        while time.monotonic() - started < args.minutes * 60:
            result = run_incremental(config, src, dst, window_seconds=args.window)
            windows += 1
            worst_bytes, worst_seconds = max(worst_bytes, result.lag_bytes), max(worst_seconds, result.lag_seconds)
            over += int(result.lag_bytes > max_bytes or result.lag_seconds > max_seconds)
            if time.monotonic() >= next_line:
                print(f"wait_bench: minute={int((time.monotonic() - started) // 60)} windows={windows} "
                      f"lag_bytes={result.lag_bytes} lag_s={result.lag_seconds:.2f} worst_bytes={worst_bytes} "
                      f"worst_s={worst_seconds:.2f} over_threshold={over}", flush=True)
                next_line += 60
            time.sleep(args.poke)
        report = run_cutover(config, src, dst)
        drain = next(s["seconds"] for s in report["steps"] if s["step"] == "drain")
        print("wait_bench: cutover steps " + " ".join(f"{s['step']}={s['seconds']}s" for s in report["steps"]
                                                      if "seconds" in s), flush=True)
        print(f"wait_bench: minutes={args.minutes:g} tps={args.tps} windows={windows} worst_lag_bytes={worst_bytes} "
              f"worst_lag_s={worst_seconds:.2f} windows_over_threshold={over} drain_s={drain} window_s={args.window} "
              f"drain_within_one_window={drain <= args.window} downtime_s={report['downtime_seconds']} "
              f"equal={report['verification']['equal']}", flush=True)
        return 0 if over == 0 and drain <= args.window and report["verification"]["equal"] else 1
    finally:
        if load is not None and load.poll() is None:
            load.terminate()
            load.wait(timeout=30)
        source.stop("immediate")
        destination.stop("immediate")
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
