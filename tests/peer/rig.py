"""Peer scenarios: a migration driven as a user runs it, then an independent comparison of both databases.

``migrate()`` runs the precheck (no item may fail), the schema's pre-data phase, the full load, the post-data
phase, the scenario's changes on the source while incremental sync runs, catches up and cuts over (source frozen).
``Inventory`` then reads each side with plain SQL of its own, not the verify engine: every table's rows as a
multiset of row digests, sequence values, large objects, materialized views (populated or not, and their rows), and
object counts by kind. ``assert_same()`` names every difference.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import psycopg
from psycopg import sql

from airflow_pgmigrate.config import MigrationConfig
from airflow_pgmigrate.engine.connection import ConnectionInfo, connect
from airflow_pgmigrate.engine.cutover import run_cutover
from airflow_pgmigrate.engine.full_load import run_full_load
from airflow_pgmigrate.engine.incremental import run_incremental
from airflow_pgmigrate.engine.schema import migrate_schema
from airflow_pgmigrate.engine.state import MigrationState

USER_SCHEMAS = "n.nspname !~ '^pg_' AND n.nspname <> 'information_schema'"

Changes = str | list[str] | Callable[[Any], None] | None


@dataclass
class Run:
    config: MigrationConfig
    precheck: Any
    full_load: dict[str, Any]
    schema: dict[str, Any] = field(default_factory=dict)
    cutover: dict[str, Any] | None = None


def apply_changes(env: Any, changes: Changes) -> None:
    """Run the scenario's DML on the source: SQL text (one transaction per call), a list of it, or a callable."""
    if changes is None:
        return
    if callable(changes):
        changes(env)
        return
    for statement in [changes] if isinstance(changes, str) else changes:
        with psycopg.connect(**env.source_info().connect_kwargs(), autocommit=True) as conn:
            conn.execute(statement)


def migrate(env: Any, *, changes: Changes = None, cutover: bool = True, **overrides: Any) -> Run:
    """The whole migration of ``env``'s databases, as a user runs it (see the module's docstring)."""
    # The source is known to be quiet once the changes ran: the shortest watch that writes stopped is enough.
    overrides.setdefault("cutover", {"freeze_source": True, "writes_stopped_check_seconds": 1})
    config = env.config(**overrides)
    report = env.precheck(**overrides)
    assert not report.failures, [(r.name, r.detail) for r in report.failures]
    source, destination = env.source_info(), env.destination_info()
    state = MigrationState(destination, config.state_schema, config.name)
    schema: dict[str, Any] = {}
    if config.wants("schema"):
        schema["pre_data"] = migrate_schema(config, source, destination, "pre_data", state=state).to_dict()
    loaded = run_full_load(config, source, destination) if config.wants("full") else {}
    if config.wants("schema"):
        schema["post_data"] = migrate_schema(config, source, destination, "post_data", state=state).to_dict()
    run = Run(config, report, loaded, schema)
    apply_changes(env, changes)
    if config.wants("incremental"):
        for _ in range(20):
            if run_incremental(config, source, destination, window_seconds=20).caught_up:
                break
        else:
            raise AssertionError("incremental sync did not catch up")
        if cutover:
            try:
                run.cutover = run_cutover(config, source, destination)
            finally:  # the source stays readable either way; writable again for the test's own checks
                env.source.execute(f'ALTER DATABASE "{env.source_db}" RESET default_transaction_read_only')
    return run


# -- the independent comparison ----------------------------------------------------------------------------------


def _ident(schema: str, name: str) -> sql.Identifier:
    return sql.Identifier(schema, name)


