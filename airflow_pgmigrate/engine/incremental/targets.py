"""Table targets of the incremental sync: where a source relation's changes go on the destination.

A pgoutput Relation message describes a source table; its target (destination name, mapped columns, key, row
filter, the LSN from which its changes apply) is worked out once, at its first change, and checked against the
destination and the full load's plan: a column added, dropped or retyped on the source after the full load stops the
sync (DDL is not replicated) with the fix in words. Tables the migration does not sync have no target (None).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from airflow_pgmigrate.engine.connection import ConnectionInfo, connect
from airflow_pgmigrate.engine.ddl_capture import capture_names
from airflow_pgmigrate.engine.incremental.apply import TableTarget
from airflow_pgmigrate.engine.incremental.pgoutput import Relation, lsn_to_int
from airflow_pgmigrate.engine.names import NameMapper, QualifiedName, TableSelector, parse_qualified_name
from airflow_pgmigrate.engine.rewrite import row_filter_for_destination
from airflow_pgmigrate.engine.sqlfilter import safe_row_filter
from airflow_pgmigrate.exceptions import SyncError

if TYPE_CHECKING:
    from airflow_pgmigrate.config import MigrationConfig


def _unqualified(type_name: str | None) -> str | None:
    """A type's name without its schema: a user type of a renamed schema differs only there on the destination."""
    return None if type_name is None else re.sub(r'^(?:"(?:[^"]|"")+"|[^".(]+)\.', "", type_name)


def synced_tables(config: MigrationConfig, full_load: dict[str, Any]) -> Callable[[QualifiedName], bool]:
    """Whether changes of a source table are applied: the full load's tables (partitions of a selected partitioned
    table included: they are the publication's) and selected tables, but never one whose rows do not migrate
    (``objects.exclude_data``, recorded by the full load)."""
    planned = {parse_qualified_name(p["source"]) for p in full_load.get("plan") or []}
    without_rows = {parse_qualified_name(t) for t in full_load.get("definition_only") or []}
    selector = TableSelector(config.objects)
    return lambda name: name not in without_rows and (name in planned or selector(name))


