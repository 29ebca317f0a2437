"""Does a second destination connection pay for applying independent tables' changes on this machine?

Builds ``--tables`` tables of ``--rows`` rows on one local server, then applies the same kind of batch (each table gets
``--changes`` single-row updates, collapsed and written set-based by the engine's Applier, then committed) over one
connection, and split by table over two connections written by two threads, each committing its own transaction.
Rounds alternate between the two (``--rounds`` each), so load from other work hits both alike. Prints wall seconds and
the CPU seconds of this process and of the server per round, and the ratio of the medians. Run on demand::

    .venv/bin/python bench/parallel_apply_probe.py --tables 50 --changes 60 --rounds 10

What it leaves out on purpose: the recorded position. With two connections, a batch is durable only when both commit,
which needs two-phase commit (prepared transactions) or a position per connection; the probe measures whether the
writes alone would be faster, which is the precondition for building either.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

import psycopg
from common import install_signal_handlers, server_cpu_seconds, workdir_base

from airflow_pgmigrate.engine.incremental.apply import Applier, Batch, TableTarget
from airflow_pgmigrate.engine.incremental.pgoutput import Change
from airflow_pgmigrate.engine.names import QualifiedName
from airflow_pgmigrate.testing.local_postgres import LocalPostgres


def targets(count: int) -> list[TableTarget]:
    out = []
    for i in range(1, count + 1):
        name = QualifiedName("public", f"probe_t{i}")
        out.append(TableTarget(source=name, target=name, columns=[(0, "id"), (1, "n"), (2, "body")], key=[0],
                               key_names=["id"], upsert=False, row_filter=None))
    return out


def batch_for(tables: list[TableTarget], changes: int, rows: int, round_no: int) -> Batch:
    batch = Batch()
    for rel, t in enumerate(tables):
        for j in range(changes):
            key = 1 + (round_no * 7919 + j * 104729 + rel) % rows
            batch.add(rel, t, Change("U", rel, [str(key).encode(), str(round_no).encode(), b"body"], None), 40)
    return batch


def apply_on(conn: psycopg.Connection, applier: Applier, batch: Batch) -> None:
    applier.apply(batch)
    conn.commit()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tables", type=int, default=50)
    parser.add_argument("--rows", type=int, default=2000, help="rows per table (default 2000)")
    parser.add_argument("--changes", type=int, default=60, help="updates per table and batch (default 60)")
    parser.add_argument("--rounds", type=int, default=10, help="batches applied each way (default 10)")
    args = parser.parse_args()
    install_signal_handlers()
    base, keep = workdir_base(None, "pgmigrate-parprobe-")
    server = LocalPostgres(Path(base) / "destination")
    try:
        server.start()
        server.execute("".join(
            f"CREATE TABLE public.probe_t{i} (id bigint PRIMARY KEY, n bigint, body text);"
            f"INSERT INTO public.probe_t{i} SELECT g, 0, md5(g::text) FROM generate_series(1, {args.rows}) g;"
            for i in range(1, args.tables + 1)) + "ANALYZE")
        tables = targets(args.tables)
        halves = [tables[0::2], tables[1::2]]
        conns = [psycopg.connect(**server.info("postgres").connect_kwargs(), autocommit=False) for _ in range(2)]
        for conn in conns:
            conn.execute("SET session_replication_role = replica")
            conn.commit()
        appliers = [Applier(conn, count_rows=True) for conn in conns]
        figures: dict[str, list[tuple[float, float, float]]] = {"one connection": [], "two connections": []}
        for round_no in range(args.rounds * 2 + 2):
            two = round_no % 2 == 1
            wall0, cpu0, server0 = time.monotonic(), time.process_time(), server_cpu_seconds(server)
            if two:
                batches = [batch_for(half, args.changes, args.rows, round_no) for half in halves]
                threads = [threading.Thread(target=apply_on, args=(conns[i], appliers[i], batches[i]))
                           for i in range(2)]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
            else:
                apply_on(conns[0], appliers[0], batch_for(tables, args.changes, args.rows, round_no))
            if round_no >= 2:  # the first round of each way creates the staging tables
                figures["two connections" if two else "one connection"].append(
                    (time.monotonic() - wall0, time.process_time() - cpu0, server_cpu_seconds(server) - server0))
        medians = {}
        for way, rows in figures.items():
            medians[way] = statistics.median(r[0] for r in rows)
            print(f"probe: {way}: median wall {medians[way] * 1000:.1f} ms per batch of {args.tables} tables x "
                  f"{args.changes} changes; median CPU ms, ours {statistics.median(r[1] for r in rows) * 1000:.1f}, "
                  f"server {statistics.median(r[2] for r in rows) * 1000:.1f}", flush=True)
        print(f"probe: two connections vs one: {medians['one connection'] / medians['two connections']:.2f}x "
              f"(higher = two faster)", flush=True)
        for conn in conns:
            conn.close()
    finally:
        server.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
