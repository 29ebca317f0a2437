"""Full load: a consistent, parallel, resumable, throttled copy of the selected tables.

Consistency. With incremental migration the load creates the publication, then the logical replication slot,
exporting the slot's snapshot; every chunk is copied inside that snapshot (``SET TRANSACTION SNAPSHOT``). The copy
plus the changes the slot returns after its consistent point equal the source: no gap, no duplicate. The exporting
connection stays open and idle until the last chunk committed.

Speed. ``COPY (SELECT ...) TO STDOUT (FORMAT binary)`` streams into ``COPY ... FROM STDIN (FORMAT binary)``; bytes
pass straight through (text COPY only where a type has no binary form or the two sides' types differ). Tables are
copied largest first by ``full_load.parallel_jobs`` workers; a table larger than ``split_tables_larger_than`` is split
into ctid ranges (TID range scans, PostgreSQL 14+) or integer key ranges.

Resumability. Each chunk commits in the destination together with its row in ``<state>.full_load_chunks``. A retry
skips committed chunks. When the original snapshot is gone (the worker died), every table with an unfinished chunk is
emptied and copied again whole under a new snapshot, taken from a temporary slot at LSN B; the table's start LSN
becomes B, so incremental sync applies its changes only after B (the slot still holds them from the original
consistent point A for the tables that finished). See docs/full_load.md.

Index builds. With schema migration, the same workers build each table's indexes and keys as soon as its last chunk
commits, beside the other tables' copies (``engine.index_builds``); each build is recorded in its own transaction, so a
retry builds nothing twice and post_data skips them. The order of the work counts copy plus index build time.
"""

from __future__ import annotations

import math
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from airflow_pgmigrate.engine import catalog
from airflow_pgmigrate.engine.config_entries import unmatched_entries
from airflow_pgmigrate.engine.connection import ConnectionInfo, connect
from airflow_pgmigrate.engine.definition_only import tables_without_rows
from airflow_pgmigrate.engine.index_builds import INDEX_COST, BuildResult, IndexBuilder, source_index_bytes
from airflow_pgmigrate.engine.names import NameMapper, QualifiedName, parse_qualified_name
from airflow_pgmigrate.engine.nonstreamed import LargeObjectRoles, sync_large_objects_between, sync_sequences
from airflow_pgmigrate.engine.pgdump import (
    available_clients,
    client_env,
    client_failure,
    pick_client,
    psql_command,
)
from airflow_pgmigrate.engine.publication import ensure_publication
from airflow_pgmigrate.engine.schema import TableBuild, read_source_schema, table_builds
from airflow_pgmigrate.engine.slots import drop_leftover_slot, watch_slot_creation
from airflow_pgmigrate.engine.sqlfilter import safe_row_filter
from airflow_pgmigrate.engine.state import MigrationState
from airflow_pgmigrate.engine.throttle import BinaryRowCounter, Throttle, count_text_rows
from airflow_pgmigrate.exceptions import PgMigrateError

if TYPE_CHECKING:
    from airflow_pgmigrate.config import MigrationConfig

MAX_PARTS = 64
#: A TOAST byte costs about four heap bytes to copy: the destination compresses every value again (measured here:
#: 21 MB/s for a table of 20 KB values against 89 MB/s for pgbench_accounts, one stream each).
TOAST_COST = 4.0
#: Incompressible TOAST detection (``_incompressible_columns``): tables with less TOAST are not sampled, and a sample
#: needs this many out-of-line values.
INCOMPRESSIBLE_MIN_TOAST = 64 * 1024 * 1024
INCOMPRESSIBLE_MIN_VALUES = 20
INCOMPRESSIBLE_SAMPLE_PAGES = 64  # heap pages read (at random) for the sample


class FullLoadError(PgMigrateError):
    """The full load failed; committed chunks stay and a retry continues from them."""


def source_read_failure(detail: str) -> FullLoadError:
    """A copy that could not read the source; a snapshot that is gone is said in words (the source restarted, or the
    session that exported it ended), with what a retry does."""
    message = f"reading from the source failed: {detail}"
    if "invalid snapshot identifier" in detail:
        message += (" (the snapshot the load copies in is gone: the source restarted, or the connection that exported "
                    "it was lost. Run the full load again: it resumes, copying the unfinished tables again in a new "
                    "snapshot)")
    return FullLoadError(message)


@dataclass
class Chunk:
    id: str
    table: str
    part: int
    parts: int
    #: Extra condition selecting this part of the table (None: the whole table).
    where: str | None = None


@dataclass
class TablePlan:
    source: str
    target: str
    columns: list[str]
    target_columns: list[str]
    row_filter: str | None
    size_bytes: int
    estimated_rows: int
    binary: bool
    #: Copy through a staging table and skip rows whose key already exists (conflicting_tables: ignore).
    staging: bool
    key_columns: list[str]
    chunks: list[Chunk] = field(default_factory=list)
    #: Estimated copy cost (heap bytes plus weighted TOAST bytes); 0 in plans recorded before it existed.
    cost: float = 0.0
    #: Source column -> its type at the full load (``format_type``), so incremental sync detects type changes.
    column_types: dict[str, str] = field(default_factory=dict)
    #: Destination columns whose TOASTed values the source could not compress (see ``_incompressible_columns``).
    incompressible: list[str] = field(default_factory=list)
    #: The source's index bytes: what building the table's indexes on the destination costs (0 when the load does
    #: not build them, and in older plans).
    index_bytes: int = 0

    @property
    def index_cost(self) -> float:
        """Estimated index build cost, in the unit of ``cost`` (heap bytes copied)."""
        return INDEX_COST * self.index_bytes

    @property
    def source_name(self) -> QualifiedName:
        return parse_qualified_name(self.source)

    @property
    def target_name(self) -> QualifiedName:
        return parse_qualified_name(self.target)


@dataclass
class ChunkResult:
    chunk: Chunk
    rows: int
    bytes: int
    seconds: float
    skipped_rows: int = 0


def _ident(name: QualifiedName) -> sql.Identifier:
    return sql.Identifier(name.schema, name.name)


# -- planning ----------------------------------------------------------------------------------------------------


