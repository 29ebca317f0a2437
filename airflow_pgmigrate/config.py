"""The migration config: one declarative description of a migration, validated before any I/O.

A config is loaded from YAML, from a dict (DAG params) or built in Python. Every mistake is reported at once as a
:class:`~airflow_pgmigrate.exceptions.ConfigError` whose problems name the field, what is wrong and the fix.
The config never holds a password: databases are named by Airflow connection ids.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from airflow_pgmigrate.engine.check_names import CHECK_NAMES
from airflow_pgmigrate.engine.filter_syntax import normalize_row_filter
from airflow_pgmigrate.engine.identifiers import QualifiedName, parse_qualified_name
from airflow_pgmigrate.engine.secrets import has_credentials
from airflow_pgmigrate.exceptions import ConfigError, Problem

MigrationType = Literal["schema", "full", "incremental"]
MIGRATION_TYPES: tuple[str, ...] = ("schema", "full", "incremental")
NameCase = Literal["keep", "lower", "upper"]
ConflictMode = Literal["error", "ignore"]
ApprovalMode = Literal["manual", "automatic"]
DdlMode = Literal["stop", "replicate"]

NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
#: Airflow's rule for connection ids.
CONN_ID_RE = re.compile(r"^[\w.-]+$")
#: A destination table name written like ``sales.orders``: almost surely meant as a schema move, not a dot in a name.
_SCHEMA_DOT_TABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*\.[A-Za-z_][A-Za-z0-9_$]*$")
MAX_IDENTIFIER_BYTES = 63
#: The largest value a PostgreSQL sequence holds.
BIGINT_MAX = 2**63 - 1
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_size(value: int | str) -> int:
    """Turn ``1048576``, ``"512MB"``, ``"10 GiB"`` into bytes; raise ValueError on anything else."""
    if isinstance(value, bool):
        raise ValueError("expected a size")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    match = _SIZE_RE.match(str(value))
    if not match:
        raise ValueError(f"{value!r} is not a size")
    number, unit = match.groups()
    factor = _SIZE_UNITS[(unit or "").lower()[:1]]
    return int(float(number) * factor)


def _looks_like_a_uri(value: str) -> bool:
    """A connection URI or libpq connection string where a name belongs (it may carry a password)."""
    return "://" in value or has_credentials(value) or bool(re.search(r"\b(host|user|password)\s*=", value))


def _problem(errors: list[Problem], name: str, message: str, fix: str = "") -> None:
    errors.append(Problem(name, message, fix))


def _check_identifier(errors: list[Problem], name: str, value: str, what: str = "name") -> None:
    if not value:
        _problem(errors, name, f"the {what} is empty", "give a non-empty name")
    elif len(value.encode()) > MAX_IDENTIFIER_BYTES:
        _problem(errors, name, f"the {what} {value!r} is longer than {MAX_IDENTIFIER_BYTES} bytes",
                 "PostgreSQL truncates longer names: choose a shorter one")
    elif "\x00" in value:
        _problem(errors, name, f"the {what} contains a NUL character", "remove it")


def _check_table_key(errors: list[Problem], name: str, key: str) -> QualifiedName | None:
    try:
        parsed = parse_qualified_name(key)
    except ValueError as exc:
        _problem(errors, name, str(exc), 'write it as schema.table, quoting parts that hold a dot: "my.schema".orders')
        return None
    before = len(errors)
    _check_identifier(errors, name, parsed.schema, "schema name")
    _check_identifier(errors, name, parsed.name, "table name")
    return parsed if len(errors) == before else None


#: Schemas PostgreSQL keeps for itself: never migrated, and no destination schema may be named like them.
SYSTEM_SCHEMAS = ("pg_catalog", "information_schema", "pg_toast")


def _check_destination_schema(errors: list[Problem], name: str, value: str) -> None:
    """A schema the migration creates in the destination: PostgreSQL refuses names starting with pg_."""
    if value.startswith("pg_") or value in SYSTEM_SCHEMAS:
        _problem(errors, name, f"{value!r} is a system schema name (PostgreSQL reserves the prefix pg_)",
                 "choose a name that does not start with pg_")


class _Validated:
    """Mixin: ``__post_init__`` runs ``_validate`` over the field values and raises one ConfigError."""

    @classmethod
    def _validate(cls, values: Mapping[str, Any]) -> list[Problem]:
        return []

    def __post_init__(self) -> None:
        problems = self._validate({f.name: getattr(self, f.name) for f in fields(self)})  # type: ignore[arg-type]
        if problems:
            raise ConfigError(problems)


@dataclass
class Endpoint(_Validated):
    """One side of the migration: an Airflow connection of type postgres (credentials and TLS live there)."""

    conn_id: str
    #: Database to use instead of the one in the connection.
    database: str | None = None

    @classmethod
    def _validate(cls, values: Mapping[str, Any]) -> list[Problem]:
        errors: list[Problem] = []
        conn_id = values.get("conn_id")
        if isinstance(conn_id, str) and not conn_id.strip():
            _problem(errors, "conn_id", "the connection id is empty", "name an Airflow connection of type postgres")
        elif isinstance(conn_id, str) and _looks_like_a_uri(conn_id):
            _problem(errors, "conn_id", "holds a connection URI (not shown: it may contain a password), not an "
                     "Airflow connection id", "create an Airflow connection with these settings (its password stays "
                     "in Airflow's secrets) and put its id here; never write a password into a migration config")
        elif isinstance(conn_id, str) and not CONN_ID_RE.match(conn_id):
            _problem(errors, "conn_id", f"{conn_id!r} is not an Airflow connection id",
                     "connection ids hold letters, digits, '_', '.' and '-' only")
        database = values.get("database")
        if isinstance(database, str) and _looks_like_a_uri(database):
            _problem(errors, "database", "holds a connection string (not shown: it may contain a password), not a "
                     "database name", "write only the database name; the server and credentials come from the "
                     "Airflow connection")
        elif isinstance(database, str):
            _check_identifier(errors, "database", database, "database name")
        return errors


@dataclass
class RdsSettings(_Validated):
    """The Amazon RDS side: checked through boto3 by the precheck."""

    db_instance_identifier: str
    aws_conn_id: str | None = None
    region: str | None = None
    #: CIDR blocks the migration workers connect from; each must be admitted by a security group on the DB port.
    worker_cidrs: list[str] = field(default_factory=list)
    #: May the migration add the missing ingress rule itself (and remove it at the end)?
    manage_security_group: bool = False
    #: Do the workers reach the instance over the internet (then it must be publicly accessible)?
    connect_over_internet: bool = True

    @classmethod
    def _validate(cls, values: Mapping[str, Any]) -> list[Problem]:
        errors: list[Problem] = []
        ident = values.get("db_instance_identifier")
        if isinstance(ident, str) and not re.fullmatch(r"[A-Za-z][A-Za-z0-9-]{0,62}", ident):
            _problem(errors, "db_instance_identifier", f"{ident!r} is not an RDS DB instance identifier",
                     "use 1-63 letters, digits or hyphens, starting with a letter, as shown in the RDS console")
        region = values.get("region")
        if isinstance(region, str) and not re.fullmatch(r"[a-z]{2}(-[a-z]+)+-\d", region):
            _problem(errors, "region", f"{region!r} is not an AWS region name", "write it like us-east-1")
        for i, cidr in enumerate(values.get("worker_cidrs") or []):
            try:
                ipaddress.ip_network(cidr, strict=True)
            except ValueError as exc:
                _problem(errors, f"worker_cidrs[{i}]", f"{cidr!r} is not a CIDR block ({exc})",
                         "write an address block like 203.0.113.0/24 (host bits zero) or 203.0.113.7/32")
        if values.get("manage_security_group") and not values.get("worker_cidrs"):
            _problem(errors, "manage_security_group", "is true but worker_cidrs is empty",
                     "list the CIDR blocks the workers connect from in rds.worker_cidrs")
        return errors


@dataclass
class ObjectSelection(_Validated):
    """Which tables migrate. Names are exact (case-sensitive); patterns are shell globs over ``schema.table``.

    Nothing listed selects every table of every non-system schema.
    """

    schemas: list[str] = field(default_factory=list)
    tables: list[str] = field(default_factory=list)
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    #: Column selection per table: ``{"public.orders": ["id", "amount"]}``.
    columns: dict[str, list[str]] = field(default_factory=dict)
    #: Selected tables whose definition migrates without their rows (globs over ``schema.table``).
    exclude_data: list[str] = field(default_factory=list)

    @classmethod
    def _validate(cls, values: Mapping[str, Any]) -> list[Problem]:
        errors: list[Problem] = []
        for i, schema in enumerate(values.get("schemas") or []):
            _check_identifier(errors, f"schemas[{i}]", schema, "schema name")
            if schema in SYSTEM_SCHEMAS or schema.startswith("pg_"):
                _problem(errors, f"schemas[{i}]", f"{schema!r} is a system schema: it is never migrated",
                         "select the schemas of your own tables")
        for i, table in enumerate(values.get("tables") or []):
            _check_table_key(errors, f"tables[{i}]", table)
        for key in ("include", "exclude", "exclude_data"):
            for i, pattern in enumerate(values.get(key) or []):
                if not pattern.strip():
                    _problem(errors, f"{key}[{i}]", "the pattern is empty", "write a glob such as sales.* or *.tmp_*")
                elif "." not in pattern:
                    _problem(errors, f"{key}[{i}]", f"the pattern {pattern!r} has no schema part",
                             f"patterns match schema.table: write *.{pattern} or public.{pattern}")
        for table, cols in (values.get("columns") or {}).items():
            _check_table_key(errors, f"columns[{table!r}]", table)
            if not cols:
                _problem(errors, f"columns[{table!r}]", "the column list is empty",
                         "list the columns to migrate, or drop the entry to migrate them all")
            seen: set[str] = set()
            for col in cols:
                _check_identifier(errors, f"columns[{table!r}]", col, "column name")
                if col in seen:
                    _problem(errors, f"columns[{table!r}]", f"column {col!r} is listed twice", "list it once")
                seen.add(col)
        return errors

    @property
    def selects_everything(self) -> bool:
        return not (self.schemas or self.tables or self.include)


@dataclass
class NameMapping(_Validated):
    """Renames in the destination. Explicit names are used verbatim; ``name_case`` applies to the others."""

    schemas: dict[str, str] = field(default_factory=dict)
    #: ``{"public.orders": "orders_v2"}``: a new table name inside its (mapped) schema.
    tables: dict[str, str] = field(default_factory=dict)
    #: ``{"public.orders": {"amount": "total"}}``.
    columns: dict[str, dict[str, str]] = field(default_factory=dict)
    name_case: NameCase = "keep"

    @classmethod
    def _validate(cls, values: Mapping[str, Any]) -> list[Problem]:
        errors: list[Problem] = []
        for src, dst in (values.get("schemas") or {}).items():
            _check_identifier(errors, f"schemas[{src!r}]", src, "source schema name")
            _check_identifier(errors, f"schemas[{src!r}]", dst, "destination schema name")
            _check_destination_schema(errors, f"schemas[{src!r}]", dst)
        targets: dict[tuple[str, str], str] = {}
        schema_map = values.get("schemas") or {}
        for src, dst in (values.get("tables") or {}).items():
            qn = _check_table_key(errors, f"tables[{src!r}]", src)
            _check_identifier(errors, f"tables[{src!r}]", dst, "destination table name")
            if _SCHEMA_DOT_TABLE.match(dst):
                _problem(errors, f"tables[{src!r}]", f"the destination table name {dst!r} looks like schema.table",
                         "the value is a bare table name, verbatim, in the table's (mapped) schema: to move tables to "
                         "another schema, map the schema in mapping.schemas")
            if qn is None:
                continue
            target = (schema_map.get(qn.schema, qn.schema), dst)
            if target in targets:
                _problem(errors, f"tables[{src!r}]",
                         f"maps to {target[0]}.{target[1]}, as {targets[target]!r} does already",
                         "give each table its own destination name")
            targets[target] = src
        for table, renames in (values.get("columns") or {}).items():
            _check_table_key(errors, f"columns[{table!r}]", table)
            seen: dict[str, str] = {}
            for src, dst in renames.items():
                _check_identifier(errors, f"columns[{table!r}][{src!r}]", dst, "destination column name")
                if dst in seen:
                    _problem(errors, f"columns[{table!r}][{src!r}]",
                             f"maps to {dst!r}, as column {seen[dst]!r} does already",
                             "give each column its own destination name")
                seen[dst] = src
        return errors


@dataclass
class FullLoadThrottle(_Validated):
    queries_per_second: float | None = None
    rows_per_second: float | None = None
    mb_per_second: float | None = None

    @classmethod
    def _validate(cls, values: Mapping[str, Any]) -> list[Problem]:
        return _positive_or_none(values, ("queries_per_second", "rows_per_second", "mb_per_second"))


@dataclass
class IncrementalThrottle(_Validated):
    rows_per_second: float | None = None
    mb_per_second: float | None = None

    @classmethod
    def _validate(cls, values: Mapping[str, Any]) -> list[Problem]:
        return _positive_or_none(values, ("rows_per_second", "mb_per_second"))


def _positive_or_none(values: Mapping[str, Any], names: tuple[str, ...]) -> list[Problem]:
    errors: list[Problem] = []
    for name in names:
        value = values.get(name)
        if value is not None and value <= 0:
            _problem(errors, name, f"must be greater than 0, got {value}", "leave it out (or null) for no limit")
    return errors


@dataclass
class Throttling(_Validated):
    """DTS "Enable Throttling": caps for the full load and for incremental sync. Unset means unlimited."""

    full_load: FullLoadThrottle = field(default_factory=FullLoadThrottle)
    incremental: IncrementalThrottle = field(default_factory=IncrementalThrottle)


@dataclass
class RetryWindows(_Validated):
    """How long incremental sync keeps retrying: after connection failures, and after other errors that can pass.

    Minutes are numbers: fractions are allowed (short windows are meant for rehearsals and tests).
    """

    connection_failures_minutes: float = 720
    other_errors_minutes: float = 10

    @classmethod
    def _validate(cls, values: Mapping[str, Any]) -> list[Problem]:
        errors: list[Problem] = []
        conn = _number(values.get("connection_failures_minutes"))
        other = _number(values.get("other_errors_minutes"))
        if conn is not None and not 0 < conn <= 1440:
            _problem(errors, "connection_failures_minutes", f"must be more than 0 and at most 1440, got {conn:g}",
                     "720 (12 hours) is the default; at least 30 is recommended")
        if other is not None and not 0 < other <= 1440:
            _problem(errors, "other_errors_minutes", f"must be more than 0 and at most 1440, got {other:g}",
                     "10 is the default")
        if conn is not None and other is not None and other >= conn:
            _problem(errors, "other_errors_minutes",
                     f"must be less than connection_failures_minutes ({conn:g}), got {other:g}",
                     "lower other_errors_minutes or raise connection_failures_minutes")
        return errors


def _number(value: Any) -> float | None:
    """A number given for a numeric field (type errors are reported elsewhere), else None."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


