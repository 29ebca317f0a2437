"""Data verification: compare source and destination table by table, through the mapping, selection and filters.

Per table: row counts, then a checksum per bucket of rows (rows are spread over buckets by a hash of their key), then,
for each bucket that differs, the keys themselves: missing in the destination, extra, or different. Each side
computes its checksums in SQL, so only bucket sums and the keys of differing buckets cross the network.

Consistency: the source is read in a snapshot and the destination holds exactly the changes committed before that
snapshot (the caller pauses incremental sync at the snapshot's LSN, see :func:`verify_migration`), so a busy source
gives no false alarm.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from airflow_pgmigrate.engine import catalog
from airflow_pgmigrate.engine.connection import ConnectionInfo, connect
from airflow_pgmigrate.engine.names import NameMapper, QualifiedName, TableSelector, parse_qualified_name
from airflow_pgmigrate.engine.sqlfilter import safe_row_filter
from airflow_pgmigrate.exceptions import PgMigrateError

if TYPE_CHECKING:
    from airflow_pgmigrate.config import MigrationConfig

BUCKETS = 256
#: Keys listed per table and kind at most (the counts are always exact).
MAX_KEYS = 100


@dataclass
class TableCheck:
    source: QualifiedName
    target: QualifiedName
    columns: list[str]
    target_columns: list[str]
    key: list[str]
    target_key: list[str]
    row_filter: str | None


@dataclass
class TableResult:
    table: str
    target: str
    source_rows: int
    destination_rows: int
    buckets: int
    differing_buckets: int = 0
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    different: list[str] = field(default_factory=list)
    missing_count: int = 0
    extra_count: int = 0
    different_count: int = 0

    @property
    def equal(self) -> bool:
        return self.differing_buckets == 0 and self.source_rows == self.destination_rows

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "equal": self.equal}


def _row_hash(columns: list[str]) -> sql.Composable:
    """md5 of the row's selected columns as text, in a fixed column order."""
    return sql.SQL("md5(ROW({})::text)").format(sql.SQL(", ").join(map(sql.Identifier, columns)))


def _key_text(key: list[str]) -> sql.Composable:
    return sql.SQL("ROW({})::text").format(sql.SQL(", ").join(map(sql.Identifier, key)))


def _bucket_query(table: QualifiedName, columns: list[str], key: list[str], row_filter: str | None,
                  buckets: int) -> sql.Composed:
    where = sql.SQL(" WHERE ({})").format(sql.SQL(row_filter)) if row_filter else sql.SQL("")
    return sql.SQL(
        "SELECT mod(abs(hashtext({k})::bigint), {n}) AS b, count(*), "
        "sum(('x' || substr({h}, 1, 15))::bit(60)::bigint) FROM ONLY {t}{w} GROUP BY 1"
    ).format(k=_key_text(key), n=sql.Literal(buckets), h=_row_hash(columns),
             t=sql.Identifier(table.schema, table.name), w=where)


def _rows_query(table: QualifiedName, columns: list[str], key: list[str], row_filter: str | None, buckets: int,
                wanted: list[int]) -> sql.Composed:
    conditions = [sql.SQL("mod(abs(hashtext({k})::bigint), {n}) = ANY({b})").format(
        k=_key_text(key), n=sql.Literal(buckets), b=sql.Literal(wanted))]
    if row_filter:
        conditions.append(sql.SQL("({})").format(sql.SQL(row_filter)))
    return sql.SQL("SELECT {k}, {h} FROM ONLY {t} WHERE {c}").format(
        k=_key_text(key), h=_row_hash(columns), t=sql.Identifier(table.schema, table.name),
        c=sql.SQL(" AND ").join(conditions))


