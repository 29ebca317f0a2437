"""Schema migration: object definitions from the source to the destination, in the DTS order.

``pre_data`` (before the full load) creates schemas, extensions, types, domains, sequences, tables, views, functions,
rules and comments in ONE destination transaction. ``post_data`` (after the full load) builds primary keys, unique and
exclusion constraints and indexes in parallel (skipping those the full load built as each table's copy committed,
see :func:`table_builds`), then triggers, foreign keys and the rest in one transaction, and refreshes materialized
views.

pg_dump is the source of truth for definitions. Both sections of the database are dumped; their entries are selected
(only the selected tables, what they need, whole schemas when schemas are selected, database-wide objects with the
whole database; comments and grants with their object), renamed through PostgreSQL's parser, compared with what
already exists in the destination, and executed. Re-running a phase changes nothing: existing identical objects are
skipped and differing ones reported.
"""

from __future__ import annotations

import fnmatch
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from airflow_pgmigrate.engine import catalog
from airflow_pgmigrate.engine.connection import ConnectionInfo, connect
from airflow_pgmigrate.engine.ddl_capture import is_capture_object
from airflow_pgmigrate.engine.definition_only import (
    keys_into_tables_without_rows,
    tables_without_rows,
    without_rows_problem,
    without_rows_reason,
)
from airflow_pgmigrate.engine.foreign_keys import ForeignKey
from airflow_pgmigrate.engine.matviews import sync_materialized_views
from airflow_pgmigrate.engine.names import NameMapper, QualifiedName, TableSelector, parse_qualified_name
from airflow_pgmigrate.engine.pgdump import (
    DumpEntry,
    PgDump,
    available_pg_dumps,
    find_pg_dump,
    object_family,
    reset_entry_settings,
    run_pg_dump,
    split_dump,
    supports_tls,
    tag_name,
    tag_target,
)
from airflow_pgmigrate.engine.public_privileges import narrowed_public_privileges
from airflow_pgmigrate.engine.rewrite import (
    DefinitionRewriter,
    RewriteError,
    deparse,
    parse_sql_name,
    statement_text,
)
from airflow_pgmigrate.engine.secrets import redact
from airflow_pgmigrate.engine.state import MigrationState
from airflow_pgmigrate.exceptions import PgMigrateError

if TYPE_CHECKING:
    from airflow_pgmigrate.config import MigrationConfig

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
    "PROCEDURAL LANGUAGE": "a procedural language needs its handler, written in C, on the destination: install it "
                           "there (as an extension, if it comes as one)",
    "TRANSFORM": "transforms need functions written in C: recreate them by hand on the destination",
    "DATABASE": "database properties are not migrated",
    "DATABASE PROPERTIES": "database properties are not migrated",
}
#: Entry types tied to one table: they migrate exactly when the table does.
TABLE_BOUND_TYPES = frozenset({"TABLE", "TABLE ATTACH", "DEFAULT", "CONSTRAINT", "FK CONSTRAINT", "CHECK CONSTRAINT",
                               "INDEX", "INDEX ATTACH", "TRIGGER", "RULE", "POLICY", "ROW SECURITY", "STATISTICS",
                               "SEQUENCE OWNED BY"})

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
    #: (schema, signature as COMMENT and ACL tags write it, with argument names) -> the entry's own signature.
    routine_tags: dict[tuple[str, str], str] = field(default_factory=dict)
    #: Whether the selection is the whole database (database-wide objects migrate only then).
    everything: bool = False
    #: (schema, routine signature) -> tables whose row type its signature or (SQL-standard) body uses.
    routine_tables: dict[tuple[str, str], set[QualifiedName]] = field(default_factory=dict)
    #: Index of a partition -> the index of its parent it is attached to.
    index_parents: dict[QualifiedName, QualifiedName] = field(default_factory=dict)
    #: Indexes that back a constraint (primary key, unique, exclusion).
    constraint_indexes: set[QualifiedName] = field(default_factory=set)
    #: Every schema of the source but the system's.
    all_schemas: set[str] = field(default_factory=set)
    #: Relations an extension creates (they exist wherever the extension is installed).
    extension_relations: set[QualifiedName] = field(default_factory=set)
    #: (table, constraint) of foreign keys into a table whose rows do not migrate (``objects.exclude_data``).
    keys_into_without_rows: dict[tuple[QualifiedName, str], ForeignKey] = field(default_factory=dict)

    def dumped_schemas(self) -> list[str]:
        """Schemas holding something that migrates: whole schemas, those of selected tables and of what they need."""
        return sorted(self.whole_schemas | {t.schema for t in self.selected}
                      | {s for _, s, _ in self.needed if s is not None})

    def undumped_schemas(self) -> list[str]:
        """Schemas pg_dump leaves out (``--exclude-schema``): it neither reads nor locks their tables, while
        database-wide objects are still dumped (they are not with ``--schema``)."""
        return sorted(self.all_schemas - set(self.dumped_schemas()))

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
        """A view or materialized view migrates with its whole schema, unless excluded or reading a table or view
        that does not migrate."""
        if view.schema not in self.whole_schemas or view in self.excluded_views:
            return False
        return not self.view_reads_unmigrated(view)

    def view_reads_unmigrated(self, view: QualifiedName) -> list[QualifiedName]:
        """The tables not selected, and the views and materialized views not migrated (excluded, or in a schema
        that does not migrate whole), that a view or materialized view reads directly."""
        return sorted(t for t in self.view_tables.get(view, set())
                      if (t in self.tables and t not in self.selected)
                      or (self.relkinds.get(t) in ("v", "m") and t not in self.extension_relations
                          and (t.schema not in self.whole_schemas or t in self.excluded_views)))

    @property
    def columns(self) -> dict[QualifiedName, list[str]]:
        return {name: t.column_names for name, t in self.tables.items()}


#: A routine's signature as pg_dump names its entry: argument types only, qualified as with an empty search_path.
ROUTINE_TAG = ("p.proname || '(' || coalesce((SELECT string_agg(format_type(a.t, NULL), ', ' ORDER BY a.i) "
               "FROM unnest(p.proargtypes) WITH ORDINALITY AS a(t, i)), '') || ')'")


def read_source_schema(conn: psycopg.Connection, config: MigrationConfig) -> SourceSchema:
    """What the migration needs of the source catalog; type names read as pg_dump writes them (empty search_path)."""
    path = conn.execute("SELECT current_setting('search_path')").fetchone()[0]  # type: ignore[index]
    conn.execute("SELECT set_config('search_path', '', false)")
    try:
        return _read_source_schema(conn, config)
    finally:
        conn.execute("SELECT set_config('search_path', %s, false)", (path,))


