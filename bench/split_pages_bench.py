"""What the pages of a split table cost: loaded in parts (no FREEZE) against one ``COPY ... FREEZE``.

A split table is copied in parallel chunks, each in its own transaction, so ``COPY ... FREEZE`` (which needs the
table emptied in the same transaction) cannot be used: its rows arrive neither frozen nor hinted, and the first to
read each page (the index build, a reader) sets the hint bits and dirties it again. This measures, on one throwaway
PostgreSQL server, a pgbench_accounts-like table loaded four ways, each followed by its primary key build and a
sequential scan:

a. freeze: one transaction, ``TRUNCATE`` + ``COPY ... (FREEZE)``;
b. parts: four ``COPY`` transactions (what a split table gets);
c. parts_vacuum: b, then ``VACUUM`` (hint bits and the visibility map) before the index build;
d. parts_freeze: b, then ``VACUUM (FREEZE)`` before the index build.

Each step prints its seconds, the WAL it wrote, and ``relallvisible`` / ``relpages`` after it. Run on demand::

    .venv/bin/python bench/split_pages_bench.py --rows 5000000
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import psycopg

from airflow_pgmigrate.testing.local_postgres import LocalPostgres

PARTS = 4


def timed(conn: psycopg.Connection, statement: str) -> tuple[float, int]:
    """Seconds and WAL bytes of one statement."""
    before = conn.execute("SELECT pg_current_wal_insert_lsn()").fetchone()[0]  # type: ignore[index]
    started = time.monotonic()
    conn.execute(statement)  # type: ignore[call-overload] # the bench's own constant statements
    seconds = time.monotonic() - started
    wal = conn.execute("SELECT pg_current_wal_insert_lsn() - %s::pg_lsn", (before,)).fetchone()[0]  # type: ignore[index]
    return seconds, int(wal)


def visibility(conn: psycopg.Connection) -> str:
    row = conn.execute("SELECT relallvisible, relpages FROM pg_class WHERE oid = 'acc'::regclass").fetchone()
    assert row is not None
    return f"all_visible={row[0]}/{row[1]}"


def load(conn: psycopg.Connection, files: list[Path], freeze: bool) -> tuple[float, int]:
    conn.execute("DROP TABLE IF EXISTS acc")
    conn.execute("CHECKPOINT")
    started = time.monotonic()
    before = conn.execute("SELECT pg_current_wal_insert_lsn()").fetchone()[0]  # type: ignore[index]
    conn.execute("CREATE TABLE acc (aid int NOT NULL, bid int, abalance int, filler char(84))")
    if freeze:
        with conn.transaction():
            conn.execute("TRUNCATE acc")
            for f in files:
                conn.execute(f"COPY acc FROM '{f}' (FORMAT binary, FREEZE)")  # type: ignore[call-overload]
    else:
        for f in files:
            with conn.transaction():
                conn.execute(f"COPY acc FROM '{f}' (FORMAT binary)")  # type: ignore[call-overload]
    wal = conn.execute("SELECT pg_current_wal_insert_lsn() - %s::pg_lsn", (before,)).fetchone()[0]  # type: ignore[index]
    conn.execute("ANALYZE acc")  # relpages for the visibility figure; reads a sample only
    return time.monotonic() - started, int(wal)


def scenario(conn: psycopg.Connection, name: str, files: list[Path], freeze: bool, vacuum: str | None) -> None:
    seconds, wal = load(conn, files, freeze)
    steps = [f"load_s={seconds:.2f} load_wal_MB={wal / 1048576:.0f}"]
    total = 0.0
    if vacuum:
        conn.execute("CHECKPOINT")
        seconds, wal = timed(conn, vacuum)
        total += seconds
        steps.append(f"vacuum_s={seconds:.2f} vacuum_wal_MB={wal / 1048576:.0f} {visibility(conn)}")
    conn.execute("CHECKPOINT")
    seconds, wal = timed(conn, "ALTER TABLE acc ADD PRIMARY KEY (aid)")
    total += seconds
    steps.append(f"pkey_s={seconds:.2f} pkey_wal_MB={wal / 1048576:.0f}")
    conn.execute("CHECKPOINT")
    seconds, _ = timed(conn, "SELECT count(*) FROM acc WHERE abalance = 0")
    steps.append(f"first_scan_s={seconds:.2f}")
    seconds, _ = timed(conn, "SELECT count(*) FROM acc WHERE abalance = 0")
    steps.append(f"second_scan_s={seconds:.2f} {visibility(conn)}")
    conn.execute("VACUUM acc")
    seconds, wal = timed(conn, "VACUUM (FREEZE) acc")
    steps.append(f"later_vacuum_freeze_s={seconds:.2f} later_vacuum_freeze_wal_MB={wal / 1048576:.0f}")
    print(f"split-pages: run={name} " + " ".join(steps) + f" (vacuum + pkey {total:.2f} s)", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=5_000_000, help="rows of the table (pgbench_accounts' shape)")
    parser.add_argument("--rounds", type=int, default=1, help="times to run every scenario")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pgmigrate-split-pages-") as base:
        os.chmod(base, 0o777)  # noqa: S103 - the server runs as an unprivileged user and writes the parts here
        server = LocalPostgres(Path(base) / "pg")
        server.start()
        try:
            files = [Path(base) / f"part{i}.bin" for i in range(PARTS)]
            with psycopg.connect(**server.info().connect_kwargs(), autocommit=True) as conn:
                step = args.rows // PARTS
                for i, f in enumerate(files):
                    conn.execute(f"COPY (SELECT g, g / 100000, 0, '' FROM generate_series({i * step + 1}, "  # type: ignore[call-overload]
                                 f"{(i + 1) * step}) g) TO '{f}' (FORMAT binary)")
                for _ in range(args.rounds):
                    scenario(conn, "freeze", files, True, None)
                    scenario(conn, "parts", files, False, None)
                    scenario(conn, "parts_vacuum", files, False, "VACUUM acc")
                    scenario(conn, "parts_freeze", files, False, "VACUUM (FREEZE) acc")
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