def plan_tables(config: MigrationConfig, src: psycopg.Connection, dst: psycopg.Connection) -> list[TablePlan]:
    """The tables to copy (partitions rather than their partitioned parents), costliest first, with their chunks."""
    schema = read_source_schema(src, config)
    if not schema.selected:
        raise FullLoadError(nothing_selected(config, src.info.dbname))
    unmatched = unmatched_entries(config, schema.tables, schema.selected, schema.whole_schemas)
    if unmatched:
        raise FullLoadError("the migration config has entries that match no table it migrates (they would do "
                            f"nothing): {'; '.join(unmatched)}. Select the tables they name, or remove the entries")
    mapper = NameMapper(config.mapping)
    column_selection = {parse_qualified_name(k): v for k, v in config.objects.columns.items()}
    version = catalog.server_version_num(src)
    without_rows = tables_without_rows(src, config.objects.exclude_data)
    plans: list[TablePlan] = []
    tables: list[catalog.TableInfo] = []
    ancestors = catalog.partition_ancestors(src)
    for name in sorted(schema.selected):
        table = schema.tables[name]
        if table.relkind != "r" or name in without_rows:
            continue
        generated = {r[0] for r in src.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped "
            "AND attgenerated <> ''", (table.oid,))}
        wanted = column_selection.get(name)
        columns = [c for c in table.column_names if c not in generated and (wanted is None or c in wanted)]
        target = mapper.table(name)
        target_columns = [mapper.column(name, c) for c in columns]
        binary = _binary_ok(src, dst, table.oid, columns, target, target_columns)
        staging = False
        if config.conflicting_tables == "ignore":
            row = dst.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(_ident(target))).fetchone()
            staging = bool(row and row[0])
        # A partitioned table's filter applies to its partitions; VOLATILE calls are refused before any runs.
        row_filter = safe_row_filter(config, name, src, "source", ancestors.get(name, ()))
        plan = TablePlan(str(name), str(target), columns, target_columns, row_filter,
                         table.size_bytes, table.estimated_rows, binary, staging,
                         [mapper.column(name, c) for c in (table.key_columns or [])],
                         column_types={c.name: c.type for c in table.columns})
        heap_bytes, toast_bytes = _relation_sizes(src, table.oid)
        incompressible = _incompressible_columns(src, table, columns, version, heap_bytes, toast_bytes)
        plan.incompressible = [target_columns[columns.index(c)] for c in incompressible]
        # A TOAST byte costs about TOAST_COST heap bytes, unless its compression attempts are skipped.
        plan.cost = heap_bytes + (1.0 if incompressible else TOAST_COST) * toast_bytes
        if config.wants("schema") and config.full_load.build_indexes:  # the load builds them: part of its cost
            plan.index_bytes = source_index_bytes(src, table.oid)
        plans.append(plan)
        tables.append(table)
    _split(config, src, plans, tables, version)
    plans.sort(key=lambda p: p.cost + p.index_cost, reverse=True)
    return plans


def _split(config: MigrationConfig, src: psycopg.Connection, plans: list[TablePlan], tables: list[catalog.TableInfo],
           version: int) -> None:
    """Give each plan its chunks. ``auto`` keeps every table whole: parts of one table written side by side compete
    for its pages and lose ``COPY ... FREEZE``, which cost more than they gain (measured, docs/full_load.md). A size
    splits every table larger than it."""
    split_bytes = config.full_load.split_bytes
    for plan, table in zip(plans, tables, strict=True):
        parts = 1
        if split_bytes is not None and plan.size_bytes > split_bytes:
            parts = math.ceil(plan.size_bytes / split_bytes)
        plan.chunks = _chunks(src, table, min(MAX_PARTS, parts), version)


def nothing_selected(config: MigrationConfig, dbname: str) -> str:
    """The error for a selection that matches no table: which entries were read, and how to fix them."""
    objects = config.objects
    entries = [f"objects.{key}: [{', '.join(values)}]" for key, values in (
        ("schemas", objects.schemas), ("tables", objects.tables), ("include", objects.include),
        ("exclude", objects.exclude)) if values]
    return (f"nothing selected: {'; '.join(entries) or 'the whole database'} matches no table of the source "
            f"database {dbname}. Correct the names in objects.schemas, objects.tables or objects.include (they are "
            "exact and case-sensitive; the precheck item selected_objects suggests near misses), or narrow "
            "objects.exclude (exclude always wins)")


def _relation_sizes(src: psycopg.Connection, oid: int) -> tuple[int, int]:
    """A table's heap bytes and TOAST bytes (its TOAST table with its index)."""
    row = src.execute("SELECT pg_relation_size(c.oid), coalesce(pg_total_relation_size(nullif(c.reltoastrelid, 0)), 0) "
                      "FROM pg_class c WHERE c.oid = %s", (oid,)).fetchone()
    return (int(row[0]), int(row[1])) if row else (0, 0)


def _incompressible_columns(src: psycopg.Connection, table: catalog.TableInfo, columns: list[str],
                            version: int, heap_bytes: int, toast_bytes: int) -> list[str]:
    """Columns whose out-of-line values the source stored uncompressed, in a sample of the table.

    Such values are incompressible (random, encrypted, already compressed data): the source's compression attempt
    failed on each, and the destination's, on the same bytes, would fail again, at a high CPU cost (measured here:
    a 420 MB table of such values copies in 8.8 s with the attempts, 2.0 s without, to the same size). The full load
    writes these columns with ``STORAGE EXTERNAL`` (no attempt) and restores the column's storage afterwards. Only
    columns of a table with at least ``INCOMPRESSIBLE_MIN_TOAST`` of TOAST are sampled, and only a sample in which
    every one of at least ``INCOMPRESSIBLE_MIN_VALUES`` out-of-line values is uncompressed counts.
    """
    if version < 140000 or toast_bytes < INCOMPRESSIBLE_MIN_TOAST:  # pg_column_compression(): PostgreSQL 14+
        return []
    candidates = [r[0] for r in src.execute(
        "SELECT a.attname FROM pg_attribute a WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped "
        "AND a.attstorage = 'x' AND a.attname = ANY(%s)", (table.oid, columns))]
    percent = min(100.0, 100.0 * INCOMPRESSIBLE_SAMPLE_PAGES * 8192 / max(1, heap_bytes))
    found = []
    for column in candidates:
        col = sql.Identifier(column)
        sample = src.execute(sql.SQL(
            "SELECT count(*) FILTER (WHERE pg_column_compression(v) IS NULL), count(*) FROM ("
            "SELECT {c} AS v FROM {t} TABLESAMPLE SYSTEM ({p}) WHERE pg_column_size({c}) > 2048 LIMIT 1000) s"
        ).format(c=col, t=_ident(table.name), p=sql.Literal(percent))).fetchone()
        if sample and sample[1] >= INCOMPRESSIBLE_MIN_VALUES and sample[0] == sample[1]:
            found.append(column)
    return found


def _binary_ok(src: psycopg.Connection, dst: psycopg.Connection, oid: int, columns: list[str],
               target: QualifiedName, target_columns: list[str]) -> bool:
    """Binary COPY needs binary send/receive for every type and identical types on both sides."""
    rows = src.execute(
        """
        SELECT a.attname, format_type(a.atttypid, a.atttypmod),
               (SELECT bool_and(b.typsend <> 0 AND b.typreceive <> 0)
                  FROM pg_type b WHERE b.oid IN (t.oid, t.typelem, t.typbasetype))
          FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
         WHERE a.attrelid = %s AND a.attname = ANY(%s)
        """,
        (oid, columns),
    ).fetchall()
    source_types = {name: typ for name, typ, _ in rows}
    if not all(ok for _, _, ok in rows):
        return False
    target_rows = dst.execute(
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
        "WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped",
        (_ident(target).as_string(dst),),
    ).fetchall()
    target_types: dict[str, str] = dict(target_rows)
    return all(target_types.get(t) == source_types.get(s) for s, t in zip(columns, target_columns, strict=True))