@dataclass
class SchemaSettings(_Validated):
    """Schema migration: who owns the objects in the destination, and how post-data is built."""

    #: Source role -> destination role. Empty: every object belongs to the destination account.
    owner_mapping: dict[str, str] = field(default_factory=dict)
    #: Migrate GRANTs for roles that exist in the destination (after owner_mapping); needs owner_mapping or roles
    #: with the same names on both sides.
    migrate_grants: bool = False
    #: Connections building indexes and constraints in parallel in the post-data phase.
    index_jobs: int = 2
    #: A foreign key of a selected table that references a table not selected: "error" stops post_data before any
    #: change; "skip" leaves the constraint out and lists it in the report.
    foreign_keys_to_excluded: Literal["error", "skip"] = "error"
    #: Indexes post_data does not build: ``schema.index`` names or globs (an index of a partitioned table takes its
    #: partitions' indexes with it). Each must match an index that is not a constraint's.
    exclude_indexes: list[str] = field(default_factory=list)

    @classmethod
    def _validate(cls, values: Mapping[str, Any]) -> list[Problem]:
        errors: list[Problem] = []
        for i, pattern in enumerate(values.get("exclude_indexes") or []):
            if isinstance(pattern, str) and "." not in pattern:
                _problem(errors, f"exclude_indexes[{i}]", f"the pattern {pattern!r} has no schema part",
                         f"patterns match schema.index: write *.{pattern} or public.{pattern}")
        jobs = values.get("index_jobs")
        if isinstance(jobs, int) and not 1 <= jobs <= 32:
            _problem(errors, "index_jobs", f"must be between 1 and 32, got {jobs}", "2 is the default")
        for src, dst in (values.get("owner_mapping") or {}).items():
            _check_identifier(errors, f"owner_mapping[{src!r}]", src, "source role name")
            _check_identifier(errors, f"owner_mapping[{src!r}]", dst, "destination role name")
        return errors


