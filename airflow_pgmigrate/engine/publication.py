"""The source publication that incremental sync reads: created by the migration, or given by the tables' owner.

``CREATE PUBLICATION ... FOR TABLE`` needs ownership of every listed table. A source account that only has
REPLICATION and SELECT cannot create it, so the config may name a publication the owner created beforehand
(``incremental.publication``): the migration then checks that it covers every table it copies, publishes inserts,
updates, deletes and truncates, and filters no row or column, and it never alters or drops it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import psycopg
from psycopg import sql

from airflow_pgmigrate.engine import catalog
from airflow_pgmigrate.engine.ddl_capture import install_capture
from airflow_pgmigrate.engine.names import QualifiedName
from airflow_pgmigrate.exceptions import PgMigrateError

if TYPE_CHECKING:
    from airflow_pgmigrate.config import MigrationConfig

#: What incremental sync needs a publication to publish.
ACTIONS = ("insert", "update", "delete", "truncate")


class PublicationError(PgMigrateError):
    """The publication named in the config is missing or does not publish what the migration needs."""


def _ident(name: QualifiedName) -> sql.Composable:
    return sql.Identifier(name.schema, name.name)


def _text(composable: sql.Composable) -> str:
    return composable.as_string(None)


def create_statement(name: str, tables: Iterable[QualifiedName]) -> str:
    """The statement the owner of ``tables`` runs to create the publication (shown to people, never run by us)."""
    listed = sql.SQL(", ").join(_ident(t) for t in sorted(set(tables)))
    return _text(sql.SQL("CREATE PUBLICATION {} FOR TABLE {};").format(sql.Identifier(name), listed))


@dataclass
class PublicationCheck:
    """What is wrong with an existing publication, and the statements (for its owner) that fix it."""

    name: str
    exists: bool = True
    owner: str | None = None
    missing_tables: list[QualifiedName] = field(default_factory=list)
    missing_actions: list[str] = field(default_factory=list)
    via_root: bool = False
    filtered_tables: list[QualifiedName] = field(default_factory=list)
    #: Tables whose replica identity holds a generated column the publication does not send (PostgreSQL 18+ then
    #: refuses their UPDATE and DELETE on the source).
    generated_unsent: list[QualifiedName] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.exists and not (self.missing_tables or self.missing_actions or self.via_root
                                    or self.filtered_tables or self.generated_unsent)

    def problems(self) -> list[str]:
        if not self.exists:
            return [f"publication {self.name} does not exist on the source"]
        out = []
        if self.missing_tables:
            shown = ", ".join(str(t) for t in self.missing_tables[:10])
            more = f" and {len(self.missing_tables) - 10} more" if len(self.missing_tables) > 10 else ""
            out.append(f"publication {self.name} does not publish {shown}{more}")
        if self.missing_actions:
            out.append(f"publication {self.name} does not publish {', '.join(self.missing_actions)}")
        if self.via_root:
            out.append(f"publication {self.name} publishes partitions as their root (publish_via_partition_root)")
        if self.filtered_tables:
            out.append(f"publication {self.name} filters rows or columns of "
                       + ", ".join(str(t) for t in self.filtered_tables[:10]))
        if self.generated_unsent:
            out.append(f"publication {self.name} does not send generated columns, so PostgreSQL refuses UPDATE and "
                       "DELETE on " + ", ".join(str(t) for t in self.generated_unsent[:10])
                       + " (REPLICA IDENTITY FULL with a generated column)")
        return out

    def fixes(self, selected: Iterable[QualifiedName]) -> list[str]:
        """Statements for the owner of the tables (as a superuser or that owner), one per problem."""
        ident = sql.Identifier(self.name)
        if not self.exists:
            return [create_statement(self.name, selected)]
        fixes = []
        if self.missing_tables:
            fixes.append(_text(sql.SQL("ALTER PUBLICATION {} ADD TABLE {};").format(
                ident, sql.SQL(", ").join(_ident(t) for t in self.missing_tables))))
        if self.missing_actions:
            fixes.append(_text(sql.SQL("ALTER PUBLICATION {} SET (publish = {});").format(
                ident, sql.Literal(", ".join(ACTIONS)))))
        if self.via_root:
            fixes.append(_text(sql.SQL("ALTER PUBLICATION {} SET (publish_via_partition_root = false);").format(
                ident)))
        if self.generated_unsent:
            fixes.append(_text(sql.SQL("ALTER PUBLICATION {} SET (publish_generated_columns = stored);").format(
                ident)))
        for table in self.filtered_tables:  # dropped and added again: without its WHERE clause and column list
            fixes.append(_text(sql.SQL("ALTER PUBLICATION {p} DROP TABLE {t}; ALTER PUBLICATION {p} ADD TABLE {t};")
                               .format(p=ident, t=_ident(table))))
        return fixes


def leaf_tables(conn: psycopg.Connection, tables: Iterable[QualifiedName]) -> list[QualifiedName]:
    """The tables whose rows are published: each ordinary table itself, the leaf partitions of partitioned ones.
    Unlogged tables are not: PostgreSQL writes no WAL for them, so they cannot be published."""
    names = [_text(_ident(t)) for t in tables]
    rows = conn.execute(
        """
        WITH RECURSIVE tree(oid) AS (
            SELECT c.oid FROM unnest(%s::text[]) AS n(name) JOIN pg_class c ON c.oid = to_regclass(n.name)
            UNION
            SELECT i.inhrelid FROM pg_inherits i JOIN tree ON i.inhparent = tree.oid
                JOIN pg_class p ON p.oid = tree.oid AND p.relkind = 'p'
        )
        SELECT n.nspname, c.relname FROM tree JOIN pg_class c ON c.oid = tree.oid
          JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relkind = 'r' AND c.relpersistence <> 'u' ORDER BY 1, 2
        """,
        (names,),
    ).fetchall()
    return [QualifiedName(r[0], r[1]) for r in rows]


def check_publication(conn: psycopg.Connection, name: str, tables: Iterable[QualifiedName]) -> PublicationCheck:
    """Compare the publication ``name`` with the leaf ``tables`` incremental sync needs (read on the source)."""
    version = catalog.server_version_num(conn)
    truncate = "pubtruncate" if version >= 110000 else "true"
    via_root = "pubviaroot" if version >= 130000 else "false"
    row = conn.execute(
        f"SELECT pg_get_userbyid(pubowner), pubinsert, pubupdate, pubdelete, {truncate}, {via_root} "  # noqa: S608
        "FROM pg_publication WHERE pubname = %s", (name,)).fetchone()
    result = PublicationCheck(name)
    if row is None:
        result.exists = False
        return result
    result.owner = row[0]
    result.missing_actions = [a for a, on in zip(ACTIONS, row[1:5], strict=True) if not on]
    result.via_root = bool(row[5])
    published = {QualifiedName(s, t) for s, t in conn.execute(
        "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = %s", (name,))}
    wanted = sorted(set(tables))
    result.missing_tables = [t for t in wanted if t not in published]
    if version >= 150000:
        filtered = conn.execute(
            "SELECT n.nspname, c.relname, c.relkind FROM pg_publication_rel r "
            "JOIN pg_publication p ON p.oid = r.prpubid JOIN pg_class c ON c.oid = r.prrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE p.pubname = %s AND (r.prqual IS NOT NULL OR r.prattrs IS NOT NULL) ORDER BY 1, 2",
            (name,)).fetchall()
        wanted_set = set(wanted)
        # A filter on a partitioned table applies to its partitions: report it too.
        result.filtered_tables = [QualifiedName(s, t) for s, t, kind in filtered
                                  if QualifiedName(s, t) in wanted_set or kind == "p"]
    if version >= 180000:
        result.generated_unsent = _generated_unsent(conn, name, wanted)
    return result


def _generated_unsent(conn: psycopg.Connection, name: str, tables: list[QualifiedName]) -> list[QualifiedName]:
    """Of ``tables``, those with REPLICA IDENTITY FULL and a stored generated column, when the publication does not
    send generated columns (PostgreSQL 18 refuses their UPDATE and DELETE then)."""
    rows = conn.execute(
        "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.oid = ANY(SELECT to_regclass(t) FROM unnest(%s::text[]) AS t) AND c.relreplident = 'f' "
        "AND EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attgenerated = 's' "
        "AND NOT a.attisdropped) AND EXISTS (SELECT 1 FROM pg_publication p WHERE p.pubname = %s "
        "AND p.pubgencols <> 's') ORDER BY 1, 2", ([_text(_ident(t)) for t in tables], name)).fetchall()
    return [QualifiedName(s, t) for s, t in rows]


def unlogged_tables(conn: psycopg.Connection, tables: Iterable[QualifiedName]) -> list[QualifiedName]:
    """The unlogged ones among these tables."""
    rows = conn.execute("SELECT n.nspname, c.relname FROM unnest(%s::text[]) AS t(name) "
                        "JOIN pg_class c ON c.oid = to_regclass(t.name) AND c.relpersistence = 'u' "
                        "JOIN pg_namespace n ON n.oid = c.relnamespace ORDER BY 1, 2",
                        ([_text(_ident(t)) for t in tables],)).fetchall()
    return [QualifiedName(s, t) for s, t in rows]


def virtual_generated_in_full_identity(conn: psycopg.Connection,
                                      tables: Iterable[QualifiedName]) -> list[QualifiedName]:
    """Of ``tables``, those with REPLICA IDENTITY FULL and a VIRTUAL generated column (PostgreSQL 18+): such a
    column cannot be published, and PostgreSQL refuses UPDATE and DELETE on the table once it is published."""
    if catalog.server_version_num(conn) < 180000:
        return []
    rows = conn.execute(
        "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.oid = ANY(SELECT to_regclass(t) FROM unnest(%s::text[]) AS t) AND c.relreplident = 'f' "
        "AND EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attgenerated = 'v' "
        "AND NOT a.attisdropped) ORDER BY 1, 2", ([_text(_ident(t)) for t in tables],)).fetchall()
    return [QualifiedName(s, t) for s, t in rows]


VIRTUAL_IN_FULL_IDENTITY = (
    "REPLICA IDENTITY FULL and a VIRTUAL generated column, which cannot be published: once the table is in a "
    "publication, PostgreSQL 18 refuses its UPDATE and DELETE on the source")


def virtual_generated_fix(tables: Iterable[QualifiedName]) -> str:
    """What makes such tables publishable: a key as replica identity (or a STORED column, or leaving them out)."""
    return "\n".join(f"ALTER TABLE {_text(_ident(t))} ADD PRIMARY KEY (...);" for t in tables) + (
        "\n-- or REPLICA IDENTITY USING INDEX on a unique index of NOT NULL columns, or make the column STORED, "
        "or exclude the table (objects.exclude)")


def ensure_publication(conn: psycopg.Connection, config: MigrationConfig, tables: list[QualifiedName],
                       log: Callable[[str], None] = lambda message: None) -> None:
    """Before the slot: create (or update) the migration's own publication, or check the one the config names.

    Unlogged tables are left out (PostgreSQL refuses them in a publication): the full load copies them, incremental
    sync cannot follow them, and the log says so."""
    name = config.publication_name
    virtual = virtual_generated_in_full_identity(conn, tables)
    if virtual:  # before anything is published: the source's own writes would fail
        raise PublicationError(f"table(s) {', '.join(map(str, virtual))} have {VIRTUAL_IN_FULL_IDENTITY}. Nothing was "
                               "published. "
                               f"Fix on the source: {virtual_generated_fix(virtual)}")
    unlogged = unlogged_tables(conn, tables)
    if unlogged:
        tables = [t for t in tables if t not in set(unlogged)]
        log(f"full_load unlogged_tables={','.join(str(t) for t in unlogged)} not published: unlogged tables "
            "write no WAL, so they cannot be synced incrementally; the destination keeps their rows as of the "
            "full load")
    if not config.owns_publication:
        check = check_publication(conn, name, tables)
        if not check.ok:
            raise PublicationError(
                "; ".join(check.problems()) + ". The owner of the tables (or a superuser) must run on the source: "
                + " ".join(check.fixes(tables)))
        log(f"full_load publication={name} owner={check.owner} tables={len(tables)} (given by the config, checked)")
        return
    ident = sql.Identifier(name)
    listed = sql.SQL(", ").join(_ident(t) for t in tables)
    # PostgreSQL 18 refuses UPDATE and DELETE on a published table whose replica identity holds a generated column
    # the publication does not send (REPLICA IDENTITY FULL on a table with one): send them; apply skips them.
    generated = catalog.server_version_num(conn) >= 180000
    options = sql.SQL(" WITH (publish_generated_columns = stored)" if generated else "")
    if conn.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (name,)).fetchone():
        conn.execute(sql.SQL("ALTER PUBLICATION {} SET TABLE {}").format(ident, listed))
        if generated:
            conn.execute(sql.SQL("ALTER PUBLICATION {} SET (publish_generated_columns = stored)").format(ident))
    else:
        try:
            conn.execute(sql.SQL("CREATE PUBLICATION {} FOR TABLE {}{}").format(ident, listed, options))
        except psycopg.errors.InsufficientPrivilege as exc:
            raise PublicationError(
                f"the source account cannot create publication {name}: {(exc.diag.message_primary or '').strip()}. "
                f"Either have the owner of the tables run {create_statement(name, tables)} and set "
                f"incremental.publication: {name} in the migration config, or give the account ownership of the "
                "tables (see the precheck's source_privileges item)") from None
    log(f"full_load publication={name} tables={len(tables)}")
    if config.incremental.ddl == "replicate":
        install_capture(conn, config, log)


def drop_publication(conn: psycopg.Connection, config: MigrationConfig,
                     log: Callable[[str], None] = lambda message: None) -> bool:
    """Drop the migration's own publication (after cutover or abort); a publication given by the config is kept."""
    name = config.publication_name
    if not config.owns_publication:
        log(f"release publication={name} kept: it belongs to its owner, who drops it when it is no longer needed "
            f"({_text(sql.SQL('DROP PUBLICATION {};').format(sql.Identifier(name)))})")
        return False
    if conn.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (name,)).fetchone():
        conn.execute(sql.SQL("DROP PUBLICATION {}").format(sql.Identifier(name)))
        return True
    return False


__all__ = ["ACTIONS", "VIRTUAL_IN_FULL_IDENTITY", "PublicationCheck", "PublicationError", "check_publication",
           "create_statement", "drop_publication", "ensure_publication", "leaf_tables", "unlogged_tables",
           "virtual_generated_fix", "virtual_generated_in_full_identity"]
