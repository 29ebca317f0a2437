"""Materialized views: their rows are not in the logical replication stream, so the destination recomputes them.

The schema migration creates every materialized view empty (``WITH NO DATA``). :func:`sync_materialized_views`
then gives each the state it has on the source: one populated on the source is refreshed on the destination from
its (migrated) tables, one the source holds unpopulated (created ``WITH NO DATA``, or emptied by ``REFRESH ...
WITH NO DATA``) stays or becomes unpopulated. A view that reads, directly or through other views, a table whose
rows do not migrate (``objects.exclude_data``) is left unpopulated: its contents would be computed from an empty
table; so is one ``objects.exclude_data`` names itself, and one that reads it. Views are handled in dependency order (one reading another comes after it).

It runs at the end of the post-data phase and again at cutover after the drain: a ``REFRESH MATERIALIZED VIEW
[CONCURRENTLY]`` on the source during incremental sync writes no row change the destination could apply, so the
cutover refreshes from tables that are complete by then. Verification compares their state and contents
(:func:`compare_materialized_views`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import psycopg
from psycopg import sql

from airflow_pgmigrate.engine.connection import ConnectionInfo, connect
from airflow_pgmigrate.engine.definition_only import materialized_views_without_rows, tables_without_rows
from airflow_pgmigrate.engine.names import NameMapper, QualifiedName

if TYPE_CHECKING:
    from airflow_pgmigrate.config import MigrationConfig


class ViewCatalog(Protocol):
    """What the schema migration read of the source (``schema.SourceSchema``) that decides which views migrated."""

    #: Schemas migrated whole (views migrate with their schema).
    whole_schemas: set[str]
    #: Views and materialized views left out by the selection patterns.
    excluded_views: set[QualifiedName]
    #: Relation -> relations it reads (views and materialized views).
    view_tables: dict[QualifiedName, set[QualifiedName]]


@dataclass
class MaterializedView:
    source: QualifiedName
    target: QualifiedName
    #: Populated on the source (``pg_class.relispopulated``).
    populated: bool
    #: Tables it reads (through views too) whose rows do not migrate: it stays unpopulated.
    reads_without_rows: list[QualifiedName]
    #: Materialized views it reads that are unpopulated on the source: it cannot be refreshed (a difference).
    reads_unpopulated: list[QualifiedName]
    #: Its own contents do not migrate (``objects.exclude_data`` names it): it stays unpopulated.
    rows_excluded: bool = False
    #: Found on the destination (one missing there is a difference verification reports).
    on_destination: bool = True

    @property
    def expected_populated(self) -> bool:
        """Populated on the destination: as on the source, unless its contents or those of a table (or materialized
        view) it reads do not migrate."""
        return self.populated and not self.reads_without_rows and not self.rows_excluded

    @property
    def can_populate(self) -> bool:
        return self.expected_populated and not self.reads_unpopulated

    @property
    def ident(self) -> sql.Identifier:
        return sql.Identifier(self.target.schema, self.target.name)


def migrated_materialized_views(config: MigrationConfig, schema: ViewCatalog, src: psycopg.Connection,
                                dst: psycopg.Connection) -> list[MaterializedView]:
    """The materialized views the schema migration created on the destination, in dependency order."""
    excluded_contents = materialized_views_without_rows(src, config.objects.exclude_data)
    without_rows = tables_without_rows(src, config.objects.exclude_data) | excluded_contents
    populated = {QualifiedName(s, n): bool(p) for s, n, p in src.execute(
        "SELECT n.nspname, c.relname, c.relispopulated FROM pg_class c JOIN pg_namespace n "
        "ON n.oid = c.relnamespace WHERE c.relkind = 'm'")}
    mapper = NameMapper(config.mapping)
    views = []
    for name in _dependency_order(sorted(populated), schema.view_tables):
        if name.schema not in schema.whole_schemas or name in schema.excluded_views:
            continue
        target = mapper.table(name)
        found = dst.execute("SELECT to_regclass(%s)", (sql.Identifier(target.schema, target.name).as_string(dst),))
        reads = _reads(name, schema.view_tables)
        views.append(MaterializedView(name, target, populated[name], sorted(reads & without_rows),
                                      sorted(r for r in reads if populated.get(r) is False),
                                      name in excluded_contents, found.fetchone() != (None,)))
    return views


def _reads(view: QualifiedName, view_tables: dict[QualifiedName, set[QualifiedName]]) -> set[QualifiedName]:
    """Every relation a view reads, through the views (and materialized views) it reads."""
    seen: set[QualifiedName] = set()
    todo = list(view_tables.get(view, set()))
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += view_tables.get(name, set())
    return seen


def _dependency_order(views: list[QualifiedName],
                      view_tables: dict[QualifiedName, set[QualifiedName]]) -> list[QualifiedName]:
    """``views`` so that each comes after the materialized views it reads (directly or through views)."""
    wanted = set(views)
    done: list[QualifiedName] = []
    placed: set[QualifiedName] = set()

    def place(view: QualifiedName, path: set[QualifiedName]) -> None:
        if view in placed or view in path:
            return
        for before in sorted(_reads(view, view_tables) & wanted):
            place(before, path | {view})
        placed.add(view)
        done.append(view)

    for view in views:
        place(view, set())
    return done


def sync_materialized_views(config: MigrationConfig, schema: ViewCatalog, source: ConnectionInfo,
                            destination: ConnectionInfo, *,
                            log: Callable[[str], None] = lambda message: None) -> list[dict[str, Any]]:
    """Give each migrated materialized view its source state on the destination (see the module's docstring).

    Returns one entry per view: ``{"view", "action"}``, the action being ``refreshed``, ``emptied`` (``REFRESH ...
    WITH NO DATA``), ``left unpopulated`` or ``left unpopulated: reads <tables> whose rows do not migrate``.
    """
    out = []
    with connect(source) as src, connect(destination) as dst:
        for view in migrated_materialized_views(config, schema, src, dst):
            if not view.on_destination:  # verification names it
                log(f"materialized_view={view.target} action=none missing_on_destination=true")
                out.append({"view": str(view.target), "source": str(view.source),
                            "action": "missing on the destination"})
                continue
            row = dst.execute("SELECT relispopulated FROM pg_class WHERE oid = %s::regclass",
                              (view.ident.as_string(dst),)).fetchone()
            populated_there = bool(row and row[0])
            if view.can_populate:
                dst.execute(sql.SQL("REFRESH MATERIALIZED VIEW {}").format(view.ident))
                action = "refreshed"
            elif populated_there:
                dst.execute(sql.SQL("REFRESH MATERIALIZED VIEW {} WITH NO DATA").format(view.ident))
                action = "emptied"
            else:
                action = "left unpopulated"
            if view.populated and view.rows_excluded:
                action += ": its contents do not migrate (objects.exclude_data)"
            elif view.populated and view.reads_without_rows:
                action += f": reads {', '.join(map(str, view.reads_without_rows))} whose rows do not migrate"
            elif view.expected_populated and view.reads_unpopulated:
                action += f": reads {', '.join(map(str, view.reads_unpopulated))}, unpopulated on the source"
            log(f"materialized_view={view.target} action={action.split(':')[0].replace(' ', '_')}")
            out.append({"view": str(view.target), "source": str(view.source), "action": action})
    return out


def compare_materialized_views(config: MigrationConfig, schema: ViewCatalog, src: psycopg.Connection,
                               dst: psycopg.Connection) -> list[dict[str, Any]]:
    """Each migrated materialized view on both sides: populated or not, and its rows (a count and a checksum of row
    hashes; the rows missing or extra are counted only when those differ). ``src`` may be inside a snapshot."""
    results = []
    stale_views: set[QualifiedName] = set()  # views are in dependency order: those a later one reads come first
    for view in migrated_materialized_views(config, schema, src, dst):
        source_ident = sql.Identifier(view.source.schema, view.source.name)
        here_sum = _checksum(src, source_ident) if view.populated else (0, 0)
        if not view.on_destination:
            results.append({"view": str(view.source), "target": str(view.target), "source_populated": view.populated,
                            "destination_populated": False, "missing_on_destination": True,
                            "source_rows": here_sum[0], "destination_rows": 0, "missing_count": here_sum[0],
                            "extra_count": 0, "equal": False})
            continue
        row = dst.execute("SELECT relispopulated FROM pg_class WHERE oid = %s::regclass",
                          (view.ident.as_string(dst),)).fetchone()
        populated_there = bool(row and row[0])
        there_sum = _checksum(dst, view.ident) if populated_there else (0, 0)
        missing = extra = 0
        stale = False
        reads_stale = sorted(_reads(view.source, schema.view_tables) & stale_views)
        if here_sum != there_sum and view.populated and populated_there:  # narrow down only when they differ
            stale = bool(reads_stale) or _refreshed_checksum(src, view.source) == there_sum
            here, there = _row_digests(src, source_ident), _row_digests(dst, view.ident)
            missing, extra = sum((here - there).values()), sum((there - here).values())
        expected = view.expected_populated
        results.append({
            "view": str(view.source), "target": str(view.target),
            "source_populated": view.populated, "destination_populated": populated_there,
            "source_rows": here_sum[0], "destination_rows": there_sum[0],
            "missing_count": missing if expected else 0,
            "extra_count": extra if expected else 0,
            "equal": populated_there == expected and (not expected or here_sum == there_sum or stale),
            **({"note": f"left unpopulated: reads {', '.join(map(str, view.reads_without_rows))} whose rows do not "
                        "migrate"} if view.populated and view.reads_without_rows else {}),
            **({"note": "left unpopulated: its contents do not migrate (objects.exclude_data)"}
               if view.populated and view.rows_excluded else {}),
            **({"stale_on_source": True, "note": _stale_note(reads_stale, missing, extra)} if stale else {}),
        })
        if stale:
            stale_views.add(view.source)
    return results


def _stale_note(reads_stale: list[QualifiedName], missing: int, extra: int) -> str:
    counts = f"{missing} row(s) of the source's contents not there, {extra} more"
    if reads_stale:
        return (f"reads {', '.join(map(str, reads_stale))}, older on the source than its tables: the destination's "
                f"contents follow the refreshed one(s) ({counts}); refresh them on the source too, or keep them")
    return ("the source's contents are older than its tables: the destination holds what a refresh of the view on "
            f"the source gives now ({counts}); refresh it on the source too, or keep it as it is")


def _refreshed_checksum(src: psycopg.Connection, view: QualifiedName) -> tuple[int, int]:
    """The checksum of what refreshing ``view`` on the source would give now: its defining query, run in ``src``'s
    snapshot. A view the source has not refreshed since its tables changed is not a migration difference when the
    destination holds exactly this."""
    row = src.execute("SELECT pg_get_viewdef(%s::regclass)",
                      (sql.Identifier(view.schema, view.name).as_string(src),)).fetchone()
    query = str(row[0]).strip().rstrip(";") if row and row[0] else ""
    return _checksum(src, sql.SQL("({})").format(sql.SQL(query))) if query else (-1, -1)


def _checksum(conn: psycopg.Connection, ident: sql.Composable) -> tuple[int, int]:
    """Rows and the sum of a hash of each row's text: equal sums mean equal multisets of rows (up to collisions of
    60-bit hashes), computed in SQL so that no row crosses the network."""
    row = conn.execute(sql.SQL("SELECT count(*), coalesce(sum(('x' || substr(md5(ROW(v.*)::text), 1, 15))::bit(60)"
                               "::bigint), 0) FROM {} AS v").format(ident)).fetchone()
    return (int(row[0]), int(row[1])) if row else (0, 0)


def _row_digests(conn: psycopg.Connection, ident: sql.Identifier) -> Counter[str]:
    return Counter(r[0] for r in conn.execute(sql.SQL("SELECT md5(ROW(v.*)::text) FROM {} AS v").format(ident)))


__all__ = ["MaterializedView", "ViewCatalog", "compare_materialized_views", "migrated_materialized_views",
           "sync_materialized_views"]