@dataclass
class FullLoadSettings(_Validated):
    #: Tables (or table parts) copied at the same time.
    parallel_jobs: int = 4
    #: "auto": every table is copied whole, in one ``COPY ... FREEZE`` (parts of one table written side by side cost
    #: more than they gain; measured in docs/full_load.md). A size (bytes, or "512MB", "10GB"): every table larger
    #: than it is split into ranges copied in parallel, for servers with cores to spare.
    split_tables_larger_than: int | str = "auto"
    #: With schema migration: a table's indexes and keys (primary, unique, exclusion) are built as soon as its copy is
    #: committed, beside the copies of the other tables; false leaves them all to post_data.
    build_indexes: bool = True

    @classmethod
    def _validate(cls, values: Mapping[str, Any]) -> list[Problem]:
        errors: list[Problem] = []
        jobs = values.get("parallel_jobs")
        if isinstance(jobs, int) and not 1 <= jobs <= 64:
            _problem(errors, "parallel_jobs", f"must be between 1 and 64, got {jobs}",
                     "about the number of cores of the smaller server is a good start")
        size = values.get("split_tables_larger_than")
        if size is not None and size != "auto":
            try:
                if parse_size(size) < 1024 * 1024:
                    _problem(errors, "split_tables_larger_than", f"{size!r} is less than 1MB",
                             "use a size of at least 1MB, such as 1GB")
            except ValueError as exc:
                _problem(errors, "split_tables_larger_than", str(exc),
                         "write auto, bytes, or a size such as 512MB or 10GB")
        return errors

    @property
    def split_bytes(self) -> int | None:
        """The split size, or None for ``auto``."""
        if self.split_tables_larger_than == "auto":
            return None
        return parse_size(self.split_tables_larger_than)