def _chunks(src: psycopg.Connection, table: catalog.TableInfo, parts: int, version: int) -> list[Chunk]:
    """``parts`` ranges of a table (ctid ranges on PostgreSQL 14+, else ranges of an integer key), or one chunk."""
    key = str(table.name)
    if parts > 1 and version >= 140000:
        pages = max(1, table.size_bytes // 8192)
        # relation size includes indexes and TOAST in size_bytes; ranges only need to cover the heap's pages.
        heap = src.execute("SELECT pg_relation_size(%s) / current_setting('block_size')::int", (table.oid,))
        row = heap.fetchone()
        pages = int(row[0]) if row and row[0] else pages
        step = max(1, math.ceil(pages / parts))
        bounds = list(range(0, pages, step))
        chunks = []
        for i, start in enumerate(bounds):
            lower = f"ctid >= '({start},0)'::tid"
            condition = lower if i == len(bounds) - 1 else f"{lower} AND ctid < '({start + step},0)'::tid"
            chunks.append(Chunk(f"{key}#{i + 1}", key, i + 1, len(bounds), condition if i else
                                (f"ctid < '({step},0)'::tid" if len(bounds) > 1 else None)))
        return chunks
    if parts > 1 and table.key_columns and len(table.key_columns) == 1:
        column = table.key_columns[0]
        kind = next((c.type for c in table.columns if c.name == column), "")
        if kind in ("integer", "bigint", "smallint"):
            row = src.execute(sql.SQL("SELECT min({c}), max({c}) FROM {t}").format(
                c=sql.Identifier(column), t=_ident(table.name))).fetchone()
            if row and row[0] is not None:
                low, high = int(row[0]), int(row[1])
                step = max(1, math.ceil((high - low + 1) / parts))
                ident = sql.Identifier(column).as_string(None)
                chunks = []
                starts = list(range(low, high + 1, step))
                for i, start in enumerate(starts):
                    conds = []
                    if i:
                        conds.append(f"{ident} >= {start}")
                    if i < len(starts) - 1:
                        conds.append(f"{ident} < {start + step}")
                    chunks.append(Chunk(f"{key}#{i + 1}", key, i + 1, len(starts), " AND ".join(conds) or None))
                return chunks
    return [Chunk(f"{key}#1", key, 1, 1, None)]


# -- the run -----------------------------------------------------------------------------------------------------


@dataclass
class SnapshotSource:
    """An exported snapshot and the connection that keeps it alive."""

    name: str
    lsn: str | None
    conn: psycopg.Connection
    temporary_slot: str | None = None

    def close(self) -> None:
        self.conn.close()


@dataclass
class LoadStart:
    """What an attempt starts from: the plan, what an earlier attempt recorded, and whether it starts afresh."""

    plans: list[TablePlan]
    previous: dict[str, Any]
    done: dict[str, dict[str, Any]]
    fresh: bool
    incremental: bool
    version: int
    definition_only: list[str]
    #: The recorded report, when an earlier attempt completed the load.
    completed: dict[str, Any] | None = None


class FullLoad:
    """One full load of one migration. ``run()`` returns the report (a JSON-able dict)."""

    def __init__(self, config: MigrationConfig, source: ConnectionInfo, destination: ConnectionInfo, *,
                 log: Callable[[str], None] = lambda message: None,
                 metric: Callable[[str, float, dict[str, str]], None] = lambda name, value, tags: None,
                 jobs: int | None = None) -> None:
        self.config = config
        self.source = source
        self.destination = destination
        self.log = log
        self.metric = metric
        self.jobs = jobs or config.full_load.parallel_jobs
        self.state = MigrationState(destination, config.state_schema, config.name)
        caps = config.throttling.full_load
        self.throttle = Throttle(mb_per_second=caps.mb_per_second, rows_per_second=caps.rows_per_second,
                                 queries_per_second=caps.queries_per_second)
        self._lock = threading.Lock()
        self._copied_bytes = 0
        self._planned_bytes = 0
        self._started = 0.0
        self._stop = threading.Event()
        self._active: dict[str, int] = {}  # destination table -> chunks being written now
        self._ready = threading.Condition(self._lock)  # work queued, or work finished
        self._busy = 0  # chunks and builds in progress
        self._builds: dict[str, list[TableBuild]] = {}  # source table -> builds waiting for its copy
        self._builder: IndexBuilder | None = None
        self._built: list[BuildResult] = []
        self._psql = _find_psql(source)

    # -- state ---------------------------------------------------------------------------------------------------

    def _done_chunks(self, conn: psycopg.Connection) -> dict[str, dict[str, Any]]:
        rows = conn.execute(sql.SQL(
            "SELECT chunk_id, table_name, rows, bytes, seconds, skipped_rows FROM {} WHERE migration = %s"
        ).format(self.state.chunks_table), (self.config.name,)).fetchall()
        return {r[0]: {"table": r[1], "rows": r[2], "bytes": r[3], "seconds": r[4], "skipped_rows": r[5]}
                for r in rows}

    # -- slot, publication, snapshot -----------------------------------------------------------------------------

    def _slot_exists(self, conn: psycopg.Connection, slot: str) -> bool:
        return conn.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (slot,)).fetchone() is not None

    def _ensure_publication(self, conn: psycopg.Connection, plans: list[TablePlan]) -> None:
        ensure_publication(conn, self.config, [p.source_name for p in plans], self.log)

    def _create_slot(self, slot: str, *, temporary: bool, version: int) -> SnapshotSource:
        """Create a logical slot on a replication connection, exporting its snapshot; the connection stays open."""
        if temporary:
            with connect(self.source) as src:
                drop_leftover_slot(src, slot, self.log)  # a killed attempt's session may still be creating it
        conn = connect(self.source, replication=True)
        watchdog = watch_slot_creation(self.source, conn.pgconn.backend_pid, slot, self.log)
        try:
            if version >= 150000:
                command = sql.SQL("CREATE_REPLICATION_SLOT {} {}LOGICAL pgoutput (SNAPSHOT 'export')").format(
                    sql.Identifier(slot), sql.SQL("TEMPORARY " if temporary else ""))
            else:
                command = sql.SQL("CREATE_REPLICATION_SLOT {} {}LOGICAL pgoutput EXPORT_SNAPSHOT").format(
                    sql.Identifier(slot), sql.SQL("TEMPORARY " if temporary else ""))
            row = conn.execute(command).fetchone()
        except psycopg.Error:
            conn.close()
            raise
        finally:
            watchdog.set()
        assert row is not None
        self.log(f"full_load slot={slot} temporary={temporary} consistent_lsn={row[1]} snapshot={row[2]}")
        return SnapshotSource(str(row[2]), str(row[1]), conn, slot if temporary else None)

    def _plain_snapshot(self) -> SnapshotSource:
        """A snapshot without a slot (full load without incremental sync)."""
        conn = connect(self.source, autocommit=False)
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        row = conn.execute("SELECT pg_export_snapshot(), pg_current_wal_insert_lsn()::text").fetchone()
        assert row is not None
        return SnapshotSource(str(row[0]), str(row[1]), conn)

    # -- copying -------------------------------------------------------------------------------------------------

    def _copy_chunk(self, plan: TablePlan, chunk: Chunk, snapshot: str, src: psycopg.Connection,
                    dst: psycopg.Connection) -> ChunkResult:
        if not plan.columns:
            return self._copy_rows_without_columns(plan, chunk, snapshot, src, dst)
        started = time.monotonic()
        fmt = sql.SQL("(FORMAT binary)" if plan.binary else "(FORMAT text)")
        conditions = [c for c in (plan.row_filter, chunk.where) if c]
        where = _where_clause(conditions)
        select = sql.SQL("SELECT {cols} FROM ONLY {table}{where}").format(
            cols=sql.SQL(", ").join(map(sql.Identifier, plan.columns)), table=_ident(plan.source_name), where=where)
        if conditions:
            copy_out = sql.SQL("COPY ({}) TO STDOUT {}").format(select, fmt)
        else:  # a whole table: COPY reads the heap directly, without the executor's per-row projection
            copy_out = sql.SQL("COPY {} ({}) TO STDOUT {}").format(
                _ident(plan.source_name), sql.SQL(", ").join(map(sql.Identifier, plan.columns)), fmt)
        target = _ident(plan.target_name)
        target_cols = sql.SQL(", ").join(map(sql.Identifier, plan.target_columns))
        counter = BinaryRowCounter() if plan.binary else None
        self.throttle.before_query()
        if self._psql is None:
            src.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)))
        with dst.transaction():
            if plan.staging:
                dst.execute(sql.SQL("CREATE TEMP TABLE pgmigrate_stage ON COMMIT DROP AS SELECT {} FROM {} "
                                    "WITH NO DATA").format(target_cols, target))
                into = sql.SQL("COPY pgmigrate_stage FROM STDIN {}").format(fmt)
            else:
                if chunk.parts == 1 and self._empty_for_freeze(dst, target):
                    fmt = sql.SQL("(FORMAT binary, FREEZE)" if plan.binary else "(FORMAT text, FREEZE)")
                into = sql.SQL("COPY {} ({}) FROM STDIN {}").format(target, target_cols, fmt)
            if self._psql is not None:
                copied, counted, copy_rows = self._stream_psql(snapshot, dst, copy_out, into, counter)
            else:
                copied, counted, copy_rows = self._stream(src, dst, copy_out, into, counter)
            skipped = 0
            if plan.staging:
                total = dst.execute("SELECT count(*) FROM pgmigrate_stage").fetchone()[0]  # type: ignore[index]
                key_match = sql.SQL(" AND ").join(
                    sql.SQL("t.{k} IS NOT DISTINCT FROM s.{k}").format(k=sql.Identifier(k)) for k in plan.key_columns)
                if plan.key_columns:
                    cur = dst.execute(sql.SQL(
                        "INSERT INTO {t} ({c}) SELECT {c} FROM pgmigrate_stage s WHERE NOT EXISTS "
                        "(SELECT 1 FROM {t} t WHERE {m})").format(t=target, c=target_cols, m=key_match))
                else:
                    cur = dst.execute(sql.SQL("INSERT INTO {t} ({c}) SELECT {c} FROM pgmigrate_stage s").format(
                        t=target, c=target_cols))
                rows = cur.rowcount
                skipped = int(total) - rows
            else:
                rows = copy_rows
            seconds = time.monotonic() - started
            self._record_chunk(dst, chunk, rows, copied, seconds, skipped)
        if self._psql is None:
            src.commit()
        if counter is not None and self.throttle.counts_rows:
            self.throttle.on_rows(max(0, rows - counted))
        return ChunkResult(chunk, rows, copied, seconds, skipped)

    def _record_chunk(self, dst: psycopg.Connection, chunk: Chunk, rows: int, copied: int, seconds: float,
                      skipped: int) -> None:
        """The chunk's row in the state table, in the transaction that wrote its rows."""
        dst.execute(sql.SQL(
            "INSERT INTO {} (migration, chunk_id, table_name, rows, bytes, seconds, skipped_rows) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s)").format(self.state.chunks_table),
            (self.config.name, chunk.id, chunk.table, rows, copied, seconds, skipped))

    def _copy_rows_without_columns(self, plan: TablePlan, chunk: Chunk, snapshot: str, src: psycopg.Connection,
                                   dst: psycopg.Connection) -> ChunkResult:
        """Copy the rows of a table with no column to copy (``CREATE TABLE t ()``, or only generated columns).

        Such rows exist and count (``INSERT INTO t DEFAULT VALUES``), but COPY cannot name zero columns: the rows
        are counted in the snapshot and the destination gets as many rows of defaults (generated columns computed
        there). With ``conflicting_tables: ignore`` nothing can clash without a key, so every row is added.
        """
        started = time.monotonic()
        conditions = [c for c in (plan.row_filter, chunk.where) if c]
        self.throttle.before_query()
        src.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)))
        row = src.execute(sql.SQL("SELECT count(*) FROM ONLY {}{}").format(
            _ident(plan.source_name), _where_clause(conditions))).fetchone()
        src.commit()
        count = int(row[0]) if row else 0
        with dst.transaction():
            rows = dst.execute(sql.SQL("INSERT INTO {} SELECT FROM generate_series(1, %s)").format(
                _ident(plan.target_name)), (count,)).rowcount
            seconds = time.monotonic() - started
            self._record_chunk(dst, chunk, rows, 0, seconds, 0)
        self.throttle.on_rows(rows)
        return ChunkResult(chunk, rows, 0, seconds)

    @staticmethod
    def _empty_for_freeze(dst: psycopg.Connection, target: sql.Composable) -> bool:
        """Empty a whole-table chunk's target in the copy's own transaction, so the rows can be written frozen.

        ``COPY ... FREEZE`` needs the table truncated in the same transaction: the rows are then written frozen and
        all-visible, which spares the index build and the first reads of the destination from setting hint bits on
        every page (and a later anti-wraparound vacuum from rewriting them). Only an empty target is truncated: a
        chunk not recorded as done left no rows (its transaction rolled back), so rows found there are not ours and
        stay. Not possible (rows there, a partitioned target, a foreign key pointing at it, no TRUNCATE privilege):
        the plain copy, which is as correct.
        """
        dst.execute("SAVEPOINT pgm_freeze")
        try:
            # ONLY, and never a table with inheritance children: their rows belong to other chunks.
            kind = dst.execute(sql.SQL(
                "SELECT relkind, NOT EXISTS (SELECT 1 FROM ONLY {t}), EXISTS (SELECT 1 FROM pg_inherits "
                "WHERE inhparent = c.oid) FROM pg_class c WHERE oid = {n}::regclass").format(
                    t=target, n=sql.Literal(target.as_string(dst)))).fetchone()
            if not kind or kind[0] != "r" or not kind[1] or kind[2]:
                dst.execute("RELEASE SAVEPOINT pgm_freeze")
                return False
            dst.execute(sql.SQL("TRUNCATE ONLY {}").format(target))
        except psycopg.Error:
            dst.execute("ROLLBACK TO SAVEPOINT pgm_freeze")
            dst.execute("RELEASE SAVEPOINT pgm_freeze")
            return False
        dst.execute("RELEASE SAVEPOINT pgm_freeze")
        return True

    def _stream(self, src: psycopg.Connection, dst: psycopg.Connection, copy_out: sql.Composable,
                into: sql.Composable, counter: BinaryRowCounter | None) -> tuple[int, int, int]:
        """Pass COPY data from source to destination through libpq directly, in 256 kB writes.

        Returns (bytes, rows counted for throttling, rows the destination reported).
        """
        from psycopg import errors, pq

        spq, dpq = src.pgconn, dst.pgconn
        self._start_copy(src, copy_out, pq.ExecStatus.COPY_OUT, "COPY TO")
        try:
            self._start_copy_in(dst, into)
        except BaseException:
            self._cancel(spq)
            raise
        copied = counted = 0
        buffer = bytearray()
        throttle = self.throttle
        try:
            while True:
                size, data = spq.get_copy_data(0)
                if size == -1:
                    break
                if size == -2:
                    raise source_read_failure(str(spq.get_error_message()))
                buffer += data
                if len(buffer) >= 262144:
                    counted += self._flush(dpq, buffer, counter, throttle)
                    copied += len(buffer)
                    buffer = bytearray()
                    if self._stop.is_set():
                        raise FullLoadError("stopped: another chunk failed")
            if buffer:
                counted += self._flush(dpq, buffer, counter, throttle)
                copied += len(buffer)
        except BaseException:
            dpq.put_copy_end(b"copy aborted")
            self._drain(dpq)
            self._cancel(spq)
            raise
        end = self._drain(spq)
        if end is not None and end.status != pq.ExecStatus.COMMAND_OK:
            dpq.put_copy_end(b"source failed")
            self._drain(dpq)
            raise errors.error_from_result(end, encoding="utf-8")
        return copied, counted, self._finish_copy_in(dpq)

    def _start_copy_in(self, dst: psycopg.Connection, into: sql.Composable) -> None:
        """Send ``COPY ... FROM STDIN`` on the destination and check that it started."""
        from psycopg import pq

        self._start_copy(dst, into, pq.ExecStatus.COPY_IN, "COPY FROM")

    def _start_copy(self, conn: psycopg.Connection, statement: sql.Composable, expected: Any, what: str) -> None:
        """Send a COPY statement and check that the server entered the ``expected`` copy state."""
        from psycopg import errors

        pgconn = conn.pgconn
        pgconn.send_query(statement.as_bytes(conn))
        result = _next_result(pgconn)
        if result is None or result.status != expected:
            self._drain(pgconn)
            raise errors.error_from_result(result, encoding="utf-8") if result is not None else FullLoadError(
                f"{what} did not start")

    def _finish_copy_in(self, dpq: Any) -> int:
        """End the destination's COPY; return the rows it reports."""
        from psycopg import errors, pq

        dpq.put_copy_end()
        done = self._drain(dpq)
        if done is None or done.status != pq.ExecStatus.COMMAND_OK:
            raise errors.error_from_result(done, encoding="utf-8") if done is not None else FullLoadError(
                "COPY FROM did not finish")
        return int(done.command_tuples or 0)

    def _stream_psql(self, snapshot: str, dst: psycopg.Connection, copy_out: sql.Composable, into: sql.Composable,
                     counter: BinaryRowCounter | None) -> tuple[int, int, int]:
        """Read the source through psql (rows are handled in C there), write the destination through libpq.

        psql imports the snapshot in its own transaction; its output is the COPY data alone (``-q`` prints no
        command tags). Python only moves 256 kB blocks.
        """

        info = self.source
        assert self._psql is not None
        command = psql_command(self._psql, ["BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
                                            f"SET TRANSACTION SNAPSHOT {sql.Literal(snapshot).as_string(None)}",
                                            copy_out.as_string(None), "COMMIT"])
        dpq = dst.pgconn
        self._start_copy_in(dst, into)
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=client_env(info),
                                bufsize=0)
        assert proc.stdout is not None and proc.stderr is not None
        try:  # a 1 MB pipe: fewer, larger reads (Linux only; the default 64 kB works too)
            import fcntl

            fcntl.fcntl(proc.stdout.fileno(), 1031, 1024 * 1024)  # F_SETPIPE_SZ
        except (ImportError, OSError):
            pass
        copied = counted = 0
        try:
            while True:
                block = proc.stdout.read(262144)
                if not block:
                    break
                counted += self._flush(dpq, block, counter, self.throttle)
                copied += len(block)
                if self._stop.is_set():
                    raise FullLoadError("stopped: another chunk failed")
            error = proc.stderr.read().decode(errors="replace").strip()
            if proc.wait() != 0:
                raise source_read_failure(client_failure('psql', info, error))
        except BaseException:
            proc.kill()
            proc.wait()
            dpq.put_copy_end(b"copy aborted")
            self._drain(dpq)
            raise
        return copied, counted, self._finish_copy_in(dpq)

    def _flush(self, dpq: Any, buffer: bytes | bytearray, counter: BinaryRowCounter | None,
               throttle: Throttle) -> int:
        rows = 0
        throttle.on_bytes(len(buffer))
        if throttle.counts_rows:
            rows = counter.feed(buffer) if counter is not None else count_text_rows(buffer)
            throttle.on_rows(rows)
        _put_copy_data(dpq, buffer)
        self._copied_bytes += len(buffer)  # progress only: an approximate count is enough
        return rows

    @staticmethod
    def _drain(conn: Any) -> Any:
        """Read results until none is left; return the last (with its status).

        Waits in ``select`` (which lets the other copy threads run) rather than in libpq's blocking
        ``PQgetResult``: a worker waiting there for a lock would otherwise stall every worker of the process.
        """
        last = None
        while (result := _next_result(conn)) is not None:
            last = result
        return last

    @staticmethod
    def _cancel(conn: Any) -> None:
        try:
            conn.get_cancel().cancel()
        except Exception:  # noqa: BLE001 - cancelling is best effort; draining follows
            pass
        while True:
            size, _ = conn.get_copy_data(0)
            if size < 0:
                break
        while conn.get_result() is not None:
            pass

    def _worker(self, queue: list[Work], snapshot: str, on_done: ChunkDone) -> None:
        """Take work until none is left nor can come: chunks, and the index builds of tables whose copy committed."""
        src = connect(self.source, autocommit=False)
        src.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        src.read_only = True
        dst = connect(self.destination, autocommit=True)
        self._defer_foreign_keys(dst)
        try:
            while (item := self._take(queue)) is not None:
                plan, work, idle = item
                result: ChunkResult | None = None
                try:
                    if isinstance(work, TableBuild):
                        self._build(plan, work, idle)
                        continue
                    try:
                        result = self._copy_chunk(plan, work, snapshot, src, dst)
                    except psycopg.Error as exc:
                        self._stop.set()
                        message = (exc.diag.message_primary or str(exc)).strip()
                        raise FullLoadError(f"copying {work.id} into {plan.target} failed: {message}") from None
                finally:
                    self._release(plan, work, result, on_done)
        finally:
            src.close()
            dst.close()

    def _take(self, queue: list[Work]) -> tuple[TablePlan, Chunk | TableBuild, int] | None:
        """The next work (with the jobs idle once it runs), waiting while the queue is empty but work in progress may
        add index builds to it; None when nothing is left."""
        with self._ready:
            while not self._stop.is_set():
                if queue:
                    plan, work = _next_chunk(queue, self._active)
                    if isinstance(work, Chunk):
                        self._active[plan.target] = self._active.get(plan.target, 0) + 1
                    self._busy += 1
                    return plan, work, self.jobs - self._busy
                if not self._busy:
                    return None
                self._ready.wait(0.5)
            return None

    def _release(self, plan: TablePlan, work: Chunk | TableBuild, result: ChunkResult | None,
                 on_done: ChunkDone) -> None:
        """End a job's work; record a copied chunk (``on_done``) under the same lock, so that index builds it queues
        count this job as idle (their parallel maintenance workers are the idle jobs). Its progress line follows."""
        report = None
        with self._ready:
            if isinstance(work, Chunk):
                self._active[plan.target] -= 1
            self._busy -= 1
            try:
                if result is not None:
                    report = on_done(plan, result)
            finally:
                self._ready.notify_all()
        if report is not None:
            report()

    def _build(self, plan: TablePlan, build: TableBuild, idle: int) -> None:
        assert self._builder is not None
        result = self._builder.build(plan.source, build, idle, plan.index_bytes)
        with self._lock:
            self._built.append(result)

    def _queue_builds(self, queue: list[Work], plan: TablePlan) -> None:
        """Queue a table's index builds (its copy committed; none before they are planned); caller holds the lock."""
        queue.extend((plan, b) for b in self._builds.pop(plan.source, []))
        queue.sort(key=_priority, reverse=True)
        self._ready.notify_all()

    def _copy_all(self, plans: list[TablePlan], todo: list[tuple[TablePlan, Chunk]], snapshot: str,
                  results: dict[str, ChunkResult]) -> None:
        remaining = {p.source: sum(1 for q, _ in todo if q.source == p.source) for p in plans}
        queue: list[Work] = list(todo)
        builds = self.config.wants("schema") and self.config.full_load.build_indexes
        if not queue and not builds:
            return
        total_tables = sum(1 for v in remaining.values() if v)
        done_tables = 0
        self._planned_bytes = sum(p.size_bytes // max(1, len(p.chunks)) for p, _ in todo)

        def on_done(plan: TablePlan, result: ChunkResult) -> Callable[[], None]:
            """Record a chunk (under self._lock, see _release); return its progress report, run after the lock."""
            nonlocal done_tables
            results[result.chunk.id] = result
            remaining[plan.source] -= 1
            if remaining[plan.source] == 0:
                done_tables += 1
                self._queue_builds(queue, plan)
            elapsed = max(1e-6, time.monotonic() - self._started)
            rate = self._copied_bytes / elapsed
            left = max(0, self._planned_bytes - self._copied_bytes)
            eta = left / rate if rate > 0 else 0.0
            mb = result.bytes / 1048576
            line = (f"full_load table={plan.source} chunk={result.chunk.part}/{result.chunk.parts} "
                    f"rows={result.rows} MB={mb:.1f} MB/s={mb / max(result.seconds, 1e-6):.1f} "
                    f"skipped={result.skipped_rows} tables_done={done_tables}/{total_tables} ETA={eta:.0f}s")

            def report() -> None:
                self.log(line)
                tags = {"migration": self.config.name, "table": plan.source}
                self.metric("pgmigrate.full_load.rows", result.rows, tags)
                self.metric("pgmigrate.full_load.bytes", result.bytes, tags)
            return report

        workers = max(1, self.jobs if builds else min(self.jobs, len(queue)))
        with ThreadPoolExecutor(max_workers=workers + builds, thread_name_prefix="copy") as pool:
            futures = []
            if builds:
                self._busy += 1  # the planning, until it queued what it found
                futures.append(pool.submit(self._plan_builds, plans, queue, remaining))
            futures += [pool.submit(self._worker, queue, snapshot, on_done) for _ in range(workers)]
            wait(futures, return_when=FIRST_EXCEPTION)
            errors = [f.exception() for f in futures if f.done() and f.exception() is not None]
            if errors:
                self._stop.set()
                wait(futures)
                raise errors[0]  # type: ignore[misc]

    # -- sequences and large objects -----------------------------------------------------------------------------

    def _copy_sequences(self, snapshot: str) -> list[dict[str, Any]]:
        return sync_sequences(self.config, self.source, self.destination, snapshot=snapshot, log=self.log)

    def _copy_large_objects(self, snapshot: str) -> int:
        copied = sync_large_objects_between(self.source, self.destination, snapshot=snapshot, compare_first=False,
                                            on_bytes=self.throttle.on_bytes, roles=LargeObjectRoles.of(self.config),
                                            log=self.log)
        return copied["copied"]

    # -- entry point ---------------------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        self._started = time.monotonic()
        config = self.config
        start = self._start()
        if start.completed is not None:
            return start.completed
        plans, previous = start.plans, start.previous
        record: dict[str, Any] = {
            "migration": config.name,
            "slot": config.slot_name if start.incremental else None,
            "publication": config.publication_name if start.incremental else None,
            "plan": [asdict(p) for p in plans],
            "definition_only": start.definition_only,  # rows not migrated (objects.exclude_data): sync skips them
            "table_start_lsn": dict(previous.get("table_start_lsn") or {}),
        }
        results: dict[str, ChunkResult] = {}
        snapshot, todo = self._snapshot_and_todo(start, record)
        overridden: list[tuple[str, str]] = []
        try:
            overridden = self._skip_compression({p.target for p, _ in todo}, plans)
            self._copy_all(plans, todo, snapshot.name, results)
            sequences = self._copy_sequences(snapshot.name)
            large_objects = self._copy_large_objects(snapshot.name)
        finally:
            snapshot.close()  # the exporting connection outlives every copy worker
            try:
                self._restore_storage(overridden)
            except (PgMigrateError, psycopg.Error) as exc:  # never hides the copy's own error; retried next run
                self.log(f"full_load warning: column storage not restored yet (a retry restores it): {exc}")
        record.update({"resumed": bool(start.done) and not start.fresh, "chunks_copied_now": len(results),
                       "sequences": sequences, "large_objects": large_objects})
        return self._finish(record, plans, results)

    def _start(self) -> LoadStart:
        """Read what an earlier attempt left, decide between starting afresh and resuming, and plan."""
        config = self.config
        incremental = config.wants("incremental")
        slot = config.slot_name
        with connect(self.source) as src, connect(self.destination) as dst:
            version = catalog.server_version_num(src)
            self.state.ensure(dst)
            previous = self.state.read(dst, "full_load") or {}
            plans = plan_tables(config, src, dst) if not previous.get("plan") else \
                [_plan_from_dict(p) for p in previous["plan"]]
            definition_only = self._definition_only(src, plans)
            done = self._done_chunks(dst)
            slot_there = self._slot_exists(src, slot) if incremental else False
            if previous.get("completed") and (slot_there or not incremental):
                self.log(f"full_load already completed for migration={config.name}: nothing to do")
                completed = {**previous, "resumed": False, "already_completed": True}
                return LoadStart(plans, previous, done, False, incremental, version, definition_only, completed)
            fresh = not previous.get("consistent_lsn") or (incremental and not slot_there)
            if fresh and (previous or done):
                # The slot is gone (or the plan was never recorded): the whole load starts over.
                self.log("full_load starting over: the earlier attempt's slot or snapshot cannot be used")
                plans = plan_tables(config, src, dst)
                self._truncate(dst, plans)
                dst.execute(sql.SQL("DELETE FROM {} WHERE migration = %s").format(self.state.chunks_table),
                            (config.name,))
                done = {}
            if incremental and fresh:
                if slot_there:
                    # Created by an attempt that died before recording it: its snapshot is gone, start afresh.
                    drop_leftover_slot(src, slot, self.log)
                self._ensure_publication(src, plans)
        return LoadStart(plans, previous, done, fresh, incremental, version, definition_only)

    def _snapshot_and_todo(self, start: LoadStart,
                           record: dict[str, Any]) -> tuple[SnapshotSource, list[tuple[TablePlan, Chunk]]]:
        """The snapshot to copy in (the slot's, or a temporary slot's on a resume) and the chunks to copy in it;
        records the consistent point and each table's start LSN before any copy."""
        plans, slot = start.plans, self.config.slot_name
        if start.fresh:
            snapshot = self._create_slot(slot, temporary=False, version=start.version) if start.incremental \
                else self._plain_snapshot()
            record["consistent_lsn"] = snapshot.lsn
            record["table_start_lsn"] = {p.source: snapshot.lsn for p in plans}
            record["snapshot"] = self._snapshot_description(snapshot.name)
            self.state.put("full_load", record)
            return snapshot, _largest_first([(p, c) for p in plans for c in p.chunks])
        record["consistent_lsn"] = start.previous["consistent_lsn"]
        record["snapshot"] = start.previous.get("snapshot")
        unfinished = [p for p in plans if any(c.id not in start.done for c in p.chunks)]
        self.log(f"full_load resuming: chunks_done={len(start.done)} tables_to_redo={len(unfinished)} "
                 f"(their earlier snapshot is gone: each is emptied and copied again whole)")
        with connect(self.destination) as dst:
            self._truncate(dst, unfinished)
            for p in unfinished:
                dst.execute(sql.SQL("DELETE FROM {} WHERE migration = %s AND table_name = %s").format(
                    self.state.chunks_table), (self.config.name, p.source))
        snapshot = self._create_slot(f"{slot}_resume", temporary=True, version=start.version) \
            if start.incremental else self._plain_snapshot()
        for p in unfinished:
            record["table_start_lsn"][p.source] = snapshot.lsn
        self.state.put("full_load", record)
        return snapshot, _largest_first([(p, c) for p in unfinished for c in p.chunks])

    def _plan_builds(self, plans: list[TablePlan], queue: list[Work], remaining: dict[str, int]) -> None:
        """Plan the index and key builds post_data would run for the copied tables (pg_dump), while the first chunks
        copy; queue those of tables copied already. Those the destination holds already are left out; a planning
        failure leaves every build to post_data. Counted as work in progress, so no worker ends before it."""
        preamble, builds = "", list[TableBuild]()
        try:
            preamble, builds = table_builds(self.config, self.source, self.destination)
        except (PgMigrateError, psycopg.Error, OSError) as exc:
            self.log(f"full_load index builds left to post_data (planning them failed): {exc}")
        finally:
            copied = {p.source for p in plans if not p.staging}
            with self._ready:
                self._builder = IndexBuilder(self.destination, self.state, preamble, self.log)
                for build in builds:
                    if str(build.table) in copied:
                        self._builds.setdefault(str(build.table), []).append(build)
                for plan in plans:
                    if not remaining[plan.source]:
                        self._queue_builds(queue, plan)  # copied already (or by an earlier attempt)
                self._busy -= 1
                self._ready.notify_all()
        self.log(f"full_load index_builds={sum(len(b) for b in self._builds.values())} "
                 f"tables={len(self._builds)} (each table's start as soon as its copy is committed)")

    def _finish(self, record: dict[str, Any], plans: list[TablePlan],
                results: dict[str, ChunkResult]) -> dict[str, Any]:
        """Complete the report from the committed chunks and the builds, record it as completed and log it."""
        with connect(self.destination) as dst:
            all_done = self._done_chunks(dst)
        tables = {}
        for p in plans:
            chunk_rows = [all_done[c.id] for c in p.chunks if c.id in all_done]
            tables[p.source] = {"target": p.target, "rows": sum(c["rows"] for c in chunk_rows),
                                "bytes": sum(c["bytes"] for c in chunk_rows),
                                "skipped_rows": sum(c["skipped_rows"] for c in chunk_rows),
                                "chunks": len(p.chunks), "binary": p.binary}
        seconds = time.monotonic() - self._started
        copied = sum(r.bytes for r in results.values())
        record.update({
            "completed": True,
            "tables": tables,
            "rows": sum(t["rows"] for t in tables.values()),
            "bytes": sum(t["bytes"] for t in tables.values()),
            "skipped_rows": sum(t["skipped_rows"] for t in tables.values()),
            "indexes_built_now": sorted(b.build.id for b in self._built if b.built),
            "index_builds_left_to_post_data": sorted(b.build.id for b in self._built if b.error),
            "seconds": round(seconds, 3),
            "mb_per_second": round(copied / 1048576 / max(seconds, 1e-6), 2),
        })
        self.state.put("full_load", record)
        self.log(f"full_load done tables={len(tables)} rows={record['rows']} MB={record['bytes'] / 1048576:.1f} "
                 f"indexes_built={len(record['indexes_built_now'])} seconds={seconds:.1f} "
                 f"MB/s={record['mb_per_second']} consistent_lsn={record['consistent_lsn']}")
        return record

    def _definition_only(self, src: psycopg.Connection, plans: list[TablePlan]) -> list[str]:
        """The selected tables whose rows do not migrate (``objects.exclude_data``); refuses an incremental migration
        left with nothing to sync."""
        definition_only = sorted(str(t) for t in tables_without_rows(src, self.config.objects.exclude_data))
        if self.config.wants("incremental") and not plans:
            raise FullLoadError(f"every selected table is in objects.exclude_data ({', '.join(definition_only)}): "
                                "there are no rows to copy or changes to sync. Remove incremental from "
                                "migration_types, or narrow objects.exclude_data")
        if definition_only:
            self.log(f"full_load definition_only={','.join(definition_only)} (objects.exclude_data): "
                     "created by the schema migration, rows not copied")
        return definition_only

    def _skip_compression(self, targets: set[str], plans: list[TablePlan]) -> list[tuple[str, str]]:
        """``STORAGE EXTERNAL`` for the incompressible columns of the tables about to be copied (see
        ``_incompressible_columns``); returns what to restore. Not possible (not the owner): the plain copy."""
        overridden: list[tuple[str, str]] = []
        # Restore first what a killed attempt may have left (the plan names the same columns).
        self._restore_storage([(p.target, c) for p in plans for c in p.incompressible])
        with connect(self.destination) as dst:
            for plan in plans:
                if plan.target not in targets:
                    continue
                for column in plan.incompressible:
                    try:
                        dst.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN {} SET STORAGE EXTERNAL").format(
                            _ident(plan.target_name), sql.Identifier(column)))
                    except psycopg.Error as exc:
                        self.log(f"full_load table={plan.source} column={column} compressed on the destination as "
                                 f"usual: {(exc.diag.message_primary or str(exc)).strip()}")
                        continue
                    overridden.append((plan.target, column))
                    self.log(f"full_load table={plan.source} column={column} incompressible (the source stored its "
                             "values uncompressed): copied without compression attempts")
        return overridden

    def _restore_storage(self, columns: list[tuple[str, str]]) -> None:
        """Give columns back the default storage (``EXTENDED``); only columns left ``EXTERNAL`` by the load."""
        if not columns:
            return
        with connect(self.destination) as dst:
            for target, column in columns:
                name = parse_qualified_name(target)
                row = dst.execute("SELECT attstorage FROM pg_attribute WHERE attrelid = to_regclass(%s) AND "
                                  "attname = %s", (_ident(name).as_string(dst), column)).fetchone()
                if row and row[0] == "e":
                    dst.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN {} SET STORAGE EXTENDED").format(
                        _ident(name), sql.Identifier(column)))

    def _snapshot_description(self, snapshot: str) -> dict[str, Any]:
        """What the snapshot sees, for verification: ``pg_current_snapshot()`` inside it."""
        with connect(self.source, autocommit=False) as src:
            src.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            src.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)))
            function = "pg_current_snapshot()" if catalog.server_version_num(src) >= 130000 \
                else "txid_current_snapshot()"
            row = src.execute(f"SELECT {function}::text").fetchone()  # noqa: S608 - a constant
            src.rollback()
        return {"name": snapshot, "visible": row[0] if row else None}

    def _truncate(self, dst: psycopg.Connection, plans: list[TablePlan]) -> None:
        # One statement: tables prepared with foreign keys between them can only be emptied together.
        # Pre-existing rows of staging targets stay (conflicting_tables: ignore); the copy skips clashes.
        targets = [_ident(p.target_name) for p in plans if not p.staging]
        if targets:
            dst.execute(sql.SQL("TRUNCATE {}").format(sql.SQL(", ").join(targets)))

    def _defer_foreign_keys(self, dst: psycopg.Connection) -> None:
        """Without schema migration the tables were prepared with their foreign keys, which the parallel copy would
        trip over (a child's chunk before its parent's): the copy sessions skip them (``session_replication_role =
        replica``, as incremental sync does) when the account may; the rows come from a consistent snapshot of a
        source that enforced them. With schema migration the keys come after the load anyway."""
        if self.config.wants("schema"):
            return
        try:
            dst.execute("SET session_replication_role = replica")
        except psycopg.errors.InsufficientPrivilege:
            self.log("full_load: the destination account cannot set session_replication_role: tables with foreign "
                     "keys between them are copied with the keys checked")