class TableTargets:
    """Relations described by the stream (by oid) and their targets; kept across runs of one sync (a destination
    table's shape is looked up once), the full load's facts refreshed at each run's start (:meth:`start_run`)."""

    def __init__(self, config: MigrationConfig, source: ConnectionInfo) -> None:
        self.config, self.source = config, source
        #: relation oid -> target (None: not migrated); a new Relation message resets one.
        self.tables: dict[int, TableTarget | None] = {}
        self.relations: dict[int, Relation] = {}
        self._destination_shapes: dict[QualifiedName, tuple[list[str], set[str]]] = {}
        self._selector: Callable[[QualifiedName], bool] = lambda name: False
        self._ancestors: dict[QualifiedName, list[QualifiedName]] = {}
        self._planned_types: dict[QualifiedName, dict[str, str]] = {}
        #: Source type names by (type oid, typmod), resolved once per run for the type-change check.
        self._type_names: dict[tuple[int, int], str] = {}
        self._start_lsns: dict[str, int] = {}
        self._lookup: psycopg.Connection | None = None
        #: The writer's session while a replicated DDL is applied and not committed (it alone sees the new shapes).
        self._lookup_in_ddl: psycopg.Connection | None = None
        self._definitions = TableSelector(config.objects)
        #: The source's DDL log table (``incremental.ddl: replicate``), and the oids the stream gave it.
        self.capture = capture_names(config).table
        self.capture_oids: set[int] = set()

    def start_run(self, full_load: dict[str, Any], ancestors: dict[QualifiedName, list[QualifiedName]],
                  lookup: psycopg.Connection) -> None:
        """The full load's record (plan, start LSNs), the source's partition ancestors (a partitioned table's filter
        applies to its partitions) and the destination session for catalog lookups, for this run."""
        self._start_lsns = {k: lsn_to_int(v) for k, v in (full_load.get("table_start_lsn") or {}).items() if v}
        self._type_names = {}
        self._planned_types = {parse_qualified_name(p["source"]): p.get("column_types") or {}
                               for p in full_load.get("plan") or []}
        self._selector = synced_tables(self.config, full_load)
        self._ancestors = ancestors
        self._lookup = lookup
        self._lookup_in_ddl = None

    def migrates(self, name: QualifiedName) -> bool:
        """Whether the migration moves a source table's definition (its rows, or only its definition)."""
        return name in self._planned_types or self._definitions(name)

    def shapes_changed(self, writer_session: psycopg.Connection) -> None:
        """A replicated DDL was written, not committed yet: every target is worked out again, in the writer's
        session (the only one that sees the new shapes) until :meth:`ddl_committed`."""
        self.tables.clear()
        self._destination_shapes.clear()
        self._lookup_in_ddl = writer_session

    def ddl_committed(self) -> None:
        """The transaction that carried replicated DDL is committed: shapes are looked up as usual again."""
        self.tables.clear()
        self._destination_shapes.clear()
        self._lookup_in_ddl = None

    def describe(self, relation: Relation) -> None:
        """A Relation message: its (possibly changed) description replaces the one known, its target is redone."""
        self.relations[relation.oid] = relation
        self.tables.pop(relation.oid, None)
        if relation.schema == self.capture.schema and relation.name == self.capture.name:
            self.capture_oids.add(relation.oid)

    def restore(self, descriptions: dict[int, Relation | None]) -> None:
        """Put back relation descriptions (a streamed transaction's own ones were used for its replay)."""
        for oid, relation in descriptions.items():
            self.tables.pop(oid, None)
            if relation is None:
                self.relations.pop(oid, None)
            else:
                self.relations[oid] = relation

    def target(self, rel: int) -> TableTarget | None:
        """The target of relation ``rel`` (worked out at its first change)."""
        if rel not in self.tables:
            relation = self.relations.get(rel)
            if relation is None:
                raise SyncError(f"a change arrived for relation {rel} before its description")
            lookup = self._lookup_in_ddl or self._lookup
            assert lookup is not None, "start_run first"
            self.tables[rel] = self._table_target(relation, lookup)
        return self.tables[rel]

    def _table_target(self, rel: Relation, dst: psycopg.Connection) -> TableTarget | None:
        name = QualifiedName(rel.schema, rel.name)
        if not self._selector(name):
            return None
        mapper = NameMapper(self.config.mapping)
        target = mapper.table(name)
        wanted = None
        for table_key, cols in self.config.objects.columns.items():
            if parse_qualified_name(table_key) == name:
                wanted = set(cols)
        existing, generated = self._destination_columns(dst, target, name)
        columns: list[tuple[int, str]] = []
        for i, col in enumerate(rel.columns):
            if wanted is not None and col.name not in wanted:
                continue
            mapped = mapper.column(name, col.name)
            if mapped in generated:
                continue  # sent by PostgreSQL 18+ (publish_generated_columns); the destination computes its own
            if mapped not in existing:
                raise SyncError(f"DDL on the source: {name} has a column {col.name!r} that the destination table "
                                f"{target} lacks (added after the full load?). Incremental sync stopped before "
                                "applying anything of it: add the column on the destination (or re-run the "
                                "migration), then resume")
            columns.append((i, mapped))
        expected = {mapper.column(name, c) for c in (wanted or [c.name for c in rel.columns])}
        dropped = [c for c in existing if c not in expected and (wanted is None or c in
                                                                 {mapper.column(name, w) for w in wanted})]
        if dropped and wanted is None and not self._added_on_source_later(name, mapper, dropped):
            raise SyncError(f"DDL on the source: {name} no longer has column(s) {', '.join(dropped)} that the "
                            f"destination table {target} has (dropped after the full load?). Incremental sync "
                            "stopped: apply the same change on the destination, then resume")
        self._check_type_changes(rel, name, target, [rel.columns[i].name for i, _ in columns], mapper, dst)
        if rel.replica_identity == "n":
            raise SyncError(f"{name} has REPLICA IDENTITY NOTHING: its updates and deletes are not published. "
                            f"ALTER TABLE {name} REPLICA IDENTITY FULL (or add a primary key)")
        key = [] if rel.replica_identity == "f" else [i for i, c in enumerate(rel.columns) if c.key]
        key_names = [mapper.column(name, rel.columns[i].name) for i in key]
        row_filter = safe_row_filter(self.config, name, dst, "destination", self._ancestors.get(name, ()))
        if row_filter:
            row_filter = row_filter_for_destination(mapper, name, [c.name for c in rel.columns], row_filter)
        upsert = bool(row_filter) or self.config.conflicting_tables == "ignore"
        return TableTarget(name, target, columns, key, key_names, upsert, row_filter,
                           self._start_lsns.get(name.key, self._start_lsns.get(str(name), 0)))

    def _destination_columns(self, dst: psycopg.Connection, target: QualifiedName,
                             name: QualifiedName) -> tuple[list[str], set[str]]:
        """A destination table's columns that changes write, and its generated ones (looked up once per run)."""
        shape = self._destination_shapes.get(target)
        if shape is None:
            ident = sql.Identifier(target.schema, target.name).as_string(dst)
            rows = dst.execute("SELECT attname, attgenerated <> '' FROM pg_attribute WHERE attrelid = to_regclass(%s) "
                               "AND attnum > 0 AND NOT attisdropped ORDER BY attnum", (ident,)).fetchall()
            # A table without columns exists all the same (CREATE TABLE t ()): ask the catalog, not its columns.
            if not rows and dst.execute("SELECT to_regclass(%s)", (ident,)).fetchone() == (None,):
                raise SyncError(f"destination table {target} (for {name}) does not exist: run the schema and full "
                                "load steps first")
            shape = ([n for n, gen in rows if not gen], {n for n, gen in rows if gen})
            self._destination_shapes[target] = shape
        return shape

    def _check_type_changes(self, rel: Relation, name: QualifiedName, target: QualifiedName, migrated: list[str],
                            mapper: NameMapper, dst: psycopg.Connection) -> None:
        """Stop when a migrated column's type on the source differs from its type at the full load, unless the
        destination column has been given the new type too (then the change was applied on both sides)."""
        recorded = self._planned_types.get(name)
        if not recorded:
            return
        by_name = {c.name: c for c in rel.columns}
        pairs = {c: (by_name[c].type_oid, by_name[c].typmod) for c in migrated}
        unknown = sorted({p for p in pairs.values() if p not in self._type_names})
        if unknown:  # once per type and run, not once per table
            with connect(self.source) as src:
                rows = src.execute("SELECT t, m, format_type(t, m) FROM unnest(%s::oid[], %s::int[]) AS u(t, m)",
                                   ([t for t, _ in unknown], [m for _, m in unknown])).fetchall()
            self._type_names.update({(int(t), int(m)): str(name) for t, m, name in rows})
        now = {c: self._type_names[p] for c, p in pairs.items()}
        changed = {c: (recorded[c], now[c]) for c in migrated if c in recorded and recorded[c] != now[c]}
        if not changed:
            return
        at_destination: dict[str, str] = dict(dst.execute(
            "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = to_regclass(%s) "
            "AND attnum > 0 AND NOT attisdropped", (sql.Identifier(target.schema, target.name).as_string(dst),)))
        pending = {c: v for c, v in changed.items()
                   if _unqualified(at_destination.get(mapper.column(name, c))) != _unqualified(v[1])}
        if pending:
            details = ", ".join(f"{c!r} from {before} to {after}" for c, (before, after) in pending.items())
            raise SyncError(f"DDL on the source: {name} changed the type of column(s) {details} after the full "
                            f"load. Incremental sync stopped before applying anything of it: change the same "
                            f"column(s) of {target} on the destination (ALTER TABLE ... ALTER COLUMN ... TYPE ...), "
                            "then resume")

    def _added_on_source_later(self, name: QualifiedName, mapper: NameMapper, columns: list[str]) -> bool:
        """Whether the source table has ``columns`` (destination names) now: the relation described changes made
        before they were added (and the destination got them as the DDL message asked), not a dropped column."""
        with connect(self.source) as src:
            now = {mapper.column(name, r[0]) for r in src.execute(
                "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attnum > 0 "
                "AND NOT attisdropped AND attgenerated = ''", (sql.Identifier(name.schema, name.name).as_string(src),))}
        return all(c in now for c in columns)

    # -- replication protocol ------------------------------------------------------------------------------------


__all__ = ["TableTargets", "synced_tables"]