@dataclass
class IncrementalSettings(_Validated):
    #: The replication slot (and publication) is named ``<slot_prefix><migration name>``.
    slot_prefix: str = "pgmigrate_"
    #: Incremental sync counts as "not delayed" when the lag is under both thresholds.
    max_lag_seconds: float = 5.0
    max_lag_bytes: int | str = "16MB"
    #: A publication created beforehand by the owner of the tables (for a source account that does not own them);
    #: the migration checks that it covers the selected tables and never alters or drops it. Unset: the migration
    #: creates its own publication ``<slot_prefix><name>`` and drops it at the end.
    publication: str | None = None
    #: Retained-WAL watchdog: above this much WAL held by the slot on the source, warn (log line and alert).
    retained_wal_warn: int | str | None = "5GB"
    #: Above this, stop safely (the task fails and says what to do; see docs/monitoring.md). None: never stop.
    retained_wal_stop: int | str | None = None
    #: On a stop, drop the slot too (protects the source disk; the migration restarts from a fresh full load).
    drop_slot_on_stop: bool = False
    #: DDL on the source during the sync: ``stop`` the sync and say what to do (the default), or ``replicate`` it
    #: (an event trigger records table DDL on the source, applied in commit order; see docs/incremental.md).
    ddl: DdlMode = "stop"

    @property
    def retained_wal_warn_bytes(self) -> int | None:
        return None if self.retained_wal_warn is None else parse_size(self.retained_wal_warn)

    @property
    def retained_wal_stop_bytes(self) -> int | None:
        return None if self.retained_wal_stop is None else parse_size(self.retained_wal_stop)

    @classmethod
    def _validate(cls, values: Mapping[str, Any]) -> list[Problem]:
        errors: list[Problem] = []
        publication = values.get("publication")
        if isinstance(publication, str):
            _check_identifier(errors, "publication", publication, "publication name")
        prefix = values.get("slot_prefix")
        if isinstance(prefix, str) and not re.fullmatch(r"[a-z0-9_]*", prefix):
            _problem(errors, "slot_prefix", f"{prefix!r} may hold only lower-case letters, digits and _",
                     "replication slot names allow only [a-z0-9_]; the default is pgmigrate_")
        if values.get("ddl") == "replicate" and isinstance(publication, str):
            _problem(errors, "ddl", f"replicate needs the migration's own publication, and publication is set to "
                     f"{publication!r}", "leave publication out (the migration then creates its own and adds the "
                     "tables DDL creates to it), or keep ddl: stop")
        lag = values.get("max_lag_seconds")
        if isinstance(lag, (int, float)) and lag <= 0:
            _problem(errors, "max_lag_seconds", f"must be greater than 0, got {lag}", "5 seconds is the default")
        size = values.get("max_lag_bytes")
        if size is not None:
            try:
                parse_size(size)
            except ValueError as exc:
                _problem(errors, "max_lag_bytes", str(exc), "write bytes or a size such as 16MB")
        return errors + _retained_wal_problems(values)


def _retained_wal_problems(values: Mapping[str, Any]) -> list[Problem]:
    """The watchdog's sizes: valid, at least 1MB, the stop limit above the warning, dropping only with a limit."""
    errors: list[Problem] = []
    sizes: dict[str, int] = {}
    for name in ("retained_wal_warn", "retained_wal_stop"):
        size = values.get(name)
        if size is None:
            continue
        try:
            sizes[name] = parse_size(size)
        except ValueError as exc:
            _problem(errors, name, str(exc), "write bytes or a size such as 5GB, or null to turn it off")
            continue
        if sizes[name] < 1024 * 1024:
            _problem(errors, name, f"{size!r} is less than 1MB", "use a size of at least 1MB, such as 5GB")
    warn, stop = sizes.get("retained_wal_warn"), sizes.get("retained_wal_stop")
    if warn is not None and stop is not None and stop <= warn:
        _problem(errors, "retained_wal_stop",
                 f"must be larger than retained_wal_warn ({values.get('retained_wal_warn')}), got "
                 f"{values.get('retained_wal_stop')}",
                 "the stop limit comes after the warning: raise it, or lower retained_wal_warn")
    if values.get("drop_slot_on_stop") and values.get("retained_wal_stop") is None:
        _problem(errors, "drop_slot_on_stop", "is true but retained_wal_stop is not set",
                 "set retained_wal_stop (the size at which the slot is dropped), or leave drop_slot_on_stop out")
    return errors


@dataclass
class CutoverSettings(_Validated):
    #: ``manual``: a person approves in the Airflow UI; ``automatic``: for unattended runs (needs freeze_source).
    approval: ApprovalMode = "manual"
    #: Freeze the source at cutover: no new sessions but the migration's, the others ended, read-only by default
    #: (else the approval is the user's word that writes stopped). See docs/cutover.md.
    freeze_source: bool = False
    #: Prepared transactions in the source database block the freeze: wait up to this long for them to be committed
    #: or rolled back (0: refuse at once, naming them).
    prepared_transactions_wait_seconds: int = 0
    #: After the drain, how long the cutover watches the slot for changes that still arrive before it releases.
    writes_stopped_check_seconds: int = 3
    #: Added to every sequence value copied to the destination at cutover.
    sequence_offset: int = 0
    #: Finish the cutover even when verification finds differences.
    allow_differences: bool = False

    @classmethod
    def _validate(cls, values: Mapping[str, Any]) -> list[Problem]:
        errors: list[Problem] = []
        offset = values.get("sequence_offset")
        if isinstance(offset, int) and offset < 0:
            _problem(errors, "sequence_offset", f"must be 0 or more, got {offset}", "use 0 for no offset")
        if isinstance(offset, int) and offset > BIGINT_MAX:
            _problem(errors, "sequence_offset", f"{offset} does not fit a sequence (at most {BIGINT_MAX})",
                     "use an offset a little above the number of values handed out while cutting over, such as 1000")
        for name, low, high in (("prepared_transactions_wait_seconds", 0, 3600),
                                ("writes_stopped_check_seconds", 1, 600)):
            value = values.get(name)
            if isinstance(value, int) and not low <= value <= high:
                _problem(errors, name, f"must be between {low} and {high} seconds, got {value}",
                         f"the default is {cls.__dataclass_fields__[name].default}")
        return errors