def _where_clause(conditions: list[str]) -> sql.Composable:
    """`` WHERE (a) AND (b)`` of normalised conditions (a row filter, a chunk's range), or nothing."""
    if not conditions:
        return sql.SQL("")
    return sql.SQL(" WHERE ") + sql.SQL(" AND ").join(sql.SQL(f"({c})") for c in conditions)


#: Work for a copy worker: a chunk to copy, or an index build of a table whose copy committed.
Work = tuple[TablePlan, "Chunk | TableBuild"]
#: Records a copied chunk (under the load's lock) and returns its progress report, to run once the lock is released.
ChunkDone = Callable[[TablePlan, "ChunkResult"], Callable[[], None]]


def _priority(item: Work) -> float:
    """The work a job has ahead once it starts this: a chunk's own cost plus its table's index builds (which wait
    for it), or a build's share of its table's index builds. The longest chains start first."""
    plan, work = item
    if isinstance(work, TableBuild):
        return plan.index_cost
    return (plan.cost or plan.size_bytes) / max(1, work.parts) + plan.index_cost


def _largest_first(todo: list[tuple[TablePlan, Chunk]]) -> list[tuple[TablePlan, Chunk]]:
    """Chunks in decreasing estimated cost (with their table's index builds), so the long ones start first and the
    short ones fill the gaps."""
    return sorted(todo, key=_priority, reverse=True)