def _read_source_schema(conn: psycopg.Connection, config: MigrationConfig) -> SourceSchema:
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
    routines = conn.execute(
        "SELECT n.nspname, quote_ident(p.proname) || '(' || pg_get_function_identity_arguments(p.oid) || ')', "  # noqa: S608 - constant
        + ROUTINE_TAG + ", l.lanname = 'c' FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
        "JOIN pg_language l ON l.oid = p.prolang WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')"
    ).fetchall()
    c_funcs = {(s, tag) for s, _, tag, is_c in routines if is_c}
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
    source = SourceSchema(tables, selected, relkinds, index_tables, sequence_owners, c_funcs, needed, whole,
                          excluded_views, view_tables, version // 10000, extensions,
                          {(s, named): tag for s, named, tag, _ in routines}, selection.selects_everything)
    _read_dependencies(conn, source)
    source.all_schemas = {s for s in catalog.list_schemas(conn) if not s.startswith("pg_")}
    source.extension_relations = {QualifiedName(n, c) for n, c in conn.execute(
        "SELECT n.nspname, c.relname FROM pg_depend d JOIN pg_class c ON c.oid = d.objid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE d.classid = 'pg_class'::regclass "
        "AND d.deptype = 'e'").fetchall()}
    source.keys_into_without_rows = {(k.table, k.constraint): k for k in keys_into_tables_without_rows(
        conn, tables_without_rows(conn, selection.exclude_data))}
    return source


def _read_dependencies(conn: psycopg.Connection, src: SourceSchema) -> None:
    """The tables routines use, and how indexes hang together."""
    for schema, routine, ts, tn in conn.execute(
        "SELECT n.nspname, " + ROUTINE_TAG + ", tn.nspname, t.relname FROM pg_proc p "  # noqa: S608 - constant
        "JOIN pg_namespace n ON n.oid = p.pronamespace "
        "JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'n' "
        "LEFT JOIN pg_type ty ON d.refclassid = 'pg_type'::regclass AND ty.oid = d.refobjid "
        "JOIN pg_class t ON t.oid = CASE WHEN d.refclassid = 'pg_class'::regclass THEN d.refobjid "
        "  ELSE coalesce(nullif(ty.typrelid, 0), (SELECT e.typrelid FROM pg_type e WHERE e.oid = ty.typelem)) END "
        " AND t.relkind IN ('r', 'p') JOIN pg_namespace tn ON tn.oid = t.relnamespace"
    ).fetchall():
        src.routine_tables.setdefault((schema, routine), set()).add(QualifiedName(ts, tn))
    for cs, cn, ps, pn in conn.execute(
        "SELECT nc.nspname, c.relname, np.nspname, p.relname FROM pg_inherits i "
        "JOIN pg_class c ON c.oid = i.inhrelid AND c.relkind IN ('i', 'I') JOIN pg_class p ON p.oid = i.inhparent "
        "JOIN pg_namespace nc ON nc.oid = c.relnamespace JOIN pg_namespace np ON np.oid = p.relnamespace"
    ).fetchall():
        src.index_parents[QualifiedName(cs, cn)] = QualifiedName(ps, pn)
    src.constraint_indexes = {QualifiedName(s, n) for s, n in conn.execute(
        "SELECT n.nspname, c.relname FROM pg_constraint k JOIN pg_class c ON c.oid = k.conindid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE k.contype IN ('p', 'u', 'x')").fetchall()}


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
#: A sequence function called with a sequence name as a literal: nextval('invoice_no'), currval('"S".x');
#: the schema (when written) and the name are captured apart.
_SEQUENCE_CALL = rf"(?:nextval|currval|setval)\s*\(\s*'(?:({_NAME_PART})\.)?({_NAME_PART})'"
_NAME_TOKEN = rf"^{_NAME_PART}$"