@dataclass
class Inventory:
    """What one database holds, read with plain SQL (never the verify engine)."""

    tables: dict[tuple[str, str], Counter[str]]
    sequences: dict[tuple[str, str], tuple[int, bool]]
    large_objects: dict[int, str]
    matviews: dict[tuple[str, str], tuple[bool, Counter[str] | None]]
    objects: Counter[str]

    @classmethod
    def read(cls, info: ConnectionInfo, skip_schemas: frozenset[str] = frozenset({"pgmigrate"})) -> Inventory:
        with connect(info) as conn:
            skip = list(skip_schemas)
            relations = conn.execute(
                f"SELECT n.nspname, c.relname, c.relkind, c.relispopulated FROM pg_class c JOIN pg_namespace n "
                f"ON n.oid = c.relnamespace WHERE {USER_SCHEMAS} AND n.nspname <> ALL(%s) "  # noqa: S608
                "AND c.relkind IN ('r', 'S', 'm') ORDER BY 1, 2", (skip,)).fetchall()
            tables, sequences, matviews = {}, {}, {}
            for schema, name, kind, populated in relations:
                if kind == "r":
                    tables[(schema, name)] = _digests(conn, schema, name, only=True)
                elif kind == "S":
                    row = conn.execute(sql.SQL("SELECT last_value, is_called FROM {}").format(
                        _ident(schema, name))).fetchone()
                    sequences[(schema, name)] = (int(row[0]), bool(row[1]))
                else:
                    matviews[(schema, name)] = (populated, _digests(conn, schema, name) if populated else None)
            large_objects = {oid: digest for oid, digest in conn.execute(
                "SELECT oid::bigint, md5(lo_get(oid)) FROM pg_largeobject_metadata ORDER BY 1")}
            objects = _object_counts(conn, skip)
        return cls(tables, sequences, large_objects, matviews, objects)


def _digests(conn: psycopg.Connection, schema: str, name: str, *, only: bool = False) -> Counter[str]:
    query = sql.SQL("SELECT md5(ROW(r.*)::text) FROM {}{} AS r").format(
        sql.SQL("ONLY " if only else ""), _ident(schema, name))
    return Counter(r[0] for r in conn.execute(query))


def _object_counts(conn: psycopg.Connection, skip: list[str]) -> Counter[str]:
    """Objects by kind in the user schemas: relations by relkind (indexes among them), constraints by type,
    functions, types, triggers, extensions, rules, row security policies and the tables that enable them."""
    counts: Counter[str] = Counter()
    queries = {
        "relation": "SELECT 'relkind ' || c.relkind::text, count(*) FROM pg_class c JOIN pg_namespace n "
                    "ON n.oid = c.relnamespace WHERE {} AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE "
                    "d.objid = c.oid AND d.deptype = 'e') GROUP BY 1",
        "constraint": "SELECT 'constraint ' || c.contype::text, count(*) FROM pg_constraint c JOIN pg_namespace n "
                      "ON n.oid = c.connamespace WHERE {} GROUP BY 1",
        "function": "SELECT 'function ' || p.prokind::text, count(*) FROM pg_proc p JOIN pg_namespace n "
                    "ON n.oid = p.pronamespace WHERE {} AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE "
                    "d.objid = p.oid AND d.deptype = 'e') GROUP BY 1",
        "type": "SELECT 'type ' || t.typtype::text, count(*) FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace "
                "WHERE {} AND t.typtype IN ('e', 'd', 'c', 'r') AND NOT EXISTS (SELECT 1 FROM pg_class c WHERE "
                "c.oid = t.typrelid AND c.relkind <> 'c') AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE "
                "d.objid = t.oid AND d.deptype = 'e') GROUP BY 1",
        "trigger": "SELECT 'trigger', count(*) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN "
                   "pg_namespace n ON n.oid = c.relnamespace WHERE {} AND NOT t.tgisinternal GROUP BY 1",
        "extension": "SELECT 'extension ' || e.extname, 1 FROM pg_extension e JOIN pg_namespace n "
                     "ON n.oid = e.extnamespace WHERE e.extname <> 'plpgsql' AND {}",
        "rule": "SELECT 'rule ' || r.ev_type::text, count(*) FROM pg_rewrite r JOIN pg_class c ON c.oid = r.ev_class "
                "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE {} AND r.rulename <> '_RETURN' GROUP BY 1",
        "policy": "SELECT 'policy ' || p.polcmd::text || CASE WHEN p.polpermissive THEN ' permissive' ELSE "
                  "' restrictive' END, count(*) FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid "
                  "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE {} GROUP BY 1",
        "row security": "SELECT 'row security' || CASE WHEN c.relforcerowsecurity THEN ' forced' ELSE '' END, "
                        "count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                        "WHERE {} AND c.relrowsecurity GROUP BY 1",
    }
    where = f"{USER_SCHEMAS} AND n.nspname <> ALL(%s)"
    for query in queries.values():
        for kind, count in conn.execute(query.format(where), (skip,)):  # noqa: S608 - constants only
            counts[kind] += int(count)
    return counts