@dataclass
class PrecheckSettings(_Validated):
    #: Check names to skip (the DTS "ignore" of an alert); see docs/precheck.md for the names.
    skip: list[str] = field(default_factory=list)
    #: A source transaction open longer than this is reported (it holds back the start of incremental sync).
    long_transaction_seconds: int = 300
    #: Fail the task on warnings too.
    fail_on_warning: bool = False

    @classmethod
    def _validate(cls, values: Mapping[str, Any]) -> list[Problem]:
        errors: list[Problem] = []
        for i, name in enumerate(values.get("skip") or []):
            if name not in CHECK_NAMES:
                close = difflib.get_close_matches(name, CHECK_NAMES, n=1)
                hint = f"did you mean {close[0]!r}?" if close else f"known checks: {', '.join(CHECK_NAMES)}"
                _problem(errors, f"skip[{i}]", f"{name!r} is not a precheck item", hint)
            elif name.endswith("_connection"):
                _problem(errors, f"skip[{i}]", f"{name!r} cannot be skipped: every other item needs the connection",
                         "remove it from precheck.skip")
        seconds = values.get("long_transaction_seconds")
        if isinstance(seconds, int) and seconds < 1:
            _problem(errors, "long_transaction_seconds", f"must be at least 1, got {seconds}", "300 is the default")
        return errors


#: Short names of the notifiers that ship with the provider (usable without any other provider).
BUILTIN_NOTIFIERS = {
    "log": "airflow_pgmigrate.notifications.migration.AlertLogNotifier",
    "file": "airflow_pgmigrate.notifications.migration.AlertFileNotifier",
}
_DOTTED_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$")
#: ``{message}``-style placeholders of notifier arguments, filled from the alert (see NotifierSettings).
ALERT_PLACEHOLDERS = ("kind", "severity", "message", "migration", "dag_id", "run_id", "task_id", "at")
_SECRET_KEY_RE = re.compile(r"password|passwd|secret|token|api_?key|webhook_url", re.IGNORECASE)


@dataclass
class NotifierSettings(_Validated):
    """One notifier alerts go to: an Airflow notifier class (a ``BaseNotifier`` subclass) and its arguments.

    ``notifier`` is an import path such as ``airflow.providers.slack.notifications.slack.SlackNotifier`` or a
    built-in short name (``log``, ``file``). ``kwargs`` go to its constructor, with the placeholders ``{kind}``,
    ``{severity}``, ``{message}``, ``{migration}``, ``{dag_id}``, ``{run_id}``, ``{task_id}`` and ``{at}`` replaced by
    the alert's values. Jinja cannot refer to the alert: Airflow renders the config when the task starts.
    """

    notifier: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def class_path(self) -> str:
        return BUILTIN_NOTIFIERS.get(self.notifier, self.notifier)

    @classmethod
    def _validate(cls, values: Mapping[str, Any]) -> list[Problem]:
        errors: list[Problem] = []
        notifier = values.get("notifier")
        if isinstance(notifier, str) and notifier not in BUILTIN_NOTIFIERS and not _DOTTED_RE.match(notifier):
            _problem(errors, "notifier", f"{notifier!r} is neither a built-in notifier nor an import path",
                     f"use one of {', '.join(BUILTIN_NOTIFIERS)}, or module.path.ClassName of a BaseNotifier "
                     "subclass, such as airflow.providers.slack.notifications.slack.SlackNotifier")
        kwargs = values.get("kwargs") or {}
        for key, value in kwargs.items():
            if isinstance(value, str) and "{{" in value and "pgmigrate_alert" in value:
                _problem(errors, f"kwargs[{key!r}]", "refers to pgmigrate_alert in Jinja, which Airflow renders when "
                         "the task starts, before any alert exists", "use the placeholders {message}, {kind}, "
                         "{severity}, {migration}, {task_id}, {run_id}, {dag_id}, {at} instead")
            if not str(key).isidentifier():
                _problem(errors, f"kwargs[{key!r}]", "is not a valid argument name", "use the constructor's "
                         "argument names (letters, digits and _)")
            elif _SECRET_KEY_RE.search(str(key)) and not str(key).endswith("_conn_id"):
                _problem(errors, f"kwargs[{key!r}]", "looks like a secret; the config is shown in the Airflow UI "
                         "(rendered template fields)", "keep the secret in an Airflow connection and pass the "
                         "connection id (for example slack_conn_id)")
        if notifier == "file" and not isinstance(kwargs.get("path"), str):
            _problem(errors, "kwargs", "the file notifier needs 'path' (the JSON-lines file alerts are appended to)",
                     "add kwargs: {path: /var/log/airflow/pgmigrate-alerts.jsonl}")
        if notifier in BUILTIN_NOTIFIERS:
            allowed = {"file": {"path"}, "log": {"level"}}[notifier]
            for key in kwargs:
                if key not in allowed:
                    _problem(errors, f"kwargs[{key!r}]", f"is not an argument of the {notifier} notifier",
                             f"its arguments: {', '.join(sorted(allowed))}")
        return errors


