"""Data verification: compare source and destination on everything the migration moves.

- Table rows, through the mapping, column selection and row filters (a partitioned table's filter applies to its
  partitions), for every table moved and for each partitioned table as a whole (its rows through its partitions).
  Per table: row counts, then a checksum per bucket of rows (rows are spread over buckets by a hash of their key),
  then, for each bucket that differs, the keys themselves: missing in the destination, extra, or different. Each
  side computes its checksums in SQL, so only bucket sums and the keys of differing buckets cross the network.
- The set of partitions of each partitioned table (a partition detached or attached on the source is named).
- Sequences and large objects (see :mod:`airflow_pgmigrate.engine.nonstreamed`): every migrated sequence at or
  beyond the source's value in its direction; large objects by count and a digest of each object's data.
- Materialized views: populated or not, and their rows (see :mod:`airflow_pgmigrate.engine.matviews`). Tables whose
  rows do not migrate (``objects.exclude_data``) are listed, not compared.
- With ``incremental.ddl: replicate``, the definition of every table compared (columns, constraints, indexes; see
  :mod:`airflow_pgmigrate.engine.definitions`): DDL applied during the sync must leave both sides the same shape.

Consistency: the source is read in a snapshot and the destination holds exactly the changes committed before that
snapshot (the caller pauses incremental sync at the snapshot's LSN, see :func:`verify_migration`), so a busy source
gives no false alarm.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from airflow_pgmigrate.engine import catalog
from airflow_pgmigrate.engine.connection import ConnectionInfo, connect
from airflow_pgmigrate.engine.definition_only import materialized_views_without_rows, tables_without_rows
from airflow_pgmigrate.engine.definitions import compare_definitions, definition_lines
from airflow_pgmigrate.engine.incremental import IncrementalSync
from airflow_pgmigrate.engine.matviews import ViewCatalog, compare_materialized_views
from airflow_pgmigrate.engine.names import NameMapper, QualifiedName, parse_qualified_name
from airflow_pgmigrate.engine.nonstreamed import (
    LargeObjectRoles,
    SequenceState,
    compare_state,
    sequences_of,
    sync_large_objects_between,
    sync_sequences,
)
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
    #: A partitioned table: the tables below it that the migration moves, by name and (leaves) by oid. Its rows are
    #: those of these leaves (read through it, not ONLY; on the source only from these leaves).
    below: list[QualifiedName] | None = None
    leaf_oids: list[int] = field(default_factory=list)

    @property
    def partitioned(self) -> bool:
        return self.below is not None


@dataclass
class TableResult:
    table: str
    target: str
    source_rows: int
    destination_rows: int
    buckets: int
    partitioned: bool = False
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


def _relation(table: QualifiedName, partitioned: bool) -> sql.Composed:
    return sql.SQL("{}{}").format(sql.SQL("" if partitioned else "ONLY "), sql.Identifier(table.schema, table.name))


def _conditions(row_filter: str | None, leaf_oids: list[int] | None) -> list[sql.Composable]:
    """The row filter, and for a partitioned table on the source, its rows only from the leaves migrated."""
    out: list[sql.Composable] = []
    if row_filter:
        out.append(sql.SQL("({})").format(sql.SQL(row_filter)))
    if leaf_oids is not None:
        out.append(sql.SQL("tableoid = ANY({}::oid[])").format(sql.Literal(leaf_oids)))
    return out


def _bucket_query(table: QualifiedName, columns: list[str], key: list[str], conditions: list[sql.Composable],
                  buckets: int, partitioned: bool = False) -> sql.Composed:
    where = sql.SQL(" WHERE {}").format(sql.SQL(" AND ").join(conditions)) if conditions else sql.SQL("")
    return sql.SQL(
        "SELECT mod(abs(hashtext({k})::bigint), {n}) AS b, count(*), "
        "sum(('x' || substr({h}, 1, 15))::bit(60)::bigint) FROM {t}{w} GROUP BY 1"
    ).format(k=_key_text(key), n=sql.Literal(buckets), h=_row_hash(columns), t=_relation(table, partitioned),
             w=where)


def _rows_query(table: QualifiedName, columns: list[str], key: list[str], where: list[sql.Composable], buckets: int,
                wanted: list[int], partitioned: bool = False) -> sql.Composed:
    conditions = [sql.SQL("mod(abs(hashtext({k})::bigint), {n}) = ANY({b})").format(
        k=_key_text(key), n=sql.Literal(buckets), b=sql.Literal(wanted)), *where]
    return sql.SQL("SELECT {k}, {h} FROM {t} WHERE {c}").format(
        k=_key_text(key), h=_row_hash(columns), t=_relation(table, partitioned), c=sql.SQL(" AND ").join(conditions))


def plan_checks(config: MigrationConfig, src: psycopg.Connection,
                selected: set[QualifiedName] | None = None) -> list[TableCheck]:
    """Which tables to compare, with their columns and keys on each side: every table the migration moves (the
    partitions of a selected partitioned table included) and the partitioned tables themselves, read through their
    partitions, each through its row filter (a partitioned table's applies to its partitions) and column selection."""
    from airflow_pgmigrate.engine.schema import read_source_schema

    tables = {t.name: t for t in catalog.list_tables(src)}
    if selected is None:
        selected = read_source_schema(src, config).selected
    ancestors = catalog.partition_ancestors(src)
    below: dict[QualifiedName, list[QualifiedName]] = {}
    for name in sorted(n for n in ancestors if n in selected):
        for parent in ancestors[name]:
            below.setdefault(parent, []).append(name)
    mapper = NameMapper(config.mapping)
    columns_of = {parse_qualified_name(k): v for k, v in config.objects.columns.items()}
    without_rows = tables_without_rows(src, config.objects.exclude_data)
    checks = []
    for name, table in sorted(tables.items()):
        if table.relkind not in ("r", "p") or name not in selected or name in without_rows:
            continue
        generated = {r[0] for r in src.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = %s AND attgenerated <> ''", (table.oid,))}
        wanted = columns_of.get(name)
        columns = [c for c in table.column_names if c not in generated and (wanted is None or c in wanted)]
        key = table.key_columns or columns
        row_filter = safe_row_filter(config, name, src, "source", ancestors.get(name, ()))
        check = TableCheck(name, mapper.table(name), columns, [mapper.column(name, c) for c in columns],
                           key, [mapper.column(name, c) for c in key], row_filter)
        if table.relkind == "p":
            check.below = [t for t in below.get(name, []) if t not in without_rows]
            check.leaf_oids = [tables[t].oid for t in check.below if tables[t].relkind == "r"]
        checks.append(check)
    return checks


def compare_partitions(config: MigrationConfig, src: psycopg.Connection, dst: psycopg.Connection,
                       selected: set[QualifiedName]) -> list[dict[str, Any]]:
    """For each partitioned table the migration moves: its partitions on each side (by destination name)."""
    mapper = NameMapper(config.mapping)
    here, there = catalog.partitions(src), catalog.partitions(dst)
    out = []
    for parent in sorted(p for p in here if p in selected):
        target = mapper.table(parent)
        wanted = {mapper.table(c) for c in here[parent] if c in selected}
        found = there.get(target, set())
        missing, extra = sorted(map(str, wanted - found)), sorted(map(str, found - wanted))
        out.append({"table": str(parent), "target": str(target), "source_partitions": len(wanted),
                    "destination_partitions": len(found), "missing": missing, "extra": extra,
                    "equal": not (missing or extra)})
    return out


def _partitioned(conn: psycopg.Connection, table: QualifiedName) -> bool:
    row = conn.execute("SELECT relkind FROM pg_class WHERE oid = to_regclass(%s)",
                       (sql.Identifier(table.schema, table.name).as_string(conn),)).fetchone()
    return bool(row and row[0] == "p")


def _key_label(text: str) -> str:
    return text[1:-1] if text.startswith("(") and text.endswith(")") else text


def compare_table(check: TableCheck, src: psycopg.Connection, dst: psycopg.Connection,
                  buckets: int = BUCKETS) -> TableResult:
    """Compare one table; ``src`` may be inside a snapshot transaction."""
    whole = check.partitioned
    source_where = _conditions(check.row_filter, check.leaf_oids if whole else None)
    source_sums = {b: (n, s) for b, n, s in src.execute(
        _bucket_query(check.source, check.columns, check.key, source_where, buckets, whole)).fetchall()}
    # A destination table prepared as a partitioned table holds its rows in its partitions (ONLY would see none).
    target_whole = whole or _partitioned(dst, check.target)
    target_sums = {b: (n, s) for b, n, s in dst.execute(
        _bucket_query(check.target, check.target_columns, check.target_key, [], buckets, target_whole)).fetchall()}
    result = TableResult(str(check.source), str(check.target), sum(n for n, _ in source_sums.values()),
                         sum(n for n, _ in target_sums.values()), buckets, whole)
    differing = sorted(b for b in set(source_sums) | set(target_sums) if source_sums.get(b) != target_sums.get(b))
    result.differing_buckets = len(differing)
    if not differing:
        return result
    # Narrow down: the keys and row hashes of the differing buckets only.
    source_rows: dict[str, list[str]] = {}
    for key, digest in src.execute(_rows_query(check.source, check.columns, check.key, source_where, buckets,
                                               differing, whole)):
        source_rows.setdefault(key, []).append(digest)
    target_rows: dict[str, list[str]] = {}
    for key, digest in dst.execute(_rows_query(check.target, check.target_columns, check.target_key, [], buckets,
                                               differing, target_whole)):
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
            snapshot: str | None = None, sequences: list[SequenceState] | None = None,
            log: Callable[[str], None] = lambda message: None) -> dict[str, Any]:
    """Compare everything the migration moves: the rows of every table (partitioned ones too), the set of
    partitions, sequences, large objects, materialized views, and with ``incremental.ddl: replicate`` the tables'
    definitions. With ``snapshot``, the source is read in that exported snapshot, and
    the sequences are compared with ``sequences`` when given (the states read at that snapshot)."""
    from airflow_pgmigrate.engine.schema import read_source_schema

    started = time.monotonic()
    results = []
    with connect(source, autocommit=snapshot is None) as src, connect(destination) as dst:
        if snapshot is not None:
            src.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            src.read_only = True
            src.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)))
        schema = read_source_schema(src, config)
        selected = schema.selected
        checks = plan_checks(config, src, selected)
        partitions = compare_partitions(config, src, dst, selected)
        same_partitions = {parse_qualified_name(p["table"]) for p in partitions if p["equal"]}
        partitioned = {c.source for c in checks if c.partitioned}
        leaves: dict[QualifiedName, TableResult] = {}
        definitions = _compare_definitions(config, checks, src, dst, log)
        shapes = {d["table"]: d for d in definitions}
        for check in sorted(checks, key=lambda c: c.partitioned):  # leaves first: a parent may be made of them
            t0 = time.monotonic()
            if check.below is not None and {check.source, *check.below} & partitioned <= same_partitions:
                result = _through_partitions(check, leaves)
            else:
                result = _compare_rows(check, src, dst, shapes.get(str(check.source)))
            leaves[check.source] = result
            results.append(result)
            log(f"verify table={result.table} rows={result.source_rows}/{result.destination_rows} "
                f"differing_buckets={result.differing_buckets} missing={result.missing_count} "
                f"extra={result.extra_count} different={result.different_count} "
                f"seconds={time.monotonic() - t0:.2f}")
        state = compare_state(config, src, dst, schema, sequences)
        views = _compare_views(config, schema, src, dst, log)
        definition_only = sorted(str(t) for t in tables_without_rows(src, config.objects.exclude_data)
                                 | materialized_views_without_rows(src, config.objects.exclude_data))
        if snapshot is not None:
            src.rollback()
    report = {
        "tables": [r.to_dict() for r in results],
        "partitions": partitions,
        "sequences": state["sequences"],
        "large_objects": state["large_objects"],
        "materialized_views": views,
        "definitions": definitions,
        "definition_only": definition_only,
        "rows": sum(r.source_rows for r in results if not r.partitioned),
        "seconds": round(time.monotonic() - started, 3),
    }
    named = differences(report)
    report["equal"] = not named
    report["differences"] = (sum(r.missing_count + r.extra_count + r.different_count for r in results)
                             + sum(len(p["missing"]) + len(p["extra"]) for p in partitions)
                             + sum(1 for s in state["sequences"] if not s["equal"])
                             + sum(state["large_objects"][k] for k in ("missing_count", "extra_count",
                                                                       "different_count", "other_roles_count"))
                             + sum(max(1, v["missing_count"] + v["extra_count"]) for v in views if not v["equal"])
                             + sum(len(d["differences"]) for d in definitions))
    lo = state["large_objects"]
    log(f"verify sequences={len(state['sequences'])} behind={sum(1 for s in state['sequences'] if not s['equal'])} "
        f"large_objects={lo['source_count']}/{lo['destination_count']} partitioned_tables={len(partitions)}")
    for line in named:
        log(f"verify difference: {line}")
    log(f"verify done tables={len(results)} equal={report['equal']} differences={report['differences']} "
        f"seconds={report['seconds']}")
    return report


