"""Index and key builds during the full load: each table's as soon as its copy is committed.

post_data would build a table's indexes and primary, unique and exclusion keys after every table is copied, while
cores sit idle; the full load starts them as soon as the table's last chunk commits, beside the other tables'
copies (foreign keys, triggers and the rest stay in post_data, after all data, as the DTS order requires). Each build
commits in one destination transaction together with its row in ``<state>.full_load_index_builds``: a killed build
leaves neither the index nor the row, a finished one both, so a retry never builds anything twice, and post_data
skips what the full load built and says so in its report.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import psycopg
from psycopg import sql

from airflow_pgmigrate.engine import catalog
from airflow_pgmigrate.engine.connection import ConnectionInfo, connect
from airflow_pgmigrate.engine.schema import TableBuild
from airflow_pgmigrate.engine.state import MigrationState

#: A byte of the source's indexes costs about this many heap bytes of copy to build on the destination (measured
#: here: pgbench_accounts_pkey builds at 14-51 ns a byte, the heap copies at 12-15 ns a byte per stream).
INDEX_COST = 2.0
#: Builds of indexes smaller than this (in the source) get no parallel maintenance workers: starting them costs more
#: than they save.
PARALLEL_MIN_BYTES = 64 * 1024 * 1024


@dataclass
class BuildResult:
    build: TableBuild
    seconds: float
    workers: int
    #: False: recorded as built by an earlier attempt, or failed (left to post_data, which reports it).
    built: bool
    error: str | None = None


class IndexBuilder:
    """Runs :class:`TableBuild` s on the destination, each with its record, in one transaction."""

    def __init__(self, destination: ConnectionInfo, state: MigrationState, preamble: str,
                 log: Callable[[str], None]) -> None:
        self.destination = destination
        self.state = state
        self.preamble = preamble
        self.log = log
        self._allowed: int | None = None

    def parallel_workers(self, conn: psycopg.Connection, idle_jobs: int, index_bytes: int) -> int:
        """Parallel maintenance workers for one build: the jobs idle now (cores nobody copies or builds with), at
        most what the destination allows (``max_parallel_workers``, ``max_worker_processes``); none for a small
        index. PostgreSQL may start fewer (it needs 32 MB of ``maintenance_work_mem`` per process)."""
        if idle_jobs <= 0 or index_bytes < PARALLEL_MIN_BYTES:
            return 0
        if self._allowed is None:
            row = conn.execute("SELECT least(current_setting('max_parallel_workers')::int, "
                               "current_setting('max_worker_processes')::int - 1)").fetchone()
            self._allowed = max(0, int(row[0])) if row else 0
        return min(idle_jobs, self._allowed)

    def build(self, table: str, build: TableBuild, idle_jobs: int, index_bytes: int) -> BuildResult:
        """Build one index or key and record it, in one transaction; skip it when an earlier attempt recorded it.
        A failure is returned, not raised: the copy stays good and post_data builds it again (and reports why not)."""
        started = time.monotonic()
        workers = 0
        try:
            with connect(self.destination) as conn:
                if catalog.server_version_num(conn) >= 140000:
                    conn.execute("SET client_connection_check_interval = '1s'")  # a killed worker's build ends soon
                conn.execute(self.preamble)
                workers = self.parallel_workers(conn, idle_jobs, index_bytes)
                with conn.transaction():
                    if self._recorded(conn, build):
                        return BuildResult(build, 0.0, 0, False)
                    conn.execute(sql.SQL("SET LOCAL max_parallel_maintenance_workers = {}").format(
                        sql.Literal(workers)))
                    conn.execute(build.statement)  # type: ignore[call-overload] # pg_dump's entry, renamed
                    seconds = time.monotonic() - started
                    conn.execute(sql.SQL(
                        "INSERT INTO {} (migration, build_id, table_name, seconds, parallel_workers) "
                        "VALUES (%s, %s, %s, %s, %s)").format(self.state.index_builds_table),
                        (self.state.migration, build.id, table, seconds, workers))
        except psycopg.Error as exc:
            message = (exc.diag.message_primary or str(exc)).strip()
            self.log(f"full_load build=\"{build.id}\" failed, left to post_data: {message}")
            return BuildResult(build, time.monotonic() - started, workers, False, message)
        self.log(f"full_load built table={table} build=\"{build.id}\" seconds={seconds:.2f} "
                 f"parallel_workers={workers}")
        return BuildResult(build, seconds, workers, True)

    def _recorded(self, conn: psycopg.Connection, build: TableBuild) -> bool:
        row = conn.execute(sql.SQL("SELECT 1 FROM {} WHERE migration = %s AND build_id = %s").format(
            self.state.index_builds_table), (self.state.migration, build.id)).fetchone()
        if row is not None:
            self.log(f"full_load build=\"{build.id}\" skipped: built by an earlier attempt")
        return row is not None


def source_index_bytes(src: psycopg.Connection, oid: int) -> int:
    """The size of a source table's indexes: what its builds on the destination will cost."""
    row = src.execute("SELECT coalesce(sum(pg_relation_size(indexrelid)), 0) FROM pg_index WHERE indrelid = %s",
                      (oid,)).fetchone()
    return int(row[0]) if row else 0


__all__ = ["INDEX_COST", "BuildResult", "IndexBuilder", "source_index_bytes"]