def assert_same(source: Inventory, destination: Inventory, *, nonempty: bool = True,
                without_rows: frozenset[tuple[str, str]] = frozenset(),
                unpopulated: frozenset[tuple[str, str]] = frozenset()) -> None:
    """Both inventories hold the same: every difference is listed in the assertion message.

    ``without_rows``: tables whose definition migrated without rows (empty on the destination); ``unpopulated``:
    materialized views expected unpopulated on the destination whatever the source's state."""
    problems = []
    for name in without_rows:
        if destination.tables.get(name) != Counter():
            problems.append(f"table {name} should exist without rows on the destination")
    for name in unpopulated:
        if destination.matviews.get(name) != (False, None):
            problems.append(f"materialized view {name} should exist unpopulated on the destination")
    source = replace(source, tables={k: v for k, v in source.tables.items() if k not in without_rows},
                     matviews={k: v for k, v in source.matviews.items() if k not in unpopulated})
    destination = replace(destination, tables={k: v for k, v in destination.tables.items() if k not in without_rows},
                          matviews={k: v for k, v in destination.matviews.items() if k not in unpopulated})
    for kind, here, there in (("table", source.tables, destination.tables),
                              ("sequence", source.sequences, destination.sequences),
                              ("materialized view", source.matviews, destination.matviews)):
        for name in sorted(set(here) | set(there)):
            if name not in there:
                problems.append(f"{kind} {name} missing on the destination")
            elif name not in here:
                problems.append(f"{kind} {name} extra on the destination")
            elif here[name] != there[name]:
                problems.append(f"{kind} {name} differs: {_summary(here[name])} -> {_summary(there[name])}")
    lo_here, lo_there = source.large_objects, destination.large_objects
    if lo_here != lo_there:
        problems.append(f"large objects differ: missing {sorted(set(lo_here) - set(lo_there))}, extra "
                        f"{sorted(set(lo_there) - set(lo_here))}, different "
                        f"{sorted(o for o in set(lo_here) & set(lo_there) if lo_here[o] != lo_there[o])}")
    if source.objects != destination.objects:
        problems.append(f"object counts differ: {_counter_diff(source.objects, destination.objects)}")
    assert not problems, "\n".join(problems)
    if nonempty:
        assert sum(sum(c.values()) for c in source.tables.values()) > 0, "no rows at all: the comparison proves nothing"


def _summary(value: Any) -> str:
    if isinstance(value, Counter):
        return f"{sum(value.values())} row(s)"
    if isinstance(value, tuple) and value and isinstance(value[-1], Counter | type(None)):
        return f"populated={value[0]} rows={sum(value[1].values()) if value[1] is not None else '-'}"
    return repr(value)


def _counter_diff(a: Counter[str], b: Counter[str]) -> str:
    return ", ".join(f"{k}: {a.get(k, 0)} -> {b.get(k, 0)}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k))


def assert_migrated(env: Any, **kwargs: Any) -> tuple[Inventory, Inventory]:
    """Read both sides and compare them (see :func:`assert_same`)."""
    source = Inventory.read(env.source_info())
    destination = Inventory.read(env.destination_info())
    assert_same(source, destination, **kwargs)
    return source, destination


__all__ = ["Inventory", "Run", "apply_changes", "assert_migrated", "assert_same", "migrate"]
