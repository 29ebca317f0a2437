"""Schema migration: object definitions from the source to the destination, in the DTS order.

``pre_data`` (before the full load) creates schemas, extensions, types, domains, sequences, tables, views, functions,
rules and comments in ONE destination transaction. ``post_data`` (after the full load) builds primary keys, unique and
exclusion constraints and indexes in parallel, then triggers, foreign keys and the rest in one transaction, and
refreshes materialized views.

pg_dump is the source of truth for definitions. Its entries are selected (only the selected tables, what they need,
and whole schemas when schemas are selected), renamed through PostgreSQL's parser, compared with what already exists
in the destination, and executed. Re-running a phase changes nothing: existing identical objects are skipped and
differing ones reported.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from airflow_pgmigrate.engine import catalog
from airflow_pgmigrate.engine.connection import ConnectionInfo, connect
from airflow_pgmigrate.engine.names import NameMapper, QualifiedName, TableSelector, parse_qualified_name
from airflow_pgmigrate.engine.pgdump import DumpEntry, find_pg_dump, run_pg_dump, split_dump
from airflow_pgmigrate.engine.rewrite import DefinitionRewriter, RewriteError
from airflow_pgmigrate.engine.secrets import redact
from airflow_pgmigrate.exceptions import PgMigrateError

if TYPE_CHECKING:
    from airflow_pgmigrate.config import MigrationConfig
    from airflow_pgmigrate.engine.state import MigrationState

PHASES = ("pre_data", "post_data")
#: Entry types built in parallel in post-data (each in its own transaction).
PARALLEL_TYPES = frozenset({"INDEX", "CONSTRAINT"})
#: Entry types that never migrate with a database's objects.
SKIPPED_TYPES = {
    "PUBLICATION": "publications belong to the source's replication setup",
    "PUBLICATION TABLE": "publications belong to the source's replication setup",
    "PUBLICATION TABLES IN SCHEMA": "publications belong to the source's replication setup",
    "SUBSCRIPTION": "subscriptions belong to the source's replication setup",
    "SUBSCRIPTION TABLE": "subscriptions belong to the source's replication setup",
    "EVENT TRIGGER": "event triggers are database-wide; recreate them by hand if needed",
    "DATABASE": "database properties are not migrated",
    "DATABASE PROPERTIES": "database properties are not migrated",
}
#: Entry types tied to one table: they migrate exactly when the table does.
TABLE_BOUND_TYPES = frozenset({"TABLE", "TABLE ATTACH", "DEFAULT", "CONSTRAINT", "FK CONSTRAINT", "CHECK CONSTRAINT",
                               "INDEX", "INDEX ATTACH", "TRIGGER", "RULE", "POLICY", "ROW SECURITY", "STATISTICS",
                               "SEQUENCE OWNED BY"})
#: Object kinds found in comments' tags ("COLUMN orders.id", "TYPE mood") -> the entry type that creates them.
_COMMENT_KINDS = ("MATERIALIZED VIEW", "TABLE", "FOREIGN TABLE", "TEXT SEARCH CONFIGURATION", "TEXT SEARCH DICTIONARY",
                  "AGGREGATE", "COLLATION", "DOMAIN", "EXTENSION", "FUNCTION", "OPERATOR", "PROCEDURE", "SCHEMA",
                  "SEQUENCE", "TYPE", "VIEW")


class SchemaMigrationError(PgMigrateError):
    """A schema phase cannot run, or failed; the destination is as it was (pre_data) or re-runnable (post_data)."""

    def __init__(self, message: str, report: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.report = report or {}


@dataclass
class SchemaReport:
    migration: str
    phase: str
    created: Counter[str] = field(default_factory=Counter)
    objects: list[str] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    differing: list[dict[str, str]] = field(default_factory=list)
    review: list[dict[str, str]] = field(default_factory=list)
    refreshed: list[str] = field(default_factory=list)
    pg_dump: str = ""
    seconds: float = 0.0

    def skip(self, what: str, reason: str) -> None:
        self.skipped.append({"object": what, "reason": reason})

    def to_dict(self) -> dict[str, Any]:
        return {
            "migration": self.migration,
            "phase": self.phase,
            "created": dict(sorted(self.created.items())),
            "created_total": sum(self.created.values()),
            "objects": self.objects,
            "skipped": self.skipped,
            "differing": self.differing,
            "review": self.review,
            "refreshed": self.refreshed,
            "pg_dump": self.pg_dump,
            "seconds": round(self.seconds, 3),
        }


# -- what the source has -----------------------------------------------------------------------------------------


@dataclass
class SourceSchema:
    """What the schema migration needs to know of the source catalog."""

    tables: dict[QualifiedName, catalog.TableInfo]
    selected: set[QualifiedName]
    relkinds: dict[QualifiedName, str]
    index_tables: dict[QualifiedName, QualifiedName]
    sequence_owners: dict[QualifiedName, QualifiedName]
    c_functions: set[tuple[str, str]]
    #: (entry type, schema, tag) of the objects selected tables need (types, sequences, functions, extensions).
    needed: set[tuple[str, str | None, str]]
    #: Schemas migrated whole (every object in them, but excluded tables).
    whole_schemas: set[str]
    #: Views and materialized views left out by the selection patterns.
    excluded_views: set[QualifiedName]
    #: Relation -> source tables it reads (views and materialized views).
    view_tables: dict[QualifiedName, set[QualifiedName]]
    major: int
    #: Installed extensions (but plpgsql) -> the schema they live in.
    extensions: dict[str, str] = field(default_factory=dict)

    def left_out_columns(self, config: MigrationConfig) -> dict[QualifiedName, set[str]]:
        """Source table -> columns that ``objects.columns`` leaves out (they are not created)."""
        out: dict[QualifiedName, set[str]] = {}
        for key, wanted in config.objects.columns.items():
            name = parse_qualified_name(key)
            table = self.tables.get(name)
            if table is not None:
                out[name] = set(table.column_names) - set(wanted)
        return out

    def wanted_extensions(self, everything: bool) -> list[tuple[str, str]]:
        """Extensions the destination needs: all with a whole-database selection, else those in migrated schemas
        or used by selected tables."""
        return [(name, schema) for name, schema in sorted(self.extensions.items())
                if everything or schema in self.whole_schemas or ("EXTENSION", None, name) in self.needed]

    def view_kept(self, view: QualifiedName) -> bool:
        """A view or materialized view migrates with its whole schema, unless excluded or reading an excluded table."""
        if view.schema not in self.whole_schemas or view in self.excluded_views:
            return False
        return all(t in self.selected for t in self.view_tables.get(view, set()) if t in self.tables)

    @property
    def columns(self) -> dict[QualifiedName, list[str]]:
        return {name: t.column_names for name, t in self.tables.items()}


def read_source_schema(conn: psycopg.Connection, config: MigrationConfig) -> SourceSchema:
    tables = {t.name: t for t in catalog.list_tables(conn)}
    selector = TableSelector(config.objects)
    selected = {name for name in tables if selector(name)}
    selected |= _partitions_of(conn, selected)
    relkinds: dict[QualifiedName, str] = {}
    for schema, name, kind in conn.execute(
        "SELECT n.nspname, c.relname, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast') AND n.nspname !~ '^pg_'"
    ).fetchall():
        relkinds[QualifiedName(schema, name)] = kind
    index_tables = {
        QualifiedName(s, i): QualifiedName(s2, t)
        for s, i, s2, t in conn.execute(
            "SELECT ni.nspname, ci.relname, nt.nspname, ct.relname FROM pg_index x "
            "JOIN pg_class ci ON ci.oid = x.indexrelid JOIN pg_namespace ni ON ni.oid = ci.relnamespace "
            "JOIN pg_class ct ON ct.oid = x.indrelid JOIN pg_namespace nt ON nt.oid = ct.relnamespace"
        ).fetchall()
    }
    sequence_owners = {
        QualifiedName(s, q): QualifiedName(s2, t)
        for s, q, s2, t in conn.execute(
            "SELECT ns.nspname, cs.relname, nt.nspname, ct.relname FROM pg_depend d "
            "JOIN pg_class cs ON cs.oid = d.objid AND cs.relkind = 'S' JOIN pg_namespace ns ON ns.oid = cs.relnamespace "
            "JOIN pg_class ct ON ct.oid = d.refobjid JOIN pg_namespace nt ON nt.oid = ct.relnamespace "
            "WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass "
            "AND d.deptype IN ('a', 'i')"
        ).fetchall()
    }
    c_funcs = {
        (s, f"{p}({args})")
        for s, p, args in conn.execute(
            "SELECT n.nspname, p.proname, pg_get_function_identity_arguments(p.oid) FROM pg_proc p "
            "JOIN pg_namespace n ON n.oid = p.pronamespace JOIN pg_language l ON l.oid = p.prolang "
            "WHERE l.lanname = 'c'"
        ).fetchall()
    }
    selection = config.objects
    if selection.selects_everything:
        whole = {s for s in catalog.list_schemas(conn) if not s.startswith("pg_")}
    else:
        whole = set(selection.schemas)
    exclude = TableSelector(type(selection)(include=["*.*"], exclude=selection.exclude))
    excluded_views = {name for name, kind in relkinds.items() if kind in ("v", "m") and not exclude(name)}
    view_tables: dict[QualifiedName, set[QualifiedName]] = {}
    for vs, vn, ts, tn in conn.execute(
        "SELECT DISTINCT nv.nspname, v.relname, nt.nspname, t.relname FROM pg_rewrite r "
        "JOIN pg_class v ON v.oid = r.ev_class AND v.relkind IN ('v', 'm') "
        "JOIN pg_namespace nv ON nv.oid = v.relnamespace "
        "JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid "
        "AND d.refclassid = 'pg_class'::regclass JOIN pg_class t ON t.oid = d.refobjid AND t.oid <> v.oid "
        "JOIN pg_namespace nt ON nt.oid = t.relnamespace"
    ).fetchall():
        view_tables.setdefault(QualifiedName(vs, vn), set()).add(QualifiedName(ts, tn))
    needed = _needed_objects(conn, [tables[n].oid for n in selected])
    needed |= _sequences_called_by_name(conn, needed)
    version = catalog.server_version_num(conn)
    extensions: dict[str, str] = dict(conn.execute(
        "SELECT e.extname, n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace "
        "WHERE e.extname <> 'plpgsql'").fetchall())
    return SourceSchema(tables, selected, relkinds, index_tables, sequence_owners, c_funcs, needed, whole,
                        excluded_views, view_tables, version // 10000, extensions)


def _partitions_of(conn: psycopg.Connection, parents: set[QualifiedName]) -> set[QualifiedName]:
    """Every partition (at any depth) of these tables: selecting a partitioned table selects its partitions."""
    if not parents:
        return set()
    rows = conn.execute(
        """
        WITH RECURSIVE parts(oid) AS (
            SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              JOIN unnest(%s::text[], %s::text[]) AS p(s, t) ON p.s = n.nspname AND p.t = c.relname
          UNION
            SELECT i.inhrelid FROM pg_inherits i JOIN parts ON i.inhparent = parts.oid
             JOIN pg_class c ON c.oid = i.inhrelid AND c.relispartition
        )
        SELECT n.nspname, c.relname FROM parts JOIN pg_class c ON c.oid = parts.oid
          JOIN pg_namespace n ON n.oid = c.relnamespace
        """,
        ([p.schema for p in parents], [p.name for p in parents]),
    ).fetchall()
    return {QualifiedName(s, t) for s, t in rows}


_NAME_PART = r'(?:"[^"]+"|[A-Za-z0-9_$]+)'
#: A sequence function called with a sequence name as a literal: nextval('invoice_no'), currval('"S".x').
_SEQUENCE_CALL = rf"(?:nextval|currval|setval)\s*\(\s*'({_NAME_PART}(?:\.{_NAME_PART})?)'"


def _sequences_called_by_name(conn: psycopg.Connection,
                              needed: set[tuple[str, str | None, str]]) -> set[tuple[str, str | None, str]]:
    """Sequences that a needed function calls by name in its body (``nextval('invoice_no')``): the catalog records
    no dependency on them, yet the function fails on the destination without them."""
    functions = sorted((s, n) for kind, s, n in needed if kind == "FUNCTION" and s)
    if not functions:
        return set()
    rows = conn.execute(
        """
        SELECT DISTINCT sn.nspname, s.relname
          FROM pg_proc p JOIN pg_namespace pn ON pn.oid = p.pronamespace
          JOIN unnest(%s::text[], %s::text[]) AS f(s, n)
            ON f.s = pn.nspname AND f.n = p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')'
          CROSS JOIN LATERAL regexp_matches(p.prosrc, %s, 'gi') AS m
          JOIN pg_class s ON s.oid = to_regclass(m[1]) AND s.relkind = 'S'
          JOIN pg_namespace sn ON sn.oid = s.relnamespace
        """,
        ([s for s, _ in functions], [n for _, n in functions], _SEQUENCE_CALL),
    ).fetchall()
    return {("SEQUENCE", schema, name) for schema, name in rows}


def _needed_objects(conn: psycopg.Connection, table_oids: list[int]) -> set[tuple[str, str | None, str]]:
    """Types, domains, sequences, functions, collations and extensions that the tables (with their defaults,
    constraints, triggers and indexes) need in order to be created."""
    if not table_oids:
        return set()
    rows = conn.execute(
        """
        WITH RECURSIVE owned(classid, objid) AS (
            SELECT 'pg_class'::regclass::oid, t FROM unnest(%s::oid[]) AS t
          UNION
            SELECT d.classid, d.objid FROM pg_depend d JOIN owned o ON d.refclassid = o.classid
               AND d.refobjid = o.objid
             WHERE d.deptype IN ('a', 'i') AND d.classid <> 'pg_type'::regclass
        ), needed(classid, objid) AS (
            SELECT d.refclassid, d.refobjid FROM pg_depend d JOIN owned o ON d.classid = o.classid
               AND d.objid = o.objid WHERE d.deptype IN ('n', 'i')
          UNION
            SELECT d.refclassid, d.refobjid FROM pg_depend d JOIN needed n ON d.classid = n.classid
               AND d.objid = n.objid WHERE d.deptype IN ('n', 'i')
        ), objects AS (SELECT * FROM needed UNION SELECT * FROM owned),
        plain AS (  -- extension members are created by their extension
            SELECT * FROM objects o WHERE NOT EXISTS (
                SELECT 1 FROM pg_depend d WHERE d.classid = o.classid AND d.objid = o.objid AND d.deptype = 'e'))
        SELECT CASE WHEN t.typtype = 'd' THEN 'DOMAIN' ELSE 'TYPE' END, tn.nspname, t.typname
          FROM plain o
          JOIN pg_type a ON o.classid = 'pg_type'::regclass AND a.oid = o.objid
          JOIN pg_type t ON t.oid = CASE WHEN a.typcategory = 'A' AND a.typelem <> 0 THEN a.typelem ELSE a.oid END
          JOIN pg_namespace tn ON tn.oid = t.typnamespace
          LEFT JOIN pg_class tr ON tr.oid = t.typrelid
         WHERE t.typcategory <> 'A' AND (t.typtype IN ('e', 'r', 'd', 'b', 'm')
               OR (t.typtype = 'c' AND tr.relkind = 'c'))
        UNION
        SELECT CASE p.prokind WHEN 'p' THEN 'PROCEDURE' WHEN 'a' THEN 'AGGREGATE' ELSE 'FUNCTION' END,
               pn.nspname, p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')'
          FROM plain o JOIN pg_proc p ON o.classid = 'pg_proc'::regclass AND p.oid = o.objid
          JOIN pg_namespace pn ON pn.oid = p.pronamespace
        UNION
        SELECT 'SEQUENCE', sn.nspname, s.relname
          FROM plain o JOIN pg_class s ON o.classid = 'pg_class'::regclass AND s.oid = o.objid AND s.relkind = 'S'
          JOIN pg_namespace sn ON sn.oid = s.relnamespace
        UNION
        SELECT 'COLLATION', cn.nspname, c.collname
          FROM plain o JOIN pg_collation c ON o.classid = 'pg_collation'::regclass AND c.oid = o.objid
          JOIN pg_namespace cn ON cn.oid = c.collnamespace
        UNION
        SELECT 'EXTENSION', NULL, e.extname
          FROM objects o JOIN pg_depend d ON d.classid = o.classid AND d.objid = o.objid AND d.deptype = 'e'
          JOIN pg_extension e ON d.refclassid = 'pg_extension'::regclass AND e.oid = d.refobjid
        """,
        (table_oids,),
    ).fetchall()
    out: set[tuple[str, str | None, str]] = set()
    for kind, schema, name in rows:
        if schema is not None and (schema in ("pg_catalog", "information_schema") or schema.startswith("pg_")):
            continue
        out.add((kind, schema, name))
    return out


# -- planning ---------------------------------------------------------------------------------------------------


@dataclass
class PlannedEntry:
    entry: DumpEntry
    sql: str
    #: The table the entry belongs to (TABLE, its constraints, indexes, triggers, comments ...), if any.
    table: QualifiedName | None
    #: The relation (table, view, sequence) or object the entry creates, as named in the destination.
    creates: tuple[str, str] | None = None
    run: bool = True
    reason: str = ""


def _first_statement(text: str) -> Any:
    from pglast import parse_sql
    from pglast.parser import ParseError

    try:
        statements = parse_sql(text)
    except ParseError:
        return None
    return statements[0].stmt if statements else None


def _entry_table(entry: DumpEntry, src: SourceSchema) -> QualifiedName | None:
    """The source table an entry is bound to, or None for objects of their own (types, functions, views ...)."""
    schema = entry.schema or "public"
    if entry.type in ("TABLE", "TABLE ATTACH"):
        return QualifiedName(schema, entry.name)
    if entry.type == "INDEX ATTACH":
        return src.index_tables.get(QualifiedName(schema, entry.name))
    if entry.type == "SEQUENCE":
        owner = src.sequence_owners.get(QualifiedName(schema, entry.name))
        return owner
    stmt = _first_statement(entry.sql)
    if stmt is None:
        if entry.type in TABLE_BOUND_TYPES and " " in entry.name:
            return QualifiedName(schema, entry.name.split(" ", 1)[0])
        return None
    kind = type(stmt).__name__
    relation = getattr(stmt, "relation", None) or getattr(stmt, "table", None)
    if kind == "CreateStatsStmt" and stmt.relations:
        relation = stmt.relations[0]
    if relation is not None and hasattr(relation, "relname"):
        name = QualifiedName(relation.schemaname or schema, relation.relname)
        if kind == "IndexStmt" or name in src.tables:
            return name
        return None
    if kind == "GrantStmt" and stmt.objtype.name == "OBJECT_TABLE" and len(stmt.objects or ()) == 1:
        rv = stmt.objects[0]
        if hasattr(rv, "relname"):
            name = QualifiedName(rv.schemaname or schema, rv.relname)
            return name if name in src.tables or src.relkinds.get(name) in ("v", "m") else None
    if kind == "AlterSeqStmt":
        for option in stmt.options or ():
            if option.defname == "owned_by" and len(option.arg or ()) == 3:
                s, t, _ = (a.sval for a in option.arg)
                return QualifiedName(s, t)
    if kind == "CommentStmt":
        objtype = stmt.objtype.name
        names = [getattr(n, "sval", "") for n in stmt.object] if isinstance(stmt.object, (tuple, list)) else []
        if objtype == "OBJECT_COLUMN" and len(names) == 3:
            return QualifiedName(names[0], names[1])
        if objtype in ("OBJECT_TABLE", "OBJECT_TABCONSTRAINT", "OBJECT_TRIGGER", "OBJECT_POLICY", "OBJECT_RULE") \
                and len(names) >= 2:
            return QualifiedName(names[0], names[1])
        if objtype == "OBJECT_INDEX" and len(names) == 2:
            return src.index_tables.get(QualifiedName(names[0], names[1]))
    return None


def _comment_target(entry: DumpEntry) -> tuple[str, str | None, str] | None:
    for kind in _COMMENT_KINDS:
        if entry.name.startswith(kind + " "):
            schema = None if kind in ("SCHEMA", "EXTENSION") else entry.schema
            return (kind, schema, entry.name[len(kind) + 1:])
    return None


def plan_entries(entries: list[DumpEntry], src: SourceSchema, config: MigrationConfig,
                 rewriter: DefinitionRewriter, report: SchemaReport) -> tuple[list[PlannedEntry], list[str]]:
    """Decide which entries migrate and rename them. Returns (plan, dependency errors)."""
    plan: list[PlannedEntry] = []
    errors: list[str] = []
    kept_keys: set[tuple[str, str | None, str]] = set()
    kept_schemas: set[str] = set()
    wanted_extensions = {name for name, _ in src.wanted_extensions(config.objects.selects_everything)}
    for entry in entries:
        if entry.type in SKIPPED_TYPES:
            report.skip(str(entry), SKIPPED_TYPES[entry.type])
            continue
        table = _entry_table(entry, src)
        relation = QualifiedName(entry.schema, entry.name) if entry.schema else None
        key = (entry.type, entry.schema, entry.name)
        if entry.type == "SEQUENCE" and key in src.needed and table not in src.selected:
            table = None  # a selected table's default uses it: it migrates even if its owner does not
        if entry.type in ("ACL", "COMMENT") and table is None:
            target = _comment_target(entry)
            if target is None or not ({target, ("TABLE", target[1], target[2])} & kept_keys):
                continue
        elif table is not None and (table in src.tables or entry.type in TABLE_BOUND_TYPES
                                    or src.relkinds.get(table) in ("v", "m")):
            if src.relkinds.get(table) in ("v", "m"):
                if not src.view_kept(table):
                    continue
            elif table not in src.selected:
                continue  # an excluded (or not selected) table and everything of it
            if entry.type == "FK CONSTRAINT":
                referenced = _referenced_table(entry)
                if referenced is not None and referenced in src.tables and referenced not in src.selected:
                    errors.append(f"foreign key {entry.name} of {table} references {referenced}, which is not "
                                  f"selected: select {referenced} too, or exclude {table}")
                    continue
        elif entry.type in ("VIEW", "MATERIALIZED VIEW") and relation is not None:
            if entry.schema not in src.whole_schemas or relation in src.excluded_views:
                continue
            missing = sorted(str(t) for t in src.view_tables.get(relation, set())
                             if t in src.tables and t not in src.selected)
            if missing:
                errors.append(f"{entry.type.lower()} {relation} reads {', '.join(missing)}, which is not selected: "
                              f"select it, or exclude {relation.key} too")
                continue
        elif entry.type == "SCHEMA":
            pass  # decided once the other entries are known
        elif entry.type == "EXTENSION":
            if entry.name not in wanted_extensions:
                continue
        else:
            if entry.schema not in src.whole_schemas and key not in src.needed:
                continue
            if entry.type in ("FUNCTION", "PROCEDURE") and (entry.schema or "", entry.name) in src.c_functions:
                report.skip(str(entry), "written in C: recreate it by hand on the destination")
                continue
        try:
            result = rewriter.rewrite(entry.sql)
        except RewriteError as exc:
            errors.append(f"{entry}: {exc}")
            continue
        for problem in result.unsafe:
            report.review.append({"object": str(entry), "reason": problem})
        for statement in result.removed:
            report.skip(str(entry), f"left out with the columns the selection leaves out: {statement}")
        if not result.sql.strip():
            continue
        if entry.type in ("FUNCTION", "PROCEDURE", "AGGREGATE"):
            words = rewriter.unsafe_function_body(entry.sql)
            if words:
                report.review.append({"object": str(entry), "reason": "its body is not rewritten and mentions "
                                      f"renamed names: {', '.join(words)}"})
        planned = PlannedEntry(entry, result.sql, table if table in src.tables else None)
        plan.append(planned)
        kept_keys.add((entry.type, entry.schema, entry.name))
        if entry.schema:
            kept_schemas.add(entry.schema)
    schemas_needed = kept_schemas | src.whole_schemas

    def needed_schema(item: PlannedEntry) -> bool:
        if item.entry.type == "SCHEMA":
            return item.entry.name in schemas_needed
        if item.entry.type in ("COMMENT", "ACL"):
            target = _comment_target(item.entry)
            return not (target and target[0] == "SCHEMA" and target[2] not in schemas_needed)
        return True

    plan = [p for p in plan if needed_schema(p)]
    return plan, errors


def _referenced_table(entry: DumpEntry) -> QualifiedName | None:
    stmt = _first_statement(entry.sql)
    if stmt is None or type(stmt).__name__ != "AlterTableStmt":
        return None
    for cmd in stmt.cmds or ():
        const = cmd.def_
        if getattr(const, "pktable", None) is not None:
            return QualifiedName(const.pktable.schemaname or "public", const.pktable.relname)
    return None


# -- what the destination has -----------------------------------------------------------------------------------


def _created_object(sql_text: str, entry: DumpEntry | None = None) -> tuple[str, Any] | None:
    """(kind, lookup args) of the object a statement creates, to test whether it exists already."""
    stmt = _first_statement(sql_text)
    if stmt is None:
        return None
    kind = type(stmt).__name__

    def rel(rv: Any) -> str:
        return sql.Identifier(rv.schemaname or "public", rv.relname).as_string(None)

    if kind == "CreateSchemaStmt":
        return ("schema", stmt.schemaname)
    if kind in ("CreateStmt", "CreateSeqStmt", "ViewStmt"):
        rv = stmt.view if kind == "ViewStmt" else getattr(stmt, "relation", None) or stmt.sequence
        return ("relation", rel(rv))
    if kind == "CreateTableAsStmt":
        return ("relation", rel(stmt.into.rel))
    if kind == "CompositeTypeStmt":
        return ("type", rel(stmt.typevar))
    if kind in ("CreateEnumStmt", "CreateRangeStmt", "CreateDomainStmt") or (
            kind == "DefineStmt" and stmt.kind.name == "OBJECT_TYPE"):
        names = [n.sval for n in (stmt.domainname if kind == "CreateDomainStmt" else
                                  stmt.defnames if kind == "DefineStmt" else stmt.typeName)]
        return ("type", sql.Identifier(*names).as_string(None))
    if kind == "CreateFunctionStmt":
        names = [n.sval for n in stmt.funcname]
        return ("function", names)
    if kind == "DefineStmt" and stmt.kind.name == "OBJECT_OPERATOR":
        from pglast.stream import RawStream

        args = {d.defname: RawStream()(d.arg) for d in stmt.definition or () if d.defname in ("leftarg", "rightarg")}
        names = [n.sval for n in stmt.defnames]
        return ("operator", (names, args.get("leftarg", "NONE"), args.get("rightarg", "NONE")))
    if kind == "DefineStmt" and stmt.kind.name in ("OBJECT_AGGREGATE", "OBJECT_COLLATION"):
        names = [n.sval for n in stmt.defnames]
        return ("function" if stmt.kind.name == "OBJECT_AGGREGATE" else "collation", names)
    if kind == "RuleStmt":
        return ("rule", (rel(stmt.relation), stmt.rulename))
    if kind == "CreatePolicyStmt":
        return ("policy", (rel(stmt.table), stmt.policy_name))
    if kind == "CreateStatsStmt" and stmt.defnames:
        return ("statistics", [n.sval for n in stmt.defnames])
    if kind == "CreateExtensionStmt":
        return ("extension", stmt.extname)
    if kind == "IndexStmt" and stmt.idxname:
        return ("relation", sql.Identifier(stmt.relation.schemaname or "public", stmt.idxname).as_string(None))
    if kind == "AlterTableStmt":
        for cmd in stmt.cmds or ():
            if cmd.subtype.name == "AT_AttachPartition" and getattr(cmd.def_, "name", None) is not None:
                return ("attached", rel(cmd.def_.name))
            if cmd.subtype.name == "AT_AddConstraint" and getattr(cmd.def_, "conname", None):
                return ("constraint", (rel(stmt.relation), cmd.def_.conname))
    if kind == "CreateTrigStmt":
        return ("trigger", (rel(stmt.relation), stmt.trigname))
    return None


#: Existing objects of these kinds are neither conflicts nor compared: containers, and partitions already attached.
_NOT_COMPARED = ("schema", "extension", "attached")


def _exists(conn: psycopg.Connection, what: tuple[str, Any], tag: str) -> bool:
    kind, args = what
    query: str
    params: tuple[Any, ...]
    if kind == "schema":
        query, params = "SELECT 1 FROM pg_namespace WHERE nspname = %s", (args,)
    elif kind == "relation":
        query, params = "SELECT to_regclass(%s)", (args,)
    elif kind == "type":
        query, params = "SELECT to_regtype(%s)", (args,)
    elif kind == "function":
        schema = args[0] if len(args) == 2 else "public"
        signature = tag[tag.index("("):] if "(" in tag else "()"
        query, params = "SELECT to_regprocedure(%s)", (sql.Identifier(schema, args[-1]).as_string(None) + signature,)
    elif kind == "operator":
        names, left, right = args
        schema = names[0] if len(names) == 2 else "public"
        text = f"{sql.Identifier(schema).as_string(None)}.{names[-1]}({left},{right})"
        query, params = "SELECT to_regoperator(%s)", (text,)
    elif kind == "collation":
        query, params = "SELECT to_regcollation(%s)", (sql.Identifier(*args).as_string(None),)
    elif kind == "statistics":
        schema = args[0] if len(args) == 2 else "public"
        query, params = ("SELECT 1 FROM pg_statistic_ext s JOIN pg_namespace n ON n.oid = s.stxnamespace "
                         "WHERE n.nspname = %s AND s.stxname = %s", (schema, args[-1]))
    elif kind == "rule":
        query, params = "SELECT 1 FROM pg_rewrite WHERE ev_class = to_regclass(%s) AND rulename = %s", args
    elif kind == "policy":
        query, params = "SELECT 1 FROM pg_policy WHERE polrelid = to_regclass(%s) AND polname = %s", args
    elif kind == "extension":
        query, params = "SELECT 1 FROM pg_extension WHERE extname = %s", (args,)
    elif kind == "constraint":
        query, params = "SELECT 1 FROM pg_constraint WHERE conrelid = to_regclass(%s) AND conname = %s", args
    elif kind == "attached":
        query, params = "SELECT 1 FROM pg_inherits WHERE inhrelid = to_regclass(%s)", (args,)
    elif kind == "trigger":
        query, params = "SELECT 1 FROM pg_trigger WHERE tgrelid = to_regclass(%s) AND tgname = %s", args
    else:
        return False
    try:
        row = conn.execute(query, params).fetchone()
    except psycopg.Error:
        return False
    return row is not None and row[0] is not None


def normalize_sql(text: str) -> str:
    """A canonical form of SQL text (parse + deparse), so cosmetic differences do not count as differences.

    Column references qualified by the only relation of their query are unqualified: servers of different versions
    print view definitions both ways.
    """
    from pglast import parse_sql
    from pglast.parser import ParseError
    from pglast.stream import RawStream

    try:
        statements = parse_sql(text)
    except ParseError:
        return " ".join(text.split())
    out = []
    for raw in statements:
        stmt: Any = raw.stmt
        for node in _all_nodes(stmt):
            if type(node).__name__ == "SelectStmt":
                _unqualify_single_relation(node)
        out.append(RawStream()(stmt))
    return ";\n".join(out)


def _all_nodes(node: Any) -> list[Any]:
    from airflow_pgmigrate.engine.rewrite import _walk

    return list(_walk(node))


def _unqualify_single_relation(select: Any) -> None:
    from airflow_pgmigrate.engine.rewrite import _children

    items: Any = select.fromClause or ()
    if len(items) != 1 or type(items[0]).__name__ != "RangeVar":
        return
    name = items[0].alias.aliasname if items[0].alias else items[0].relname

    def fix(node: Any) -> None:
        kind = type(node).__name__
        if kind == "SelectStmt":
            return  # a subquery has its own scope
        if kind == "ColumnRef":
            fields: Any = node.fields or ()
            if len(fields) == 2 and getattr(fields[0], "sval", None) == name and hasattr(fields[1], "sval"):
                node.fields = (fields[1],)
            return
        for _, child in _children(node):
            fix(child)

    for attr in ("targetList", "whereClause", "groupClause", "havingClause", "sortClause"):
        value = getattr(select, attr, None)
        for item in value if isinstance(value, tuple) else (value,):
            if item is not None:
                fix(item)


# -- running ----------------------------------------------------------------------------------------------------


def _with_extensions(entries: list[DumpEntry], extensions: list[tuple[str, str]]) -> list[DumpEntry]:
    """pg_dump leaves extensions out when dumping chosen schemas: add their creation after the schemas."""
    if not extensions:
        return entries
    created = [DumpEntry(name, "EXTENSION", None,
                         sql.SQL("CREATE EXTENSION IF NOT EXISTS {} WITH SCHEMA {};\n").format(
                             sql.Identifier(name), sql.Identifier(schema)).as_string(None))
               for name, schema in extensions]
    split = 0
    while split < len(entries) and entries[split].type in ("SCHEMA", "COMMENT") and entries[split].schema is None:
        split += 1
    return entries[:split] + created + entries[split:]


def _dump_args(phase: str, config: MigrationConfig, schemas: list[str]) -> list[str]:
    args = ["--schema-only", f"--section={phase.replace('_', '-')}"]
    if not config.schema_migration.owner_mapping:
        args.append("--no-owner")
    if not config.schema_migration.migrate_grants:
        args.append("--no-privileges")
    for schema in schemas:
        args += ["--schema", _pattern_literal(schema)]
    return args


def _pattern_literal(name: str) -> str:
    """A pg_dump -n pattern that matches exactly this name."""
    return '"' + name.replace('"', '""') + '"'


class RoleMapper:
    """Ownership and grants: map source roles to destination roles, drop what cannot be applied."""

    def __init__(self, owner_mapping: dict[str, str], existing_roles: set[str], migrate_grants: bool) -> None:
        self.mapping = owner_mapping
        self.existing = existing_roles
        self.migrate_grants = migrate_grants

    def target(self, role: str) -> str | None:
        mapped = self.mapping.get(role, role)
        return mapped if mapped in self.existing else None

    @staticmethod
    def _skip(report: SchemaReport, what: str, reason: str) -> None:
        if {"object": what, "reason": reason} not in report.skipped:  # pg_dump writes one statement per grantee
            report.skip(what, reason)

    def _grant(self, stmt: Any, report: SchemaReport, what: str) -> bool:
        """Map the roles of a GRANT / REVOKE or ALTER DEFAULT PRIVILEGES in place; False when nothing of it applies."""
        if type(stmt).__name__ == "AlterDefaultPrivilegesStmt":
            for option in stmt.options or ():
                if option.defname != "roles":
                    continue
                specs = [r for r in option.arg or () if getattr(r, "rolename", None)]
                missing = [r.rolename for r in specs if self.target(r.rolename) is None]
                if missing:
                    self._skip(report, what, f"default privileges of roles missing in the destination: "
                                             f"{', '.join(missing)}")
                    return False
                for spec in specs:
                    spec.rolename = self.target(spec.rolename)
            stmt = stmt.action
        grantees: list[Any] = []
        dropped: list[str] = []
        for grantee in stmt.grantees or ():
            role = getattr(grantee, "rolename", None)
            target = self.target(role) if role else None
            if role and target is None:
                dropped.append(role)
                continue
            if role:
                grantee.rolename = target
            grantees.append(grantee)
        if dropped:
            self._skip(report, what, f"grants to roles missing in the destination: {', '.join(dropped)}")
        stmt.grantees = tuple(grantees)
        return bool(grantees)

    def apply(self, text: str, report: SchemaReport, what: str) -> str:
        from pglast import parse_sql
        from pglast.parser import ParseError
        from pglast.stream import RawStream

        try:
            statements = parse_sql(text)
        except ParseError:
            return text
        kept: list[str] = []
        changed = False
        skipping_grantor = False  # between SET SESSION AUTHORIZATION of a missing role and its RESET
        for raw in statements:
            stmt: Any = raw.stmt
            kind = type(stmt).__name__
            role_specs: list[Any] = []
            if kind == "VariableSetStmt" and stmt.name == "session_authorization":
                # pg_dump wraps grants whose grantor is not the owner in SET / RESET SESSION AUTHORIZATION.
                changed = True
                if stmt.kind.name == "VAR_SET_VALUE" and stmt.args:
                    grantor = stmt.args[0].val.sval
                    target = self.target(grantor)
                    if target is None:
                        skipping_grantor = True
                        self._skip(report, what, f"grants made by a role missing in the destination: {grantor}")
                        continue
                    stmt.args[0].val.sval = target
                elif skipping_grantor:
                    skipping_grantor = False
                    continue
                kept.append(RawStream()(stmt))
                continue
            if skipping_grantor:
                continue
            if kind == "AlterOwnerStmt":
                role_specs = [stmt.newowner]
            elif kind == "AlterTableStmt" and all(c.subtype.name == "AT_ChangeOwner" for c in stmt.cmds or ()):
                role_specs = [c.newowner for c in stmt.cmds]
            elif kind in ("GrantStmt", "GrantRoleStmt", "AlterDefaultPrivilegesStmt"):
                changed = True
                if self.migrate_grants and self._grant(stmt, report, what):
                    kept.append(RawStream()(stmt))
                continue
            if role_specs:
                targets = [self.target(r.rolename) if getattr(r, "rolename", None) else None for r in role_specs]
                if any(t is None for t in targets):
                    changed = True
                    continue  # the destination account keeps ownership
                for spec, role in zip(role_specs, targets, strict=True):
                    spec.rolename = role
                changed = True
            kept.append(RawStream()(stmt))
        if not changed:
            return text
        return ";\n".join(kept) + (";\n" if kept else "")


def migrate_schema(
    config: MigrationConfig,
    source: ConnectionInfo,
    destination: ConnectionInfo,
    phase: str,
    *,
    state: MigrationState | None = None,
    log: Callable[[str], None] = lambda message: None,
) -> SchemaReport:
    """Run one phase (``pre_data`` or ``post_data``) and return its report; raise SchemaMigrationError on failure."""
    if phase not in PHASES:
        raise SchemaMigrationError(f"unknown schema phase {phase!r}: use one of {', '.join(PHASES)}")
    started = time.monotonic()
    report = SchemaReport(config.name, phase)
    with connect(source) as src_conn:
        src = read_source_schema(src_conn, config)
    with connect(destination) as dst_conn:
        dst_major = catalog.server_version_num(dst_conn) // 10000
        roles = {r[0] for r in dst_conn.execute("SELECT rolname FROM pg_roles")}
    dump = find_pg_dump(src.major)
    report.pg_dump = f"{dump.major} ({dump.path})"
    schemas = sorted(src.whole_schemas | {t.schema for t in src.selected}
                     | {s for _, s, _ in src.needed if s is not None})
    if not schemas:
        raise SchemaMigrationError("the selection matches nothing in the source")
    text = run_pg_dump(dump, source, _dump_args(phase, config, schemas))
    preamble, entries = split_dump(text)
    if phase == "pre_data":
        entries = _with_extensions(entries, src.wanted_extensions(config.objects.selects_everything))
    log(f"schema phase={phase} pg_dump={dump.major} entries={len(entries)} schemas={','.join(schemas)}")
    rewriter = DefinitionRewriter(NameMapper(config.mapping), src.columns, src.relkinds, src.left_out_columns(config))
    plan, errors = plan_entries(entries, src, config, rewriter, report)
    if errors:
        raise SchemaMigrationError("schema migration cannot start, nothing was changed:\n- " + "\n- ".join(errors),
                                   report.to_dict())
    if config.schema_migration.owner_mapping or config.schema_migration.migrate_grants:
        mapper = RoleMapper(config.schema_migration.owner_mapping, roles, config.schema_migration.migrate_grants)
        for item in plan:
            item.sql = mapper.apply(item.sql, report, str(item.entry))
        plan = [p for p in plan if p.sql.strip()]

    with connect(destination) as dst_conn:
        target_schemas = {rewriter.schema(s) for s in schemas}
        _decide_existing(dst_conn, plan, config, phase, state, destination, dst_major, target_schemas, report)
    todo = [p for p in plan if p.run]
    for item in plan:
        if not item.run:
            log(f"schema skip object={item.entry} reason={item.reason}")
    log(f"schema phase={phase} to_create={len(todo)} skipped={len(plan) - len(todo)}")
    if phase == "pre_data":
        def record(conn: psycopg.Connection) -> None:
            # In the phase's own transaction: a worker dying right after the commit still leaves the objects
            # marked as this migration's, so the retry skips them instead of reporting conflicts.
            assert state is not None
            state.write(conn, "schema.pre_data", {**report.to_dict(), "completed": True})

        _run_in_one_transaction(destination, preamble, todo, report, log,
                                before_commit=record if state is not None else None)
    else:
        _run_post_data(destination, preamble, todo, config.schema_migration.index_jobs, report, log)
        _refresh_materialized_views(destination, src, config, rewriter, report, log)
    report.seconds = time.monotonic() - started
    if state is not None:
        state.put(f"schema.{phase}", {**report.to_dict(), "completed": True})
    log(f"schema phase={phase} done created={sum(report.created.values())} skipped={len(report.skipped)} "
        f"differing={len(report.differing)} review={len(report.review)} seconds={report.seconds:.1f}")
    return report


def _decide_existing(conn: psycopg.Connection, plan: list[PlannedEntry], config: MigrationConfig, phase: str,
                     state: MigrationState | None, destination: ConnectionInfo, dst_major: int,
                     target_schemas: set[str], report: SchemaReport) -> None:
    """Mark entries whose object already exists: identical ones are skipped, differing ones reported; in conflict
    mode ``error`` an existing object not created by this migration stops the phase before any change."""
    existing: list[PlannedEntry] = []
    for item in plan:
        what = _created_object(item.sql)
        if what is not None and _exists(conn, what, item.entry.name):
            item.creates = (what[0], str(what[1]))
            existing.append(item)
    skipped_tables = {p.table for p in existing if p.entry.type == "TABLE" and p.table is not None}
    skipped_keys = {p.entry.key for p in existing}
    for item in plan:
        if item in existing:
            continue
        if item.table in skipped_tables and item.entry.type in (
                "DEFAULT", "SEQUENCE", "SEQUENCE OWNED BY", "TABLE ATTACH", "COMMENT", "ACL"):
            item.run, item.reason = False, "belongs to a table that exists already"
        elif item.entry.type in ("COMMENT", "ACL"):
            target = _comment_target(item.entry)
            if target is not None and target in skipped_keys:
                item.run, item.reason = False, "belongs to an object that exists already"
    if not existing:
        return
    ours = phase == "post_data" or bool(state is not None and (state.get("schema.pre_data") or {}).get("completed"))
    schemas_only = all(p.creates and p.creates[0] in _NOT_COMPARED for p in existing)
    conflicts = [p for p in existing if p.creates and p.creates[0] not in _NOT_COMPARED]
    if conflicts and not ours and config.conflicting_tables == "error":
        names = ", ".join(str(p.entry) for p in conflicts[:20])
        raise SchemaMigrationError(
            f"{len(conflicts)} object(s) already exist in the destination: {names}; nothing was changed. Drop or "
            "rename them, map the tables to other names, or set conflicting_tables: ignore", report.to_dict())
    destination_entries: set[str] = set()
    if not schemas_only:
        schemas = [r[0] for r in conn.execute("SELECT nspname FROM pg_namespace WHERE nspname = ANY(%s) ORDER BY 1",
                                              (sorted(target_schemas),))]
        text = run_pg_dump(find_pg_dump(dst_major), destination, _dump_args(phase, config, schemas))
        destination_entries = {normalize_sql(e.sql) for e in split_dump(text)[1]}
    for item in existing:
        item.run = False
        if item.creates and item.creates[0] in _NOT_COMPARED:
            item.reason = "exists already"
            continue
        if normalize_sql(item.sql) in destination_entries:
            item.reason = "exists already, identical"
            report.skip(str(item.entry), item.reason)
        else:
            item.reason = "exists already, differs"
            report.differing.append({"object": str(item.entry), "expected": redact(item.sql.strip())})


def _execute_entry(conn: psycopg.Connection, item: PlannedEntry) -> None:
    try:
        conn.execute(item.sql)
    except psycopg.Error as exc:
        message = (exc.diag.message_primary or str(exc)).strip()
        # The statement may hold a secret (a user mapping's password option): redacted.
        raise SchemaMigrationError(redact(f"creating {item.entry} failed: {message}\n{item.sql.strip()}")) from None


def _record(report: SchemaReport, item: PlannedEntry) -> None:
    report.created[item.entry.type.lower()] += 1
    report.objects.append(str(item.entry))


def _in_one_transaction(destination: ConnectionInfo, preamble: str, items: list[PlannedEntry],
                        report: SchemaReport,
                        before_commit: Callable[[psycopg.Connection], None] | None = None) -> None:
    """Execute entries in one destination transaction: all of them, or (on the first error) none."""
    with connect(destination, autocommit=False) as conn:
        conn.execute(preamble)
        try:
            for item in items:
                _execute_entry(conn, item)
                _record(report, item)
        except SchemaMigrationError:
            conn.rollback()
            raise
        if before_commit is not None:
            before_commit(conn)
        conn.commit()


def _run_in_one_transaction(destination: ConnectionInfo, preamble: str, todo: list[PlannedEntry],
                            report: SchemaReport, log: Callable[[str], None],
                            before_commit: Callable[[psycopg.Connection], None] | None = None) -> None:
    try:
        _in_one_transaction(destination, preamble, todo, report, before_commit)
    except SchemaMigrationError as exc:
        report.created.clear()
        report.objects.clear()
        raise SchemaMigrationError(f"{exc}\nthe phase was rolled back: the destination is as it was",
                                   report.to_dict()) from None
    for kind, count in sorted(report.created.items()):
        log(f"schema created type={kind} count={count}")


def _run_post_data(destination: ConnectionInfo, preamble: str, todo: list[PlannedEntry], jobs: int,
                   report: SchemaReport, log: Callable[[str], None]) -> None:
    parallel = [p for p in todo if p.entry.type in PARALLEL_TYPES]
    attach = [p for p in todo if p.entry.type == "INDEX ATTACH"]
    rest = [p for p in todo if p not in parallel and p not in attach]
    failures: list[str] = []

    def build(items: list[PlannedEntry]) -> list[tuple[PlannedEntry, str | None, float]]:
        done: list[tuple[PlannedEntry, str | None, float]] = []
        with connect(destination) as conn:
            conn.execute(preamble)
            for item in items:
                t0 = time.monotonic()
                try:
                    _execute_entry(conn, item)
                    done.append((item, None, time.monotonic() - t0))
                except SchemaMigrationError as exc:
                    done.append((item, str(exc), time.monotonic() - t0))
        return done

    if parallel:
        # Largest work first would need sizes; pg_dump's order (by table) keeps one table's builds apart.
        lanes: list[list[PlannedEntry]] = [[] for _ in range(max(1, min(jobs, len(parallel))))]
        for i, item in enumerate(parallel):
            lanes[i % len(lanes)].append(item)
        with ThreadPoolExecutor(max_workers=len(lanes)) as pool:
            for results in pool.map(build, lanes):
                for item, error, seconds in results:
                    if error:
                        failures.append(error)
                    else:
                        _record(report, item)
                        log(f"schema built {item.entry.type.lower()}={item.entry.name} seconds={seconds:.2f}")
    if failures:
        raise SchemaMigrationError("post-data failed; what was built stays, and a re-run skips it:\n- "
                                   + "\n- ".join(failures), report.to_dict())
    for item, error, _seconds in build(attach):
        if error:
            raise SchemaMigrationError(error, report.to_dict())
        _record(report, item)
    try:
        _in_one_transaction(destination, preamble, rest, report)
    except SchemaMigrationError as exc:
        raise SchemaMigrationError(f"{exc}\ntriggers, foreign keys and the rest were rolled back",
                                   report.to_dict()) from None


def _refresh_materialized_views(destination: ConnectionInfo, src: SourceSchema, config: MigrationConfig,
                                rewriter: DefinitionRewriter, report: SchemaReport,
                                log: Callable[[str], None]) -> None:
    views = sorted(name for name, kind in src.relkinds.items()
                   if kind == "m" and name.schema in src.whole_schemas and name not in src.excluded_views)
    if not views:
        return
    with connect(destination) as conn:
        for view in views:
            target = rewriter.relation(view)
            ident = sql.Identifier(target.schema, target.name)
            if conn.execute("SELECT to_regclass(%s)", (ident.as_string(conn),)).fetchone()[0] is None:  # type: ignore[index]
                continue
            t0 = time.monotonic()
            conn.execute(sql.SQL("REFRESH MATERIALIZED VIEW {}").format(ident))
            report.refreshed.append(str(target))
            log(f"schema refreshed materialized_view={target} seconds={time.monotonic() - t0:.2f}")


def expected_definitions(config: MigrationConfig, source: ConnectionInfo) -> list[str]:
    """The normalised definitions the destination should hold after both phases, from the source and the config.

    Extensions are left out (pg_dump of chosen schemas omits them), so this compares with
    :func:`actual_definitions`.
    """
    with connect(source) as conn:
        src = read_source_schema(conn, config)
    dump = find_pg_dump(src.major)
    schemas = sorted(src.whole_schemas | {t.schema for t in src.selected}
                     | {s for _, s, _ in src.needed if s is not None})
    rewriter = DefinitionRewriter(NameMapper(config.mapping), src.columns, src.relkinds, src.left_out_columns(config))
    out: list[str] = []
    for phase in PHASES:
        _, entries = split_dump(run_pg_dump(dump, source, _dump_args(phase, config, schemas)))
        plan, _ = plan_entries(entries, src, config, rewriter, SchemaReport(config.name, phase))
        out += [normalize_sql(p.sql) for p in plan]
    return sorted(out)


def actual_definitions(config: MigrationConfig, destination: ConnectionInfo, schemas: list[str]) -> list[str]:
    """The normalised definitions the destination holds in these schemas (pg_dump of both sections)."""
    with connect(destination) as conn:
        major = catalog.server_version_num(conn) // 10000
    dump = find_pg_dump(major)
    out: list[str] = []
    for phase in PHASES:
        _, entries = split_dump(run_pg_dump(dump, destination, _dump_args(phase, config, schemas)))
        out += [normalize_sql(e.sql) for e in entries if e.schema != config.state_schema
                and not (e.type == "SCHEMA" and e.name == config.state_schema)]
    return sorted(out)


__all__ = ["PHASES", "SchemaMigrationError", "SchemaReport", "actual_definitions", "expected_definitions",
           "migrate_schema", "normalize_sql", "read_source_schema"]
