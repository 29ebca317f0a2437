"""How long the precheck takes on a large catalog, with a least-privilege (non-superuser) source account.

Creates N tables (default 5000) in a throwaway source, runs the full precheck (schema, full, incremental) and prints
the time per phase. Run on demand: ``.venv/bin/python bench/precheck_catalog.py --tables 5000``.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from airflow_pgmigrate.config import MigrationConfig
from airflow_pgmigrate.engine.precheck import run_precheck
from airflow_pgmigrate.testing.local_postgres import SOURCE_SETTINGS, LocalPostgres


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tables", type=int, default=5000)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="pgmigrate-bench-"))
    base.chmod(0o755)
    source = LocalPostgres(base / "source", settings=SOURCE_SETTINGS).start()
    destination = LocalPostgres(base / "destination").start()
    try:
        source.create_database("big")
        destination.create_database("big")
        source.execute("CREATE ROLE bench_repl LOGIN REPLICATION PASSWORD 'bench-pw'")
        source.execute("GRANT CREATE ON DATABASE big TO bench_repl")
        started = time.perf_counter()
        for first in range(1, args.tables + 1, 500):  # batches: each table takes locks until its block commits
            last = min(first + 499, args.tables)
            source.execute(
                f"DO $$ BEGIN FOR i IN {first}..{last} LOOP "
                "EXECUTE format('CREATE TABLE public.t%s (id bigint PRIMARY KEY, v text)', i); "
                "EXECUTE format('ALTER TABLE public.t%s OWNER TO bench_repl', i); END LOOP; END $$", "big")
        print(f"bench: created tables={args.tables} seconds={time.perf_counter() - started:.1f}")
        config = MigrationConfig.from_dict({"name": "bench", "source": {"conn_id": "s"},
                                            "destination": {"conn_id": "d"}})
        for account in ("postgres", "bench_repl"):
            password = None if account == "postgres" else "bench-pw"
            started = time.perf_counter()
            report = run_precheck(config, source.info("big", account, password), destination.info("big"))
            seconds = time.perf_counter() - started
            print(f"bench: precheck account={account} tables={args.tables} seconds={seconds:.2f} "
                  f"tables_per_s={args.tables / seconds:.0f} failed={len(report.failures)} "
                  f"warnings={len(report.warnings)}")
    finally:
        source.destroy()
        destination.destroy()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