@dataclass
class AlertSettings(_Validated):
    """Alerts (lag above a threshold, retained WAL, task failure) sent through Airflow notifiers.

    Every alert is also logged as a warning line; without notifiers that is all that happens.
    """

    notifiers: list[NotifierSettings] = field(default_factory=list)
    #: Alert when a migration task fails for good (after its retries).
    on_task_failure: bool = True
    #: Alert when the lag after a poke exceeds this many seconds (once per crossing; a notice when it recovers).
    lag_seconds: float | None = 300.0
    #: ... or this much WAL (bytes or a size such as "1GB"). None: no alert on this measure.
    lag_bytes: int | str | None = None

    @property
    def lag_bytes_limit(self) -> int | None:
        return None if self.lag_bytes is None else parse_size(self.lag_bytes)

    @classmethod
    def _validate(cls, values: Mapping[str, Any]) -> list[Problem]:
        errors: list[Problem] = []
        seconds = values.get("lag_seconds")
        if isinstance(seconds, (int, float)) and seconds <= 0:
            _problem(errors, "lag_seconds", f"must be greater than 0, got {seconds}",
                     "leave it out for the default (300), or null for no alert on lag seconds")
        size = values.get("lag_bytes")
        if size is not None:
            try:
                if parse_size(size) <= 0:
                    _problem(errors, "lag_bytes", "must be greater than 0", "write a size such as 1GB")
            except ValueError as exc:
                _problem(errors, "lag_bytes", str(exc), "write bytes or a size such as 1GB")
        return errors


@dataclass
class ReportSettings(_Validated):
    """The migration report (an HTML file with the timeline and the lag and throughput plots)."""

    #: Write the report (at the end of every migration task).
    enabled: bool = True
    #: Folder of the report files (one ``<name>.html`` per migration). None: ``$PGMIGRATE_REPORT_FOLDER``, else
    #: ``$AIRFLOW_HOME/pgmigrate_reports``.
    directory: str | None = None
    #: Where that folder is served over HTTP, for the task's "Migration report" link. None: the page Airflow's API
    #: server serves (the provider's plugin, /pgmigrate/reports/<name>.html).
    base_url: str | None = None

    @classmethod
    def _validate(cls, values: Mapping[str, Any]) -> list[Problem]:
        errors: list[Problem] = []
        directory = values.get("directory")
        if isinstance(directory, str) and (not directory.strip() or "\x00" in directory):
            _problem(errors, "directory", "is empty or holds a NUL character",
                     "give a folder path, or leave it out for the default")
        url = values.get("base_url")
        if isinstance(url, str) and not re.match(r"^(https?|file)://\S+$", url):
            _problem(errors, "base_url", f"{url!r} is not an http(s):// or file:// URL",
                     "write the URL the report folder is served at, such as https://reports.example.com/pgmigrate")
        return errors


@dataclass
class MigrationConfig(_Validated):
    """One migration: what moves where, how, and how it is checked. See docs/configuration.md."""

    name: str
    source: Endpoint
    destination: Endpoint
    migration_types: list[MigrationType] = field(default_factory=lambda: ["schema", "full", "incremental"])
    objects: ObjectSelection = field(default_factory=ObjectSelection)
    mapping: NameMapping = field(default_factory=NameMapping)
    #: Row filter per table: ``{"public.orders": "created_at >= '2024-01-01'"}`` (one SQL condition, no subquery).
    filters: dict[str, str] = field(default_factory=dict)
    conflicting_tables: ConflictMode = "error"
    schema_migration: SchemaSettings = field(default_factory=SchemaSettings)
    throttling: Throttling = field(default_factory=Throttling)
    retry: RetryWindows = field(default_factory=RetryWindows)
    full_load: FullLoadSettings = field(default_factory=FullLoadSettings)
    incremental: IncrementalSettings = field(default_factory=IncrementalSettings)
    cutover: CutoverSettings = field(default_factory=CutoverSettings)
    precheck: PrecheckSettings = field(default_factory=PrecheckSettings)
    rds: RdsSettings | None = None
    alerts: AlertSettings = field(default_factory=AlertSettings)
    report: ReportSettings = field(default_factory=ReportSettings)
    #: Schema in the destination where the migration keeps its durable state.
    state_schema: str = "pgmigrate"

    @classmethod
    def _validate(cls, values: Mapping[str, Any]) -> list[Problem]:
        errors: list[Problem] = []
        name = values.get("name")
        if isinstance(name, str) and not NAME_RE.match(name):
            _problem(errors, "name", f"{name!r} may hold only lower-case letters, digits and _, starting with a letter",
                     "it becomes the DAG id and the replication slot name: use something like shop_to_apsara")
        incremental = values.get("incremental")
        prefix = incremental.slot_prefix if isinstance(incremental, IncrementalSettings) else "pgmigrate_"
        if isinstance(name, str) and len(prefix) + len(name) > MAX_IDENTIFIER_BYTES:
            _problem(errors, "name", f"slot name {prefix + name!r} is longer than {MAX_IDENTIFIER_BYTES} bytes",
                     "shorten the name or incremental.slot_prefix")
        source, destination = values.get("source"), values.get("destination")
        if isinstance(source, Endpoint) and isinstance(destination, Endpoint):
            if source.conn_id == destination.conn_id and (source.database or "") == (destination.database or ""):
                _problem(errors, "destination.conn_id", "is the same connection and database as the source",
                         "point destination at another database")
        types_ = values.get("migration_types")
        cutover = values.get("cutover")
        if (isinstance(cutover, CutoverSettings) and cutover.approval == "automatic" and not cutover.freeze_source
                and "incremental" in (types_ or MIGRATION_TYPES)):
            _problem(errors, "cutover.approval", "is automatic while cutover.freeze_source is false: nobody would say "
                     "that the application stopped writing, and writes after the slot is released are lost",
                     "set cutover.freeze_source: true (the cutover stops the writes itself), or approval: manual "
                     "(you answer the cutover question once the application stopped writing)")
        if types_ is not None:
            if not types_:
                _problem(errors, "migration_types", "is empty",
                         "choose one or more of schema, full, incremental (all three are recommended)")
            if len(set(types_)) != len(types_):
                _problem(errors, "migration_types", f"lists a type twice: {types_}", "list each type once")
        for table, condition in (values.get("filters") or {}).items():
            _check_table_key(errors, f"filters[{table!r}]", table)
            try:
                normalize_row_filter(condition)
            except ValueError as exc:
                _problem(errors, f"filters[{table!r}]", str(exc),
                         "write one SQL condition over the table's columns, e.g. created_at >= '2024-01-01'")
        state_schema = values.get("state_schema")
        if isinstance(state_schema, str):
            _check_identifier(errors, "state_schema", state_schema, "schema name")
            _check_destination_schema(errors, "state_schema", state_schema)
            objects, mapping = values.get("objects"), values.get("mapping")
            if isinstance(objects, ObjectSelection) and isinstance(mapping, NameMapping):
                clash = _listed_destination_schemas(objects, mapping).get(state_schema)
                if clash:
                    _problem(errors, "state_schema", f"{state_schema!r} is also where {clash} goes in the "
                             "destination: the migration's own tables would mix with (or clash with) migrated ones",
                             "give state_schema a schema of its own, such as pgmigrate_state")
        return errors

    # -- derived ------------------------------------------------------------------------------------------------

    @property
    def slot_name(self) -> str:
        return f"{self.incremental.slot_prefix}{self.name}"

    @property
    def publication_name(self) -> str:
        """The publication incremental sync reads: the one named in the config, else the migration's own."""
        return self.incremental.publication or self.slot_name

    @property
    def owns_publication(self) -> bool:
        """Whether the migration creates (and at the end drops) its publication itself."""
        return self.incremental.publication is None

    @property
    def dag_id(self) -> str:
        return f"pgmigrate_{self.name}"

    def wants(self, migration_type: str) -> bool:
        return migration_type in self.migration_types

    def row_filter(self, table: QualifiedName) -> str | None:
        """The normalised row filter for a source table, or None."""
        for key, condition in self.filters.items():
            if parse_qualified_name(key) == table:
                return normalize_row_filter(condition)
        return None

    def to_dict(self) -> dict[str, Any]:
        """A plain dict that :meth:`from_dict` accepts (for XCom and DAG params)."""
        return _to_plain(self)

    # -- loading ------------------------------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str | None = None) -> MigrationConfig:
        problems: list[Problem] = []
        built = _build(cls, data, "", problems)
        if problems or built is None:
            raise ConfigError(problems, source=source)
        return typing.cast(MigrationConfig, built)

    @classmethod
    def from_yaml(cls, path: str | Path) -> MigrationConfig:
        import yaml

        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError([Problem("(file)", f"cannot read {path}: {exc.strerror}", "check the path")],
                              source=str(path)) from None
        try:
            duplicates = _duplicate_keys(yaml.compose(text, Loader=yaml.SafeLoader), cls, "", set())
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise ConfigError([Problem("(file)", f"is not valid YAML{where}: {getattr(exc, 'problem', exc)}",
                                       "fix the YAML syntax")], source=str(path)) from None
        if duplicates:
            # YAML itself keeps only the last value of a key written twice: the earlier one would vanish silently.
            raise ConfigError(duplicates, source=str(path))
        if not isinstance(data, Mapping):
            raise ConfigError([Problem("(file)", "does not hold a mapping of fields",
                                       "start the file with fields such as 'name:', 'source:', 'destination:'")],
                              source=str(path))
        return cls.from_dict(data, source=str(path))