def _compare_views(config: MigrationConfig, schema: ViewCatalog, src: psycopg.Connection, dst: psycopg.Connection,
                   log: Callable[[str], None]) -> list[dict[str, Any]]:
    views = compare_materialized_views(config, schema, src, dst)
    for v in views:
        log(f"verify materialized_view={v['view']} populated={v['source_populated']}/{v['destination_populated']} "
            f"rows={v['source_rows']}/{v['destination_rows']} equal={v['equal']}")
        if v.get("stale_on_source"):
            log(f"verify warning: materialized view {v['view']}: {v['note']}")
    return views


def _compare_definitions(config: MigrationConfig, checks: list[TableCheck], src: psycopg.Connection,
                         dst: psycopg.Connection, log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Table definitions, when DDL is replicated during the sync (otherwise DDL stops the sync, and the schema step
    made the definitions)."""
    if config.incremental.ddl != "replicate":
        return []
    definitions = compare_definitions(config, checks, src, dst)
    log(f"verify definitions tables={len(definitions)} different={sum(1 for d in definitions if not d['equal'])}")
    return definitions


def _compare_rows(check: TableCheck, src: psycopg.Connection, dst: psycopg.Connection,
                  shape: dict[str, Any] | None) -> TableResult:
    """Compare a table's rows; with its definitions compared (``shape``), a destination table or columns that are
    missing (named differences already) leave the comparison to what both sides have: the rows of a missing table
    are all missing, a missing column is left out of the rows."""
    if shape is not None and not shape["on_destination"]:
        return _rows_of_missing_table(check, src)
    gone = set(shape["missing_columns"]) if shape else set()
    if gone:
        kept = [(c, t) for c, t in zip(check.columns, check.target_columns, strict=True) if t not in gone]
        check = replace(check, columns=[c for c, _ in kept], target_columns=[t for _, t in kept])
        if gone & set(check.target_key):
            check = replace(check, key=check.columns, target_key=check.target_columns)
    return compare_table(check, src, dst)


def _rows_of_missing_table(check: TableCheck, src: psycopg.Connection) -> TableResult:
    where = _conditions(check.row_filter, check.leaf_oids if check.partitioned else None)
    rows = sum(n for _, n, _ in src.execute(_bucket_query(check.source, check.columns, check.key, where, BUCKETS,
                                                          check.partitioned)))
    return TableResult(str(check.source), str(check.target), rows, 0, BUCKETS, check.partitioned,
                       differing_buckets=1 if rows else 0, missing_count=rows)


def _through_partitions(check: TableCheck, done: dict[QualifiedName, TableResult]) -> TableResult:
    """A partitioned table whose partitions are the same on both sides (at every level): its rows are those of its
    leaves, compared already, so its counts are their sums (a difference in a row is named on its leaf)."""
    leaves = [done[t] for t in check.below or [] if t in done and not done[t].partitioned]
    return TableResult(str(check.source), str(check.target), sum(r.source_rows for r in leaves),
                       sum(r.destination_rows for r in leaves), BUCKETS, True)


def differences(report: dict[str, Any], limit: int = 5) -> list[str]:
    """Every difference of a verification report, in words, each naming its object."""
    out = []
    for t in report.get("tables", []):
        if not t["equal"]:
            keys = ", ".join((t["missing"] + t["extra"] + t["different"])[:limit])
            kind = "partitioned table" if t.get("partitioned") else "table"
            out.append(f"{kind} {t['table']} (missing {t['missing_count']}, extra {t['extra_count']}, different "
                       f"{t['different_count']}: {keys})" if keys else
                       f"{kind} {t['table']} ({t['source_rows']} rows on the source, {t['destination_rows']} on "
                       "the destination)")
    for p in report.get("partitions", []):
        if p["missing"]:
            out.append(f"partitioned table {p['target']} lacks partition(s) {', '.join(p['missing'][:limit])} "
                       "that the source has")
        if p["extra"]:
            out.append(f"partitioned table {p['target']} has partition(s) {', '.join(p['extra'][:limit])} "
                       "that the source does not have (detached or dropped on the source?)")
    for seq in report.get("sequences", []):
        if not seq["equal"]:
            out.append(f"sequence {seq['sequence']} ({seq['direction']}) is {seq['problem']}")
    lo = report.get("large_objects") or {}
    for kind, words in (("missing", "missing on the destination"), ("extra", "only on the destination"),
                        ("different", "with different data"),
                        ("other_roles", "with another owner or other grants than the source's (mapped)")):
        if lo.get(f"{kind}_count"):
            oids = ", ".join(map(str, lo[kind][:limit]))
            out.append(f"large objects {words}: {lo[f'{kind}_count']} (oid {oids})")
    for view in report.get("materialized_views", []):
        if view["equal"]:
            continue
        if view.get("missing_on_destination"):
            out.append(f"materialized view {view['view']} missing on the destination")
        elif view["source_populated"] != view["destination_populated"]:
            out.append(f"materialized view {view['view']} (populated on the source: {view['source_populated']}, on "
                       f"the destination: {view['destination_populated']})")
        else:
            out.append(f"materialized view {view['view']} (missing {view['missing_count']}, extra "
                       f"{view['extra_count']} row(s), and not what a refresh on the source gives either)")
    return out + definition_lines(report.get("definitions") or [])


def verify_migration(config: MigrationConfig, source: ConnectionInfo, destination: ConnectionInfo, *,
                     log: Callable[[str], None] = lambda message: None) -> dict[str, Any]:
    """Verify while the source keeps writing: export a snapshot at LSN L from a temporary slot, bring the destination
    exactly to L (apply every transaction committed before it, none after), then compare against that snapshot."""
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
            applied = 0
            for _ in range(100):
                result = sync.stop_before(lsn, window_seconds=600, take_lock=False)
                applied += result.changes
                if result.caught_up:
                    break
            # Sequences and large objects are not streamed: brought to the snapshot too (sequences only forward).
            states = sequences_of(config, source, snapshot)
            sync_sequences(config, source, destination, states=states, log=log)
            sync_large_objects_between(source, destination, snapshot=snapshot, roles=LargeObjectRoles.of(config),
                                       log=log)
            report = compare(config, source, destination, snapshot=snapshot, sequences=states, log=log)
        report["lsn"] = lsn
        report["changes_applied"] = applied  # brought over to reach the snapshot (the cutover counts them as late)
        return report
    finally:
        repl.close()


class VerifyError(PgMigrateError):
    """Verification could not run."""


__all__ = ["TableResult", "VerifyError", "compare", "compare_partitions", "compare_table", "differences", "plan_checks",
           "verify_migration"]