def _next_chunk(queue: list[Work], active: dict[str, int]) -> Work:
    """Take the costliest work, passing over a chunk of a table another worker is writing for shorter work of
    another table, unless that work is shorter than the chunk's own copy.

    Parts of one table copied at the same time compete for the table's extension lock on the destination (before
    PostgreSQL 16 it serialises them); two different tables do not. So parts of a split table run side by side when
    nothing comparable is left, or when the table's index builds, which wait for its last part, make it the long
    pole. An index build reads its table, written by nobody by then.
    """
    first_plan, first = queue[0]
    if isinstance(first, TableBuild) or not active.get(first_plan.target):
        return queue.pop(0)
    if not first_plan.index_bytes:  # no builds wait for the table: keep its parts apart while anything else is left
        return next((queue.pop(i) for i, (p, w) in enumerate(queue) if not active.get(p.target)), None) \
            or queue.pop(0)
    own_copy = (first_plan.cost or first_plan.size_bytes) / max(1, first.parts)
    for i, (plan, work) in enumerate(queue):
        if isinstance(work, TableBuild) or not active.get(plan.target):
            return queue.pop(i) if _priority((plan, work)) >= own_copy else queue.pop(0)
    return queue.pop(0)


def _next_result(pgconn: Any) -> Any:
    """libpq's next result, waiting for it in ``select`` (the GIL is released there) rather than inside libpq."""
    import select

    while (pending := pgconn.flush()) != 0:
        if pending < 0:
            raise FullLoadError(f"writing to the server failed: {pgconn.get_error_message()!r}")
        select.select([pgconn.socket], [pgconn.socket], [], 1.0)
        pgconn.consume_input()
    while pgconn.is_busy():
        select.select([pgconn.socket], [], [], 1.0)
        pgconn.consume_input()
    return pgconn.get_result()