def plan_checks(config: MigrationConfig, src: psycopg.Connection) -> list[TableCheck]:
    """Which tables to compare, with their columns and keys on each side (leaf tables, selected columns)."""
    tables = {t.name: t for t in catalog.list_tables(src)}
    selector = TableSelector(config.objects)
    mapper = NameMapper(config.mapping)
    columns_of = {parse_qualified_name(k): v for k, v in config.objects.columns.items()}
    checks = []
    for name, table in sorted(tables.items()):
        if table.relkind != "r" or not selector(name):
            continue
        if table.is_partition and not selector(name):
            continue
        generated = {r[0] for r in src.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = %s AND attgenerated <> ''", (table.oid,))}
        wanted = columns_of.get(name)
        columns = [c for c in table.column_names if c not in generated and (wanted is None or c in wanted)]
        key = table.key_columns or columns
        row_filter = safe_row_filter(config, name, src, "source")
        checks.append(TableCheck(name, mapper.table(name), columns, [mapper.column(name, c) for c in columns],
                                 key, [mapper.column(name, c) for c in key], row_filter))
    return checks


def _key_label(text: str) -> str:
    return text[1:-1] if text.startswith("(") and text.endswith(")") else text


def compare_table(check: TableCheck, src: psycopg.Connection, dst: psycopg.Connection,
                  buckets: int = BUCKETS) -> TableResult:
    """Compare one table; ``src`` may be inside a snapshot transaction."""
    source_sums = {b: (n, s) for b, n, s in src.execute(
        _bucket_query(check.source, check.columns, check.key, check.row_filter, buckets)).fetchall()}
    target_sums = {b: (n, s) for b, n, s in dst.execute(
        _bucket_query(check.target, check.target_columns, check.target_key, None, buckets)).fetchall()}
    result = TableResult(str(check.source), str(check.target), sum(n for n, _ in source_sums.values()),
                         sum(n for n, _ in target_sums.values()), buckets)
    differing = sorted(b for b in set(source_sums) | set(target_sums) if source_sums.get(b) != target_sums.get(b))
    result.differing_buckets = len(differing)
    if not differing:
        return result
    # Narrow down: the keys and row hashes of the differing buckets only.
    source_rows: dict[str, list[str]] = {}
    for key, digest in src.execute(_rows_query(check.source, check.columns, check.key, check.row_filter, buckets,
                                               differing)):
        source_rows.setdefault(key, []).append(digest)
    target_rows: dict[str, list[str]] = {}
    for key, digest in dst.execute(_rows_query(check.target, check.target_columns, check.target_key, None,
                                               buckets, differing)):
        target_rows.setdefault(key, []).append(digest)
    for key in sorted(set(source_rows) | set(target_rows)):
        here, there = sorted(source_rows.get(key, [])), sorted(target_rows.get(key, []))
        if here == there:
            continue
        label = _key_label(key)
        if not there:
            result.missing_count += len(here)
            if len(result.missing) < MAX_KEYS:
                result.missing.append(label)
        elif not here:
            result.extra_count += len(there)
            if len(result.extra) < MAX_KEYS:
                result.extra.append(label)
        else:
            result.different_count += 1
            if len(result.different) < MAX_KEYS:
                result.different.append(label)
    return result


def compare(config: MigrationConfig, source: ConnectionInfo, destination: ConnectionInfo, *,
            snapshot: str | None = None, log: Callable[[str], None] = lambda message: None) -> dict[str, Any]:
    """Compare every selected table. With ``snapshot``, the source is read in that exported snapshot."""
    started = time.monotonic()
    results = []
    with connect(source, autocommit=snapshot is None) as src, connect(destination) as dst:
        if snapshot is not None:
            src.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            src.read_only = True
            src.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)))
        checks = plan_checks(config, src)
        for check in checks:
            t0 = time.monotonic()
            result = compare_table(check, src, dst)
            results.append(result)
            log(f"verify table={result.table} rows={result.source_rows}/{result.destination_rows} "
                f"differing_buckets={result.differing_buckets} missing={result.missing_count} "
                f"extra={result.extra_count} different={result.different_count} "
                f"seconds={time.monotonic() - t0:.2f}")
        if snapshot is not None:
            src.rollback()
    report = {
        "equal": all(r.equal for r in results),
        "tables": [r.to_dict() for r in results],
        "rows": sum(r.source_rows for r in results),
        "differences": sum(r.missing_count + r.extra_count + r.different_count for r in results),
        "seconds": round(time.monotonic() - started, 3),
    }
    log(f"verify done tables={len(results)} equal={report['equal']} differences={report['differences']} "
        f"seconds={report['seconds']}")
    return report


def verify_migration(config: MigrationConfig, source: ConnectionInfo, destination: ConnectionInfo, *,
                     log: Callable[[str], None] = lambda message: None) -> dict[str, Any]:
    """Verify while the source keeps writing: export a snapshot at LSN L from a temporary slot, bring the destination
    exactly to L (apply every transaction committed before it, none after), then compare against that snapshot."""
    from airflow_pgmigrate.engine.incremental import IncrementalSync

    if not config.wants("incremental"):
        # No slot to pause at a snapshot: compare with the source as it is now (writes since the full load show as
        # differences).
        report = compare(config, source, destination, log=log)
        report["lsn"] = None
        return report
    version = 0
    with connect(source) as src:
        version = catalog.server_version_num(src)
    repl = connect(source, replication=True)
    try:
        slot = f"{config.slot_name}_verify"[:63]
        if version >= 150000:
            command = sql.SQL("CREATE_REPLICATION_SLOT {} TEMPORARY LOGICAL pgoutput (SNAPSHOT 'export')")
        else:
            command = sql.SQL("CREATE_REPLICATION_SLOT {} TEMPORARY LOGICAL pgoutput EXPORT_SNAPSHOT")
        row = repl.execute(command.format(sql.Identifier(slot))).fetchone()
        assert row is not None
        lsn, snapshot = str(row[1]), str(row[2])
        log(f"verify snapshot at lsn={lsn}: applying every change committed before it")
        with connect(destination) as lock:
            # Hold the applier lock from the catch-up to the end of the comparison: no sensor applies meanwhile.
            locked = lock.execute("SELECT pg_try_advisory_lock(hashtext(%s))",
                                  (f"pgmigrate:{config.name}",)).fetchone()
            if not locked or not locked[0]:
                raise VerifyError(f"another applier of migration {config.name} is running: verification needs "
                                  "incremental sync paused; run it between sensor pokes or from the cutover")
            sync = IncrementalSync(config, source, destination, log=log)
            for _ in range(100):
                if sync.run(window_seconds=600, stop_before_lsn=lsn, take_lock=False).caught_up:
                    break
            report = compare(config, source, destination, snapshot=snapshot, log=log)
        report["lsn"] = lsn
        return report
    finally:
        repl.close()


class VerifyError(PgMigrateError):
    """Verification could not run."""


__all__ = ["TableResult", "VerifyError", "compare", "compare_table", "plan_checks", "verify_migration"]