def load_config(config: MigrationConfig | Mapping[str, Any] | str | Path) -> MigrationConfig:
    """Accept what operators accept as ``config=``: a MigrationConfig, a dict, or a path to a YAML file."""
    if isinstance(config, MigrationConfig):
        return config
    if isinstance(config, Mapping):
        return MigrationConfig.from_dict(config)
    if isinstance(config, (str, Path)):
        text = str(config)
        if "\n" not in text and text.strip().endswith((".yaml", ".yml")):
            return MigrationConfig.from_yaml(text.strip())
        raise ConfigError([Problem("config", f"{text[:80]!r} is not a path to a .yaml/.yml file",
                                   "pass a MigrationConfig, a dict, or the path of a YAML file")])
    raise ConfigError([Problem("config", f"cannot use a {type(config).__name__} as a migration config",
                               "pass a MigrationConfig, a dict, or the path of a YAML file")])


def _duplicate_keys(node: Any, tp: Any, path: str, visited: set[int]) -> list[Problem]:
    """Keys written twice in one YAML mapping, with their field paths (the config's types give the path style).

    A node reached again through an alias is not walked twice (aliases can nest exponentially).
    """
    import yaml

    if id(node) in visited:
        return []
    visited.add(id(node))
    if isinstance(node, yaml.SequenceNode):
        item = get_args(tp)[0] if get_origin(tp) is list and get_args(tp) else None
        return [p for i, child in enumerate(node.value) for p in _duplicate_keys(child, item, f"{path}[{i}]", visited)]
    if not isinstance(node, yaml.MappingNode):
        return []
    if get_origin(tp) in (Union, types.UnionType):
        tp = next((a for a in get_args(tp) if is_dataclass(a) or get_origin(a) is dict), None)
    hints = get_type_hints(tp) if is_dataclass(tp) else {}
    problems: list[Problem] = []
    seen: dict[Any, int] = {}
    for key_node, value_node in node.value:
        key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node)
        if is_dataclass(tp):
            child_path, child_tp = _join(path, str(key)), hints.get(str(key))
        else:
            child_path = f"{path}[{key!r}]" if path else repr(key)
            child_tp = get_args(tp)[1] if get_origin(tp) is dict and len(get_args(tp)) == 2 else None
        line = key_node.start_mark.line + 1
        if key in seen:
            problems.append(Problem(child_path, f"is written twice (lines {seen[key]} and {line}): YAML would keep only "
                                                "the last one", "keep one of them (merge their contents)"))
        else:
            seen[key] = line
        problems += _duplicate_keys(value_node, child_tp, child_path, visited)
    return problems