def _put_copy_data(pgconn: Any, data: bytes | bytearray) -> None:
    """Queue COPY data and push it to the server before returning, so libpq's buffer never grows unbounded."""
    import select

    while True:
        queued = pgconn.put_copy_data(data)
        if queued == 1:
            break
        if queued < 0:
            raise FullLoadError(f"writing to the destination failed: {pgconn.get_error_message()!r}")
        select.select([], [pgconn.socket], [], 1.0)
    while True:
        pending = pgconn.flush()
        if pending == 0:
            return
        if pending < 0:
            raise FullLoadError(f"writing to the destination failed: {pgconn.get_error_message()!r}")
        select.select([pgconn.socket], [pgconn.socket], [], 1.0)
        pgconn.consume_input()


def _find_psql(source: ConnectionInfo) -> Path | None:
    """A psql to read the source with (any version reads COPY output, but it must speak TLS when the source's
    connection does); None: read through libpq in Python."""
    client = pick_client(available_clients("psql"), source)
    return client.path if client else None


def _plan_from_dict(data: dict[str, Any]) -> TablePlan:
    chunks = [Chunk(**c) for c in data.pop("chunks", [])]
    return TablePlan(**data, chunks=chunks)


def run_full_load(config: MigrationConfig, source: ConnectionInfo, destination: ConnectionInfo,
                  **kwargs: Any) -> dict[str, Any]:
    """Run (or resume) the full load of a migration; see :class:`FullLoad`."""
    return FullLoad(config, source, destination, **kwargs).run()


__all__ = ["Chunk", "FullLoad", "FullLoadError", "TablePlan", "plan_tables", "run_full_load"]