def _sequences_called_by_name(conn: psycopg.Connection,
                              needed: set[tuple[str, str | None, str]]) -> set[tuple[str, str | None, str]]:
    """Sequences that a needed function calls by name in its body (``nextval('invoice_no')``): the catalog records
    no dependency on them, yet the function fails on the destination without them. An unqualified name resolves as
    the function would: in the search_path it sets, else in its own schema, else in the session's path."""
    functions = sorted((s, n) for kind, s, n in needed if kind == "FUNCTION" and s)
    if not functions:
        return set()
    rows = conn.execute(
        """
        SELECT DISTINCT sn.nspname, s.relname
          FROM pg_proc p JOIN pg_namespace pn ON pn.oid = p.pronamespace
          JOIN unnest(%(schemas)s::text[], %(names)s::text[]) AS f(s, n)
            ON f.s = pn.nspname AND f.n = p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')'
          CROSS JOIN LATERAL regexp_matches(p.prosrc, %(call)s, 'gi') AS m
          CROSS JOIN LATERAL (SELECT CASE WHEN m[1] IS NOT NULL THEN to_regclass(m[1] || '.' || m[2]) ELSE coalesce(
              (SELECT to_regclass(trim(e) || '.' || m[2])
                 FROM unnest(string_to_array((SELECT substr(c, 13) FROM unnest(p.proconfig) c
                                               WHERE c LIKE 'search_path=%%'), ',')) WITH ORDINALITY AS x(e, i)
                WHERE trim(e) ~ %(token)s AND to_regclass(trim(e) || '.' || m[2]) IS NOT NULL ORDER BY i LIMIT 1),
              to_regclass(quote_ident(pn.nspname) || '.' || m[2]), to_regclass(m[2])) END) AS r(seq)
          JOIN pg_class s ON s.oid = r.seq AND s.relkind = 'S'
          JOIN pg_namespace sn ON sn.oid = s.relnamespace
        """,
        {"schemas": [s for s, _ in functions], "names": [n for _, n in functions], "call": _SEQUENCE_CALL,
         "token": _NAME_TOKEN},
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
               pn.nspname, ROUTINE_TAG
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
        """.replace("ROUTINE_TAG", ROUTINE_TAG),
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
    #: (family, schema, name) of the entry's object in the source, and of the object a comment or grant is about.
    key: tuple[str, str | None, str] = ("", None, "")
    target: tuple[str, str | None, str] | None = None
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
        return _own_relation(entry) or QualifiedName(schema, entry.name)
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
        return _commented_table(stmt, src)
    return None


def _commented_table(stmt: Any, src: SourceSchema) -> QualifiedName | None:
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


def _own_relation(entry: DumpEntry) -> QualifiedName | None:
    """The relation a TABLE or TABLE ATTACH entry creates, from its SQL: pg_dump's header shows a newline in a name as
    a space, the statement has the name exactly."""
    if " " not in entry.name and " " not in (entry.schema or ""):
        return None
    stmt = _first_statement(entry.sql)
    kind = type(stmt).__name__
    rv = None
    if kind in ("CreateStmt", "CreateForeignTableStmt"):
        rv = stmt.base.relation if kind == "CreateForeignTableStmt" else stmt.relation
    elif kind == "AlterTableStmt":
        rv = next((getattr(c.def_, "name", None) for c in stmt.cmds or ()
                   if c.subtype.name == "AT_AttachPartition"), None)
    if rv is None or not hasattr(rv, "relname"):
        return None
    return QualifiedName(rv.schemaname or entry.schema or "public", rv.relname)


def _entry_key(entry: DumpEntry, table: QualifiedName | None) -> tuple[str, str | None, str]:
    """(family, schema, name) of the object an entry creates, as COMMENT and ACL tags are resolved to."""
    if entry.type == "TABLE" and table is not None:
        return ("RELATION", table.schema, table.name)
    return (object_family(entry.type), entry.schema, entry.name)


def _target_key(entry: DumpEntry, src: SourceSchema) -> tuple[str, str | None, str] | None:
    target = tag_target(entry)
    if target is not None and target[0] == "ROUTINE" and target[1] is not None:
        return ("ROUTINE", target[1], src.routine_tags.get((target[1], target[2]), target[2]))
    return target


#: Entry types of database-wide objects (no schema): they migrate with a whole-database selection.
DATABASE_WIDE_REASON = "a database-wide object: migrated when the whole database is selected (objects empty)"


@dataclass
class _Planner:
    """The decisions of one planning pass: which entries migrate, and what the others became."""

    src: SourceSchema
    config: MigrationConfig
    report: SchemaReport
    errors: list[str] = field(default_factory=list)
    #: (family, schema, name) -> whether the object migrates.
    decided: dict[tuple[str, str | None, str], bool] = field(default_factory=dict)
    #: Objects left out on purpose (reported) -> the reason, for their comments and grants.
    left_out: dict[tuple[str, str | None, str], str] = field(default_factory=dict)
    #: ``schema_migration.exclude_indexes`` compiled, and the patterns that matched an index.
    index_patterns: dict[str, re.Pattern[str]] = field(default_factory=dict)
    matched: set[str] = field(default_factory=set)
    #: (table, constraint) of foreign keys left out by ``foreign_keys_to_excluded: skip`` -> the reason.
    skipped_keys: dict[tuple[QualifiedName, str], str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.index_patterns = {p: re.compile(fnmatch.translate(p))
                               for p in self.config.schema_migration.exclude_indexes}

    def skip(self, entry: DumpEntry, key: tuple[str, str | None, str], reason: str) -> bool:
        self.report.skip(str(entry), reason)
        self.left_out[key] = reason
        return False

    def keep(self, entry: DumpEntry, table: QualifiedName | None) -> bool:
        """Whether an entry migrates (before renaming); records dependency errors and reported skips."""
        src = self.src
        key = _entry_key(entry, table)
        if entry.type.startswith("PUBLICATION") and entry.name.split(" ")[0] == self.config.publication_name:
            return False  # the migration's own, for incremental sync
        if is_capture_object(entry.type, entry.schema, entry.name, entry.sql):
            return False  # a migration's DDL capture on the source (incremental.ddl: replicate)
        if entry.type in SKIPPED_TYPES:
            return self.skip(entry, key, SKIPPED_TYPES[entry.type])
        if entry.type in ("ACL", "COMMENT", "SECURITY LABEL") and table is None:
            return self._attached(entry)
        if table is not None and (table in src.tables or entry.type in TABLE_BOUND_TYPES
                                  or src.relkinds.get(table) in ("v", "m")):
            return self._table_bound(entry, table)
        if entry.type in ("VIEW", "MATERIALIZED VIEW") and entry.schema is not None:
            return self._view(entry, QualifiedName(entry.schema, entry.name))
        if entry.type == "SCHEMA":
            return True  # decided once the other entries are known
        if entry.type == "EXTENSION":
            return entry.name in {name for name, _ in src.wanted_extensions(src.everything)}
        if entry.schema is None:
            if src.everything or (entry.type == "CAST" and self._cast_selected(entry)):
                return True
            return self.skip(entry, key, DATABASE_WIDE_REASON)
        if entry.schema not in src.whole_schemas and (entry.type, entry.schema, entry.name) not in src.needed:
            return False
        if entry.type in ("FUNCTION", "PROCEDURE") and (entry.schema or "", entry.name) in src.c_functions:
            return self.skip(entry, key, "written in C: recreate it by hand on the destination")
        if entry.type in ("FUNCTION", "PROCEDURE", "AGGREGATE"):
            return self._routine(entry)
        return True

    def _routine(self, entry: DumpEntry) -> bool:
        """A routine whose signature or body uses the row type of a table that is not selected cannot be created."""
        src = self.src
        missing = sorted(str(t) for t in src.routine_tables.get((entry.schema or "", entry.name), set())
                         if t in src.tables and t not in src.selected)
        if missing:
            self.errors.append(f"{entry.type.lower()} {entry.schema}.{entry.name} uses the row type of "
                               f"{', '.join(missing)}, which is not selected: select it too (a routine migrates "
                               "with its schema; list the tables to migrate instead of the schema to leave it out)")
            return False
        return True

    def excluded_index(self, index: QualifiedName) -> str | None:
        """The ``exclude_indexes`` pattern that leaves out this index (or the index it is attached to)."""
        seen: set[QualifiedName] = set()
        current: QualifiedName | None = index
        while current is not None and current not in seen:
            seen.add(current)
            for pattern, regex in self.index_patterns.items():
                if regex.match(current.key):
                    self.matched.add(pattern)
                    return pattern
            current = self.src.index_parents.get(current)
        return None

    def _index_left_out(self, entry: DumpEntry) -> bool:
        """An index (its build, attachment or comment) left out by ``schema_migration.exclude_indexes``."""
        if not self.index_patterns or entry.schema is None:
            return False
        name = entry.name[len("INDEX "):] if entry.type == "COMMENT" and entry.name.startswith("INDEX ") \
            else entry.name if entry.type in ("INDEX", "INDEX ATTACH") else None
        if name is None:
            return False
        pattern = self.excluded_index(QualifiedName(entry.schema, tag_name(name)))
        if pattern is None:
            return False
        self.report.skip(str(entry), f"excluded by schema_migration.exclude_indexes ({pattern})")
        return True

    def _attached(self, entry: DumpEntry) -> bool:
        """A comment or grant migrates with its object."""
        target = _target_key(entry, self.src)
        if target is not None and target in self.decided:
            if not self.decided[target] and target in self.left_out:
                self.report.skip(str(entry), f"belongs to an object that is not migrated: {self.left_out[target]}")
            return self.decided[target]
        if entry.schema is not None:
            return entry.schema in self.src.whole_schemas
        return self.src.everything

    def _table_bound(self, entry: DumpEntry, table: QualifiedName) -> bool:
        src = self.src
        if src.relkinds.get(table) in ("v", "m"):
            return src.view_kept(table) and not self._index_left_out(entry)
        if table not in src.selected:
            return False  # an excluded (or not selected) table and everything of it
        constraint = _constraint_of(entry, table) if entry.type in ("FK CONSTRAINT", "COMMENT") else None
        if entry.type == "COMMENT" and constraint in self.skipped_keys:
            self.report.skip(str(entry), f"belongs to an object that is not migrated: {self.skipped_keys[constraint]}")
            return False
        if entry.type == "FK CONSTRAINT":
            referenced = _referenced_table(entry)
            if referenced is not None and referenced in src.tables and referenced not in src.selected:
                if self.config.schema_migration.foreign_keys_to_excluded == "skip":
                    reason = f"references {referenced}, which is not selected " \
                             "(schema_migration.foreign_keys_to_excluded: skip)"
                    self.report.skip(str(entry), reason)
                    if constraint is not None:
                        self.skipped_keys[constraint] = reason
                    return False
                self.errors.append(f"foreign key {entry.name} of {table} references {referenced}, which is not "
                                   f"selected: select {referenced} too, exclude {table}, or set "
                                   "schema_migration.foreign_keys_to_excluded: skip to leave such keys out")
                return False
            into = src.keys_into_without_rows.get(constraint) if constraint is not None else None
            if into is not None:
                if self.config.schema_migration.foreign_keys_to_excluded == "skip":
                    self.report.skip(str(entry), without_rows_reason(into))
                    self.skipped_keys[(into.table, into.constraint)] = without_rows_reason(into)
                    return False
                self.errors.append(without_rows_problem(into))
                return False
        return not self._index_left_out(entry)

    def _view(self, entry: DumpEntry, relation: QualifiedName) -> bool:
        src = self.src
        if entry.schema not in src.whole_schemas or relation in src.excluded_views:
            return False
        unmigrated = src.view_reads_unmigrated(relation)
        tables = [str(t) for t in unmigrated if t in src.tables]
        views = [str(t) for t in unmigrated if t not in src.tables]
        if tables:
            self.errors.append(f"{entry.type.lower()} {relation} reads {', '.join(tables)}, which is not selected: "
                               f"select it, or exclude {relation.key} too")
        if views:
            self.errors.append(f"{entry.type.lower()} {relation} reads {', '.join(views)}, which is not migrated "
                               f"(excluded, or its schema is not selected): migrate it too, or exclude "
                               f"{relation.key} too")
        return not unmigrated

    def _cast_selected(self, entry: DumpEntry) -> bool:
        """A cast migrates with a partial selection when its types and function all migrate: their schema migrates
        whole, or the selected tables need them (a schema some of whose objects migrate is not enough)."""
        stmt = _first_statement(entry.sql)
        if type(stmt).__name__ != "CreateCastStmt":
            return False
        names = [[getattr(n, "sval", "") for n in t.names or ()] for t in (stmt.sourcetype, stmt.targettype)]
        if stmt.func is not None:
            names.append([getattr(n, "sval", "") for n in stmt.func.objname or ()])
        own = [n for n in names if len(n) >= 2 and n[0] != "pg_catalog"]
        return bool(own) and all(self._migrates(n[0], n[-1]) for n in own)

    def _migrates(self, schema: str, name: str) -> bool:
        """Whether the type, table or routine ``schema.name`` (a routine: any of that name) migrates."""
        src = self.src
        if schema in src.whole_schemas or QualifiedName(schema, name) in src.selected:
            return True
        return any(s == schema and (n == name or n.startswith(name + "(")) for _, s, n in src.needed)


def plan_entries(entries: list[DumpEntry], src: SourceSchema, config: MigrationConfig,
                 rewriter: DefinitionRewriter, report: SchemaReport,
                 phase_entries: list[DumpEntry] | None = None) -> tuple[list[PlannedEntry], list[str]]:
    """Decide which entries migrate and rename them. Returns (plan, dependency errors).

    ``entries`` are both sections, so that a comment or grant follows its object whichever section holds it; only
    ``phase_entries`` (all when None) are reported on and planned.
    """
    mine = None if phase_entries is None else {id(e) for e in phase_entries}
    scratch = SchemaReport(report.migration, report.phase)
    plan: list[PlannedEntry] = []
    errors: list[str] = []
    kept_schemas: set[str] = set()
    planner = _Planner(src, config, report)
    for entry in entries:
        ours = mine is None or id(entry) in mine
        planner.report = report if ours else scratch
        planner.errors = errors if ours else []
        table = _entry_table(entry, src)
        if entry.type == "SEQUENCE" and (entry.type, entry.schema, entry.name) in src.needed \
                and table not in src.selected:
            table = None  # a selected table's default uses it: it migrates even if its owner does not
        planned = None
        if planner.keep(entry, table):
            planned = _planned(entry, table, src, rewriter, planner.report, planner.errors)
        planner.decided[_entry_key(entry, table)] = planned is not None
        if planned is None:
            continue
        if ours:
            plan.append(planned)
        if entry.schema:
            kept_schemas.add(entry.schema)
        elif entry.type == "EXTENSION" and entry.name in src.extensions:
            kept_schemas.add(src.extensions[entry.name])  # CREATE EXTENSION ... WITH SCHEMA needs it
    errors += _unmatched_index_patterns(planner, phase_entries)
    schemas_needed = kept_schemas | src.whole_schemas
    if report.phase in ("pre_data", "both"):
        plan = _created_schemas(entries, schemas_needed, rewriter) + plan

    def needed_schema(item: PlannedEntry) -> bool:
        if item.entry.type == "SCHEMA":
            return item.entry.name in schemas_needed
        if item.entry.type in ("COMMENT", "ACL"):
            target = tag_target(item.entry)
            return not (target and target[0] == "SCHEMA" and target[2] not in schemas_needed)
        return True

    return [p for p in plan if needed_schema(p)], errors


def _created_schemas(entries: list[DumpEntry], schemas: set[str],
                     rewriter: DefinitionRewriter) -> list[PlannedEntry]:
    """CREATE SCHEMA for the schemas that hold something migrated and that the dump does not create: pg_dump of a
    whole database leaves out ``public``, which the destination has too, unless the mapping renames it."""
    dumped = {e.name for e in entries if e.type == "SCHEMA"}
    out = []
    for schema in sorted(schemas - dumped):
        if schema == "public" and rewriter.schema(schema) == "public":
            continue
        entry = DumpEntry(schema, "SCHEMA", None, sql.SQL("CREATE SCHEMA {};\n").format(
            sql.Identifier(schema)).as_string(None))
        out.append(PlannedEntry(entry, rewriter.rewrite(entry.sql).sql, None, key=("SCHEMA", None, schema)))
    return out


def _unmatched_index_patterns(planner: _Planner, phase_entries: list[DumpEntry] | None) -> list[str]:
    """An ``exclude_indexes`` pattern that leaves out no index is a mistake (checked by post_data, which builds
    indexes): name it, and say when it names a constraint's index, which is kept with its constraint."""
    if phase_entries is not None and not any(e.type == "INDEX" for e in phase_entries):
        return []
    errors = []
    for pattern in sorted(set(planner.index_patterns) - planner.matched):
        regex = planner.index_patterns[pattern]
        backing = sorted(str(i) for i in planner.src.constraint_indexes if regex.match(i.key))
        why = (f"it names the index of a constraint ({', '.join(backing)}), which is built with its constraint"
               if backing else "no index of the selected tables matches it")
        errors.append(f"schema_migration.exclude_indexes: {pattern!r} leaves out nothing: {why}")
    return errors


def _planned(entry: DumpEntry, table: QualifiedName | None, src: SourceSchema, rewriter: DefinitionRewriter,
             report: SchemaReport, errors: list[str]) -> PlannedEntry | None:
    """The entry renamed for the destination, or None when nothing of it is left."""
    try:
        result = rewriter.rewrite(entry.sql)
    except RewriteError as exc:
        errors.append(f"{entry}: {exc}")
        return None
    for problem in result.unsafe:
        report.review.append({"object": str(entry), "reason": problem})
    for statement in result.removed:
        report.skip(str(entry), f"left out with the columns the selection leaves out: {statement}")
    if not result.sql.strip():
        return None
    if entry.type in ("FUNCTION", "PROCEDURE", "AGGREGATE"):
        words = rewriter.unsafe_function_body(entry.sql)
        if words:
            report.review.append({"object": str(entry), "reason": "its body is not rewritten and mentions "
                                  f"renamed names: {', '.join(words)}"})
    return PlannedEntry(entry, result.sql, table if table in src.tables else None, key=_entry_key(entry, table),
                        target=_target_key(entry, src) if entry.type in ("COMMENT", "ACL") else None)


def _constraint_of(entry: DumpEntry, table: QualifiedName) -> tuple[QualifiedName, str] | None:
    """(table, constraint name) of a table constraint's entry, or of a comment on a table constraint."""
    stmt = _first_statement(entry.sql)
    kind = type(stmt).__name__
    if kind == "CommentStmt" and stmt.objtype.name == "OBJECT_TABCONSTRAINT":
        return (table, getattr(stmt.object[-1], "sval", ""))
    if kind == "AlterTableStmt":
        name = next((c.def_.conname for c in stmt.cmds or () if getattr(c.def_, "conname", None)), None)
        return (table, name) if name else None
    return None


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
        args = {d.defname: deparse(d.arg) for d in stmt.definition or () if d.defname in ("leftarg", "rightarg")}
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
    if kind == "CreateForeignTableStmt":
        return ("relation", rel(stmt.base.relation))
    return _created_other(stmt, kind)


#: Statement -> (catalog, namespace column, name column, attribute of the statement holding the qualified name).
_IN_SCHEMA = {
    "CreateConversionStmt": ("pg_conversion", "connamespace", "conname", "conversion_name"),
    "OBJECT_TSDICTIONARY": ("pg_ts_dict", "dictnamespace", "dictname", "defnames"),
    "OBJECT_TSCONFIGURATION": ("pg_ts_config", "cfgnamespace", "cfgname", "defnames"),
    "OBJECT_TSPARSER": ("pg_ts_parser", "prsnamespace", "prsname", "defnames"),
    "OBJECT_TSTEMPLATE": ("pg_ts_template", "tmplnamespace", "tmplname", "defnames"),
}
#: Statement -> (catalog, name column, attribute of the statement holding the name) of database-wide objects.
_GLOBAL = {
    "CreateAmStmt": ("pg_am", "amname", "amname"),
    "CreateFdwStmt": ("pg_foreign_data_wrapper", "fdwname", "fdwname"),
    "CreateForeignServerStmt": ("pg_foreign_server", "srvname", "servername"),
    "CreatePLangStmt": ("pg_language", "lanname", "plname"),
}


def _created_other(stmt: Any, kind: str) -> tuple[str, Any] | None:
    """Objects other than relations, types, routines and table parts that a statement creates."""
    from airflow_pgmigrate.engine.rewrite import deparse

    key = stmt.kind.name if kind == "DefineStmt" else kind
    if key in _IN_SCHEMA:
        table, nsp, col, attr = _IN_SCHEMA[key]
        names = [n.sval for n in getattr(stmt, attr)]
        return ("in schema", (table, nsp, col, names[0] if len(names) == 2 else "public", names[-1]))
    if kind in _GLOBAL:
        table, col, attr = _GLOBAL[kind]
        return ("global", (table, col, getattr(stmt, attr)))
    if kind in ("CreateOpClassStmt", "CreateOpFamilyStmt"):
        names = [n.sval for n in (stmt.opclassname if kind == "CreateOpClassStmt" else stmt.opfamilyname)]
        return ("operator class" if kind == "CreateOpClassStmt" else "operator family",
                (names[0] if len(names) == 2 else "public", names[-1], stmt.amname))
    if kind == "CreateCastStmt":
        return ("cast", (deparse(stmt.sourcetype), deparse(stmt.targettype)))
    if kind == "CreateUserMappingStmt":
        role = stmt.user.rolename or ("public" if stmt.user.roletype.name == "ROLESPEC_PUBLIC" else None)
        return ("user mapping", (stmt.servername, role)) if role else None
    if kind == "AlterDomainStmt" and stmt.subtype == "C" and getattr(stmt.def_, "conname", None):
        return ("domain constraint", (sql.Identifier(*[n.sval for n in stmt.typeName]).as_string(None),
                                      stmt.def_.conname))
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
        return _exists_other(conn, kind, args)
    try:
        row = conn.execute(query, params).fetchone()
    except psycopg.Error:
        return False
    return row is not None and row[0] is not None


def _exists_other(conn: psycopg.Connection, kind: str, args: Any) -> bool:
    query: sql.Composable
    if kind == "in schema":
        table, nsp, col, schema, name = args
        query = sql.SQL("SELECT 1 FROM pg_catalog.{} x JOIN pg_catalog.pg_namespace n ON n.oid = x.{} "
                        "WHERE n.nspname = %s AND x.{} = %s").format(*map(sql.Identifier, (table, nsp, col)))
        params: tuple[Any, ...] = (schema, name)
    elif kind == "global":
        table, col, name = args
        query = sql.SQL("SELECT 1 FROM pg_catalog.{} WHERE {} = %s").format(sql.Identifier(table), sql.Identifier(col))
        params = (name,)
    elif kind in ("operator class", "operator family"):
        query = sql.SQL(
            "SELECT 1 FROM pg_opclass c JOIN pg_namespace n ON n.oid = c.opcnamespace JOIN pg_am a ON a.oid = "
            "c.opcmethod WHERE n.nspname = %s AND c.opcname = %s AND a.amname = %s" if kind == "operator class" else
            "SELECT 1 FROM pg_opfamily f JOIN pg_namespace n ON n.oid = f.opfnamespace JOIN pg_am a ON a.oid = "
            "f.opfmethod WHERE n.nspname = %s AND f.opfname = %s AND a.amname = %s")
        params = args
    elif kind == "cast":
        query = sql.SQL("SELECT 1 FROM pg_cast WHERE castsource = to_regtype(%s) AND casttarget = to_regtype(%s)")
        params = args
    elif kind == "user mapping":
        query, params = sql.SQL("SELECT 1 FROM pg_user_mappings WHERE srvname = %s AND usename = %s"), args
    elif kind == "domain constraint":
        query = sql.SQL("SELECT 1 FROM pg_constraint WHERE contypid = to_regtype(%s) AND conname = %s")
        params = args
    else:
        return False
    try:
        return conn.execute(query, params).fetchone() is not None
    except psycopg.Error:
        return False


def normalize_sql(text: str) -> str:
    """A canonical form of SQL text (parse + deparse), so cosmetic differences do not count as differences.

    Column references qualified by the only relation of their query are unqualified: servers of different versions
    print view definitions both ways.
    """
    from pglast import parse_sql
    from pglast.parser import ParseError
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
        if type(stmt).__name__ == "AlterTableStmt" and all(c.subtype.name == "AT_ChangeOwner" for c in stmt.cmds):
            from pglast.enums import ObjectType

            stmt.objtype = ObjectType.OBJECT_TABLE  # pg_dump 17+ writes ALTER SEQUENCE / VIEW ... OWNER TO
        out.append(deparse(stmt))
    return ";\n".join(out)


def _all_nodes(node: Any) -> list[Any]:
    from airflow_pgmigrate.engine.rewrite import walk_nodes

    return list(walk_nodes(node))


def _unqualify_single_relation(select: Any) -> None:
    from airflow_pgmigrate.engine.rewrite import child_nodes

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
        for _, child in child_nodes(node):
            fix(child)

    for attr in ("targetList", "whereClause", "groupClause", "havingClause", "sortClause"):
        value = getattr(select, attr, None)
        for item in value if isinstance(value, tuple) else (value,):
            if item is not None:
                fix(item)


# -- running ----------------------------------------------------------------------------------------------------


def _with_extensions(entries: list[DumpEntry], extensions: list[tuple[str, str]]) -> list[DumpEntry]:
    """pg_dump leaves out extensions it does not dump itself: add their creation after the schemas."""
    dumped = {e.name for e in entries if e.type == "EXTENSION"}
    extensions = [(name, schema) for name, schema in extensions if name not in dumped]
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


def _dump_args(phase: str, config: MigrationConfig, exclude: Iterable[str] = ()) -> list[str]:
    """pg_dump of one section of the database but the ``exclude`` schemas: database-wide objects (casts, foreign
    servers, default privileges without a schema ...) are only written without --schema; the plan selects what
    migrates."""
    args = ["--schema-only", f"--section={phase.replace('_', '-')}"]
    if not config.schema_migration.owner_mapping:
        args.append("--no-owner")
    if not config.schema_migration.migrate_grants:
        args.append("--no-privileges")
    for schema in exclude:
        args += ["--exclude-schema", _pattern_literal(schema)]
    return args


def _pattern_literal(name: str) -> str:
    """A pg_dump schema pattern that matches exactly this name."""
    return '"' + name.replace('"', '""') + '"'


def _other_schemas(conn: psycopg.Connection, keep: Iterable[str]) -> list[str]:
    """The schemas of a database but these (and the system's)."""
    return [r[0] for r in conn.execute(
        "SELECT nspname FROM pg_namespace WHERE nspname !~ '^pg_' AND nspname <> 'information_schema' "
        "AND NOT nspname = ANY(%s) ORDER BY 1", (sorted(keep),)).fetchall()]


def _dump_sections(dump: PgDump, info: ConnectionInfo, config: MigrationConfig, src: SourceSchema | None = None,
                   exclude: Iterable[str] = (), phases: Iterable[str] = PHASES,
                   ) -> tuple[str, dict[str, list[DumpEntry]]]:
    """(session settings, phase -> entries) of these sections (both by default: a post-data comment or grant may be
    about a pre-data object). With ``src`` (the source), extensions pg_dump leaves out are added."""
    sections: dict[str, list[DumpEntry]] = {phase: [] for phase in PHASES}
    preamble = ""
    for phase in phases:
        preamble, entries = split_dump(run_pg_dump(dump, info, _dump_args(phase, config, exclude)))
        if src is not None:
            _restore_schema_names(entries, src.all_schemas)
        if phase == "pre_data" and src is not None:
            entries = _with_extensions(entries, src.wanted_extensions(src.everything))
        sections[phase] = entries
    return preamble, sections


def _restore_schema_names(entries: list[DumpEntry], schemas: set[str]) -> None:
    """pg_dump's headers show a newline (or carriage return) of a name as a space: give entries their schema's real
    name, and a SCHEMA entry (and a comment or grant on a schema) its own."""
    for entry in entries:
        if entry.schema is not None:
            entry.schema = real_schema(entry.schema, schemas)
        if entry.type == "SCHEMA":
            entry.name = real_schema(entry.name, schemas)
        elif entry.type in ("COMMENT", "ACL") and entry.name.startswith("SCHEMA "):
            target = tag_target(entry)
            if target is not None and target[2] not in schemas and real_schema(target[2], schemas) != target[2]:
                entry.name = "SCHEMA " + sql.Identifier(real_schema(target[2], schemas)).as_string(None)


def real_schema(shown: str, schemas: set[str]) -> str:
    """The schema whose name pg_dump shows as ``shown`` (newlines as spaces), when exactly one has it."""
    if shown in schemas:
        return shown
    found = [s for s in schemas if s.replace("\r", " ").replace("\n", " ") == shown]
    return found[0] if len(found) == 1 else shown


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
                kept.append(deparse(stmt))
                continue
            if skipping_grantor:
                continue
            if kind == "CreateUserMappingStmt" and getattr(stmt.user, "rolename", None):
                changed = True
                mapped = self.target(stmt.user.rolename)
                if mapped is None:
                    self._skip(report, what, f"user mapping of a role missing in the destination: "
                                             f"{stmt.user.rolename}")
                    continue
                stmt.user.rolename = mapped
                kept.append(deparse(stmt))
                continue
            if kind == "AlterOwnerStmt":
                role_specs = [stmt.newowner]
            elif kind == "AlterTableStmt" and all(c.subtype.name == "AT_ChangeOwner" for c in stmt.cmds or ()):
                role_specs = [c.newowner for c in stmt.cmds]
            elif kind in ("GrantStmt", "GrantRoleStmt", "AlterDefaultPrivilegesStmt"):
                changed = True
                if self.migrate_grants and self._grant(stmt, report, what):
                    kept.append(deparse(stmt))
                continue
            if role_specs:
                targets = [self.target(r.rolename) if getattr(r, "rolename", None) else None for r in role_specs]
                if any(t is None for t in targets):
                    changed = True
                    continue  # the destination account keeps ownership
                for spec, role in zip(role_specs, targets, strict=True):
                    spec.rolename = role
                changed = True
                kept.append(deparse(stmt))
            else:
                kept.append(statement_text(text, raw))  # unchanged statements keep their text
        if not changed:
            return text
        return ";\n".join(kept) + (";\n" if kept else "")


@dataclass
class _PhasePlan:
    """What a phase is about to do: the source's schema, pg_dump's session settings and the renamed entries."""

    src: SourceSchema
    dst_major: int
    preamble: str
    plan: list[PlannedEntry]
    schemas: list[str]
    rewriter: DefinitionRewriter


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
    planned = _plan_phase(config, source, destination, phase, report, log)
    plan = planned.plan
    with connect(destination) as dst_conn:
        if phase == "post_data":
            _skip_built_by_full_load(dst_conn, plan, state or MigrationState(
                destination, config.state_schema, config.name), report)
        others = _other_schemas(dst_conn, {planned.rewriter.schema(s) for s in planned.schemas}
                                | {config.state_schema})
        _decide_existing(dst_conn, plan, config, phase, state, destination, planned.dst_major, others, report)
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

        _run_in_one_transaction(destination, planned.preamble, todo, report, log,
                                before_commit=record if state is not None else None)
    else:
        _run_post_data(destination, planned.preamble, todo, config.schema_migration.index_jobs, report, log)
        report.refreshed += [v["view"] for v in sync_materialized_views(config, planned.src, source, destination,
                                                                         log=log) if v["action"] == "refreshed"]
    report.seconds = time.monotonic() - started
    if state is not None:
        state.put(f"schema.{phase}", {**report.to_dict(), "completed": True})
    log(f"schema phase={phase} done created={sum(report.created.values())} skipped={len(report.skipped)} "
        f"differing={len(report.differing)} review={len(report.review)} seconds={report.seconds:.1f}")
    return report


def _plan_phase(config: MigrationConfig, source: ConnectionInfo, destination: ConnectionInfo, phase: str,
                report: SchemaReport, log: Callable[[str], None]) -> _PhasePlan:
    """Dump the source's definitions, select and rename the phase's entries (nothing changes yet)."""
    with connect(source) as src_conn:
        src = read_source_schema(src_conn, config)
        if phase == "pre_data" and not config.schema_migration.migrate_grants:
            _review_narrowed_privileges(src_conn, src, report)
    with connect(destination) as dst_conn:
        dst_major = catalog.server_version_num(dst_conn) // 10000
        roles = {r[0] for r in dst_conn.execute("SELECT rolname FROM pg_roles")}
    dump = _source_pg_dump(src.major, dst_major, source)
    report.pg_dump = f"{dump.major} ({dump.path})"
    if dump.major < dst_major:
        report.review.append({"object": f"pg_dump {dump.major}", "reason": (
            f"no pg_dump {dst_major} or later that reaches the source with TLS: GRANT ALL is written in PostgreSQL "
            f"{dump.major}'s terms and grants everything ALL means in PostgreSQL {dst_major} (MAINTAIN from 17 on); "
            f"install the PostgreSQL {dst_major} client programs built with TLS, or set sslmode=disable on a source "
            "connection that needs no TLS")})
    schemas = src.dumped_schemas()
    if not schemas:
        raise SchemaMigrationError("the selection matches nothing in the source")
    # pre_data needs its own section only; post_data plans both, so a comment follows its pre-data object.
    preamble, sections = _dump_sections(dump, source, config, src, src.undumped_schemas(),
                                        PHASES[:1] if phase == "pre_data" else PHASES)
    entries = sections[phase]
    log(f"schema phase={phase} pg_dump={dump.major} entries={len(entries)} schemas={','.join(schemas)}")
    rewriter = DefinitionRewriter(NameMapper(config.mapping), src.columns, src.relkinds, src.left_out_columns(config))
    plan, errors = plan_entries(sections["pre_data"] + sections["post_data"], src, config, rewriter, report, entries)
    if errors:
        raise SchemaMigrationError("schema migration cannot start, nothing was changed:\n- " + "\n- ".join(errors),
                                   report.to_dict())
    roles_mapped = bool(config.schema_migration.owner_mapping or config.schema_migration.migrate_grants)
    mapper = RoleMapper(config.schema_migration.owner_mapping, roles, config.schema_migration.migrate_grants)
    for item in plan:
        if roles_mapped or item.entry.type == "USER MAPPING":  # a user mapping names its role in any case
            item.sql = mapper.apply(item.sql, report, str(item.entry))
    plan = [p for p in plan if p.sql.strip()]
    return _PhasePlan(src, dst_major, preamble, plan, schemas, rewriter)


@dataclass
class TableBuild:
    """A post-data index or key (primary key, unique, exclusion constraint) of one table, which the full load
    builds as soon as the table's copy is committed."""

    #: The entry as post_data names it (``str(DumpEntry)``): the id under which the build is recorded.
    id: str
    table: QualifiedName
    statement: str


def table_builds(config: MigrationConfig, source: ConnectionInfo,
                 destination: ConnectionInfo) -> tuple[str, list[TableBuild]]:
    """(pg_dump's session settings, the indexes and keys of the selected tables that post_data would build and the
    destination does not hold yet). Foreign keys, triggers and the rest are not among them: they wait for all data."""
    report = SchemaReport(config.name, "post_data")
    planned = _plan_phase(config, source, destination, "post_data", report, lambda message: None)
    builds = []
    with connect(destination) as conn:
        for item in planned.plan:
            if item.entry.type not in PARALLEL_TYPES or item.table is None:
                continue
            what = _created_object(item.sql)
            if what is not None and _exists(conn, what, item.entry.name):
                continue  # post_data compares it with the source's, as for any existing object
            builds.append(TableBuild(str(item.entry), item.table, item.entry.settings + item.sql))
    return planned.preamble, builds


def _skip_built_by_full_load(conn: psycopg.Connection, plan: list[PlannedEntry], state: MigrationState,
                             report: SchemaReport) -> None:
    """Entries the full load built (recorded with their build): skipped, and said so in the report."""
    built = state.built_by_full_load(conn)
    for item in plan:
        seconds = built.get(str(item.entry))
        if seconds is not None and item.entry.type in PARALLEL_TYPES:
            item.run = False
            item.reason = f"built by the full load right after its table was copied ({seconds:.1f} s)"
            report.skip(str(item.entry), item.reason)


def _review_narrowed_privileges(conn: psycopg.Connection, src: SourceSchema, report: SchemaReport) -> None:
    """Name the migrated objects whose revoke from PUBLIC is lost with ``--no-privileges`` (the precheck's
    privileges_not_migrated item): every role may use them on the destination."""
    for obj in narrowed_public_privileges(conn, src.dumped_schemas()):
        if obj.schema is None or obj.schema in src.whole_schemas or (obj.kind, obj.schema, obj.tag) in src.needed:
            report.review.append({"object": str(obj), "reason": (
                "grants are not migrated: on the destination it is open to every role; set "
                "schema_migration.migrate_grants: true to migrate its privileges")})


def _source_pg_dump(source_major: int, destination_major: int, source: ConnectionInfo) -> PgDump:
    """pg_dump of the newer of both versions when there is one that reaches the source as securely (built with TLS,
    unless the connection disables TLS; ``sslmode=prefer`` must not become a dump in clear): a newer pg_dump writes
    what the older server means in the newer server's terms (``GRANT ALL`` of PostgreSQL 15 becomes the list of its
    privileges, without the MAINTAIN of PostgreSQL 17+). Otherwise the source's own version."""
    if destination_major > source_major:
        plain = source.params.get("sslmode", "prefer") == "disable"
        newer = [d for d in available_pg_dumps() if d.major >= destination_major and (plain or supports_tls(d.path))]
        if newer:
            return newer[0]
    return find_pg_dump(source_major)


def _decide_existing(conn: psycopg.Connection, plan: list[PlannedEntry], config: MigrationConfig, phase: str,
                     state: MigrationState | None, destination: ConnectionInfo, dst_major: int,
                     other_schemas: list[str], report: SchemaReport) -> None:
    """Mark entries whose object already exists: identical ones are skipped, differing ones reported; in conflict
    mode ``error`` an existing object not created by this migration stops the phase before any change. Entries that
    create nothing (comments, grants, options) are skipped when the destination's own dump has them identical."""
    existing: list[PlannedEntry] = []
    for item in plan:
        if not item.run:
            continue  # decided already (built by the full load)
        what = _created_object(item.sql)
        if what is not None and _exists(conn, what, item.entry.name):
            item.creates = (what[0], str(what[1]))
            existing.append(item)
    defaults = [p for p in plan if p.entry.type == "DEFAULT ACL"]
    if not existing and not defaults:
        return
    ours = phase == "post_data" or bool(state is not None and (state.get("schema.pre_data") or {}).get("completed"))
    conflicts = [p for p in existing if p.creates and p.creates[0] not in _NOT_COMPARED]
    if conflicts and not ours and config.conflicting_tables == "error":
        names = ", ".join(str(p.entry) for p in conflicts[:20])
        raise SchemaMigrationError(
            f"{len(conflicts)} object(s) already exist in the destination: {names}; nothing was changed. Drop or "
            "rename them, map the tables to other names, or set conflicting_tables: ignore", report.to_dict())
    skipped_tables = {p.table for p in existing if p.entry.type == "TABLE" and p.table is not None}
    existing_keys = {p.key for p in existing}
    parts = {id(p) for p in plan if p not in existing and _part_of_existing(p, skipped_tables, existing_keys)}
    destination_entries: set[str] = set()
    if conflicts or defaults or any(id(p) in parts and p.entry.type in _COMPARED_PARTS for p in plan):
        text = run_pg_dump(find_pg_dump(dst_major), destination, _dump_args(phase, config, other_schemas))
        dumped = split_dump(text)[1]
        destination_entries = {normalize_sql(e.settings + e.sql) for e in dumped}
        _report_extra_parts(conn, plan, existing, dumped, report)
        # Default privileges the destination has already: running the source's again would add to them.
        held = {(e.schema, e.name) for e in dumped if e.type == "DEFAULT ACL"}
        parts |= {id(p) for p in defaults if (p.entry.schema, p.entry.name) in held}
    for item in plan:
        same = bool(destination_entries) and normalize_sql(item.entry.settings + item.sql) in destination_entries
        if item in existing or same:
            item.run = False
            if same:
                item.reason = "exists already, identical"
                report.skip(str(item.entry), item.reason)
            elif item.creates and item.creates[0] in _NOT_COMPARED:
                item.reason = "exists already"
            else:
                item.reason = "exists already, differs"
                report.differing.append({"object": str(item.entry), "expected": redact(item.sql.strip())})
        elif id(item) in parts:
            item.run, item.reason = False, "belongs to an object that exists already"
            if item.entry.type in _COMPARED_PARTS:
                # A grant, comment or default that changed on the source: kept as it is, and said so.
                item.reason += ", differs"
                report.differing.append({"object": str(item.entry), "expected": redact(item.sql.strip())})


def _report_extra_parts(conn: psycopg.Connection, plan: list[PlannedEntry], existing: list[PlannedEntry],
                        dumped: list[DumpEntry], report: SchemaReport) -> None:
    """Grants and comments the destination holds on an existing object and the source no longer has (a privilege
    revoked on the source back to the default, for which pg_dump writes nothing): the destination keeps them, so
    they are reported under ``differing``."""
    objects = {key: item for item in existing if (key := _destination_key(item)) is not None}
    if not objects:
        return
    planned = {normalize_sql(p.entry.settings + p.sql) for p in plan}
    tags = {(p.entry.type, p.entry.name) for p in plan if p.entry.type in ("COMMENT", "ACL")}
    routines = _routine_tags(conn)
    for entry in dumped:
        target = tag_target(entry) if entry.type in ("COMMENT", "ACL") else None
        if target is None or (entry.type, entry.name) in tags:
            continue  # an entry the plan has too is compared as such
        if target[0] == "ROUTINE" and target[1] is not None:
            target = ("ROUTINE", target[1], routines.get((target[1], target[2]), target[2]))
        item = objects.get(target)
        if item is not None and normalize_sql(entry.settings + entry.sql) not in planned:
            report.differing.append({"object": str(entry), "expected": f"nothing: the source has no such "
                                     f"{'grant' if entry.type == 'ACL' else 'comment'} on {item.entry}; the "
                                     f"destination keeps {redact(entry.sql.strip())}"})


def _destination_key(item: PlannedEntry) -> tuple[str, str | None, str] | None:
    """(family, schema, name) of an existing object in the destination, as COMMENT and ACL tags are resolved to."""
    what = _created_object(item.sql)
    if what is None:
        return None
    kind, args = what
    if kind in ("relation", "type"):
        name = parse_sql_name(args)
        return (kind.upper() if kind == "type" else "RELATION", name.schema, name.name)
    if kind == "schema":
        return ("SCHEMA", None, args)
    if kind == "function":
        signature = item.entry.name[item.entry.name.index("("):] if "(" in item.entry.name else "()"
        return ("ROUTINE", args[0] if len(args) == 2 else "public", args[-1] + signature)
    return None


def _routine_tags(conn: psycopg.Connection) -> dict[tuple[str, str], str]:
    """(schema, signature with argument names, as tags write it) -> the entry's own signature, of a database."""
    path = conn.execute("SELECT current_setting('search_path')").fetchone()[0]  # type: ignore[index]
    conn.execute("SELECT set_config('search_path', '', false)")
    try:
        return {(s, named): tag for s, named, tag in conn.execute(
            "SELECT n.nspname, quote_ident(p.proname) || '(' || pg_get_function_identity_arguments(p.oid) || ')', "  # noqa: S608 - constant
            + ROUTINE_TAG + " FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
            "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')")}
    finally:
        conn.execute("SELECT set_config('search_path', %s, false)", (path,))


#: Entries that only add to an object (its grants, comment, column default, sequence owner; a role's default
#: privileges in a schema): compared with the destination's when their object exists already, so a grant revoked on the source is reported, not left silently.
_COMPARED_PARTS = ("COMMENT", "ACL", "DEFAULT", "SEQUENCE OWNED BY", "DEFAULT ACL")


def _part_of_existing(item: PlannedEntry, existing_tables: set[QualifiedName],
                      existing_keys: set[tuple[str, str | None, str]]) -> bool:
    """Whether an entry belongs to an object that exists already in the destination (and is not run again)."""
    if item.table is not None and item.table in existing_tables and item.entry.type in (
            "DEFAULT", "SEQUENCE", "SEQUENCE OWNED BY", "TABLE ATTACH", "COMMENT", "ACL"):
        return True
    return item.entry.type in ("COMMENT", "ACL") and item.target is not None and item.target in existing_keys


def _execute_entry(conn: psycopg.Connection, item: PlannedEntry) -> None:
    try:
        if item.entry.settings:
            conn.execute(item.entry.settings)
        conn.execute(item.sql)
        if item.entry.settings:
            conn.execute(reset_entry_settings())
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


def expected_definitions(config: MigrationConfig, source: ConnectionInfo) -> list[str]:
    """The normalised definitions the destination should hold after both phases, from the source and the config,
    to compare with :func:`actual_definitions`."""
    with connect(source) as conn:
        src = read_source_schema(conn, config)
    rewriter = DefinitionRewriter(NameMapper(config.mapping), src.columns, src.relkinds, src.left_out_columns(config))
    _, sections = _dump_sections(find_pg_dump(src.major), source, config, src, src.undumped_schemas())
    plan, _ = plan_entries(sections["pre_data"] + sections["post_data"], src, config, rewriter,
                           SchemaReport(config.name, "both"))
    return sorted(normalize_sql(p.entry.settings + p.sql) for p in plan)


def actual_definitions(config: MigrationConfig, destination: ConnectionInfo, schemas: list[str]) -> list[str]:
    """The normalised definitions the destination holds in these schemas (pg_dump of both sections)."""
    with connect(destination) as conn:
        major = catalog.server_version_num(conn) // 10000
        others = _other_schemas(conn, schemas)
    _, sections = _dump_sections(find_pg_dump(major), destination, config, exclude=others)
    return sorted(normalize_sql(e.settings + e.sql) for e in sections["pre_data"] + sections["post_data"]
                  if _in_schemas(e, set(schemas)))


def _in_schemas(entry: DumpEntry, schemas: set[str]) -> bool:
    """Whether an entry of a destination dump is about these schemas (database-wide objects are)."""
    if entry.type == "SCHEMA":
        return entry.name in schemas
    if entry.schema is not None:
        return entry.schema in schemas
    target = tag_target(entry) if entry.type in ("COMMENT", "ACL") else None
    return target is None or target[0] != "SCHEMA" or target[2] in schemas


__all__ = ["PHASES", "SchemaMigrationError", "SchemaReport", "actual_definitions", "expected_definitions",
           "migrate_schema", "normalize_sql", "read_source_schema"]