def _listed_destination_schemas(objects: ObjectSelection, mapping: NameMapping) -> dict[str, str]:
    """Destination schema -> what the config sends there, for the schemas and tables it names explicitly."""
    from airflow_pgmigrate.engine.names import NameMapper

    mapper = NameMapper(mapping)
    out: dict[str, str] = {}
    for schema in objects.schemas:
        out.setdefault(mapper.schema(schema), f"schema {schema}")
    for key in objects.tables:
        try:
            table = parse_qualified_name(key)
        except ValueError:
            continue  # reported on objects.tables
        out.setdefault(mapper.schema(table.schema), f"table {table}")
    for source, target in mapping.schemas.items():
        out.setdefault(target, f"schema {source}")
    return out


# -- generic dict -> dataclass building with type checks ---------------------------------------------------------


class _Invalid:
    pass


_INVALID = _Invalid()


def _type_label(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " or ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_label(a) for a in get_args(tp))
    if origin is list:
        return f"a list of {_type_label(get_args(tp)[0])}"
    if origin is dict:
        return "a mapping"
    if is_dataclass(tp):
        return "a mapping of fields"
    if tp is type(None):
        return "null"
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false"}.get(tp, str(tp))


def _coerce(tp: Any, value: Any, path: str, problems: list[Problem]) -> Any:
    if tp is Any:
        return value
    origin = get_origin(tp)
    if origin is Literal:
        allowed = get_args(tp)
        if value in allowed:
            return value
        close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"use one of: {', '.join(map(str, allowed))}"
        problems.append(Problem(path, f"{value!r} is not allowed", hint))
        return _INVALID
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            trial: list[Problem] = []
            result = _coerce(option, value, path, trial)
            if not trial:
                return result
        non_none = [o for o in options if o is not type(None)]
        if len(non_none) == 1:
            return _coerce(non_none[0], value, path, problems)
        problems.append(Problem(path, f"expected {_type_label(tp)}, got {type(value).__name__} {value!r}",
                                "fix the value's type"))
        return _INVALID
    if origin is list:
        if not isinstance(value, (list, tuple)):
            example = "[a, b]"
            problems.append(Problem(path, f"expected {_type_label(tp)}, got {type(value).__name__} {value!r}",
                                    f"write a YAML list such as {example}"))
            return _INVALID
        (item_tp,) = get_args(tp)
        items = [_coerce(item_tp, v, f"{path}[{i}]", problems) for i, v in enumerate(value)]
        return _INVALID if any(i is _INVALID for i in items) else items
    if origin is dict:
        if not isinstance(value, Mapping):
            problems.append(Problem(path, f"expected a mapping, got {type(value).__name__} {value!r}",
                                    "write key: value pairs"))
            return _INVALID
        key_tp, val_tp = get_args(tp)
        out = {}
        bad = False
        for k, v in value.items():
            ck = _coerce(key_tp, k, f"{path}[{k!r}]", problems)
            cv = _coerce(val_tp, v, f"{path}[{k!r}]", problems)
            bad = bad or ck is _INVALID or cv is _INVALID
            out[ck] = cv
        return _INVALID if bad else out
    if is_dataclass(tp):
        if isinstance(value, typing.cast(type, tp)):
            return value
        built = _build(typing.cast(type, tp), value, path, problems)
        return _INVALID if built is None else built
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                problems.append(Problem(path, f"{value} is not a number that can be used here",
                                        "write a finite number (NaN and infinity are not allowed)"))
                return _INVALID
            return float(value)
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif isinstance(value, tp):
        return value
    problems.append(Problem(path, f"expected {_type_label(tp)}, got {type(value).__name__} {value!r}",
                            f"write {_type_label(tp)}"))
    return _INVALID


def _join(path: str, name: str) -> str:
    if not path:
        return name
    return f"{path}{name}" if name.startswith("[") else f"{path}.{name}"


def _build(cls: type, data: Any, path: str, problems: list[Problem]) -> Any:
    """Build dataclass ``cls`` from a mapping, adding every problem found (with full field paths) to ``problems``."""
    if not isinstance(data, Mapping):
        problems.append(Problem(path or "(config)", f"expected a mapping of fields, got {type(data).__name__}",
                                "write key: value pairs"))
        return None
    hints = get_type_hints(cls)
    init_fields = [f for f in fields(cls) if f.init and not f.name.startswith("_")]
    known = [f.name for f in init_fields]
    start = len(problems)
    for key in data:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"known fields here: {', '.join(known)}"
            problems.append(Problem(_join(path, str(key)), "is not a known field", hint))
    values: dict[str, Any] = {}
    for f in init_fields:
        if f.name in data:
            value = _coerce(hints[f.name], data[f.name], _join(path, f.name), problems)
            if value is not _INVALID:
                values[f.name] = value
        elif f.default is MISSING and f.default_factory is MISSING:
            problems.append(Problem(_join(path, f.name), "is required", f"add '{f.name}:' to the config"))
    # Validate with the defaults of fields left out, so cross-field rules also see them (as __post_init__ will).
    checked = dict(values)
    for f in init_fields:
        if f.name not in data:
            if f.default is not MISSING:
                checked[f.name] = f.default
            elif f.default_factory is not MISSING:
                checked[f.name] = f.default_factory()
    own = typing.cast(Any, cls)._validate(checked)
    problems.extend(Problem(_join(path, p.field), p.message, p.fix) for p in own)
    if len(problems) > start:
        return None
    return cls(**values)


def _to_plain(obj: Any) -> Any:
    if is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _to_plain(getattr(obj, f.name)) for f in fields(obj) if not f.name.startswith("_")}
    if isinstance(obj, list):
        return [_to_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _to_plain(v) for k, v in obj.items()}
    return obj


__all__ = [
    "ALERT_PLACEHOLDERS",
    "AlertSettings",
    "BUILTIN_NOTIFIERS",
    "CutoverSettings",
    "Endpoint",
    "FullLoadSettings",
    "FullLoadThrottle",
    "IncrementalSettings",
    "IncrementalThrottle",
    "MIGRATION_TYPES",
    "MigrationConfig",
    "NameMapping",
    "NotifierSettings",
    "ObjectSelection",
    "PrecheckSettings",
    "RdsSettings",
    "ReportSettings",
    "RetryWindows",
    "SchemaSettings",
    "Throttling",
    "load_config",
    "parse_size",
]
