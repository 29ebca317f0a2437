"""Replicated DDL (``incremental.ddl: replicate``): a row of the source's DDL log, read from the change stream, made
into the destination's statements.

The capture (engine/ddl_capture.py) records each DDL command with the text of the statement it came from, its
position among the DDL commands of that text, the search_path, and the objects it touched. Here the command's own
statement is picked out of the text with PostgreSQL's parser (pglast), its names resolved (unqualified names through
the recorded search_path), mapped to the destination's (name mapping and case policy) and checked:

- table DDL (CREATE TABLE, CREATE TABLE AS, ALTER TABLE, RENAME, DROP TABLE), indexes (CREATE / ALTER / DROP INDEX),
  partitions (CREATE ... PARTITION OF, ATTACH, DETACH) and comments on migrated objects are applied;
- DDL on objects the migration does not move is left alone (a log line says so), and so are grants and owners
  (roles are the schema step's business: docs/incremental.md);
- anything else on migrated objects, DDL run inside a function or DO block, and a rename the name mapping cannot
  follow stop the sync with the statement, its LSN and the fix: :class:`DdlStop`.

The writer applies the statements in the destination transaction of the source transaction that ran the DDL, at its
place among that transaction's changes: rows before it and after it meet the right table shape, and a restart never
applies it twice (it commits with the progress row).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from airflow_pgmigrate.engine.connection import ConnectionInfo, connect
from airflow_pgmigrate.engine.incremental.ddl_defaults import NotReplicable, SourceTime, freeze_added_default
from airflow_pgmigrate.engine.incremental.pgoutput import Change, Relation, int_to_lsn
from airflow_pgmigrate.engine.names import NameMapper, QualifiedName, TableSelector, parse_qualified_name
from airflow_pgmigrate.engine.rewrite import DefinitionRewriter, RewriteError, deparse, statement_text, walk_nodes
from airflow_pgmigrate.exceptions import SyncError

if TYPE_CHECKING:
    from airflow_pgmigrate.config import MigrationConfig

#: Statements that never fire an event trigger: the DDL commands of a text are the others, in order.
NOT_DDL = frozenset({
    "SelectStmt", "InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt", "TransactionStmt", "VariableSetStmt",
    "VariableShowStmt", "CopyStmt", "ExplainStmt", "VacuumStmt", "LockStmt", "PrepareStmt", "ExecuteStmt",
    "DeallocateStmt", "NotifyStmt", "ListenStmt", "UnlistenStmt", "CheckPointStmt", "DiscardStmt", "ClusterStmt",
    "ReindexStmt", "LoadStmt", "ConstraintsSetStmt", "DeclareCursorStmt", "FetchStmt", "ClosePortalStmt",
    "TruncateStmt",
})
#: Statements that run other statements: the DDL inside them is not in the recorded text.
RUNS_OTHERS = frozenset({"DoStmt", "CallStmt"})
#: Statements no event trigger fires for (objects shared by the whole cluster, event triggers themselves): they are
#: not among the DDL commands of a text either.
NO_EVENT_TRIGGER = frozenset({
    "CreateRoleStmt", "AlterRoleStmt", "AlterRoleSetStmt", "DropRoleStmt", "GrantRoleStmt", "ReassignOwnedStmt",
    "CreatedbStmt", "AlterDatabaseStmt", "AlterDatabaseSetStmt", "AlterDatabaseRefreshCollStmt", "DropdbStmt",
    "CreateTableSpaceStmt", "AlterTableSpaceOptionsStmt", "DropTableSpaceStmt", "CreateEventTrigStmt",
    "AlterEventTrigStmt", "AlterSystemStmt",
})
#: Object kinds no event trigger fires for when GRANT, COMMENT, SECURITY LABEL, RENAME, OWNER TO or DROP names them.
SHARED_OBJECTS = frozenset({"OBJECT_DATABASE", "OBJECT_ROLE", "OBJECT_TABLESPACE", "OBJECT_EVENT_TRIGGER",
                            "OBJECT_PARAMETER_ACL"})
#: ALTER TABLE subcommands applied on the destination as they are.
ALTER_APPLIED = frozenset({
    "AT_AddColumn", "AT_DropColumn", "AT_AlterColumnType", "AT_ColumnDefault", "AT_DropNotNull", "AT_SetNotNull",
    "AT_AddConstraint", "AT_DropConstraint", "AT_ValidateConstraint", "AT_AlterConstraint", "AT_AttachPartition",
    "AT_DetachPartition", "AT_DetachPartitionFinalize", "AT_SetStatistics", "AT_SetStorage", "AT_SetCompression",
    "AT_AddIdentity", "AT_SetIdentity", "AT_DropIdentity", "AT_AddIndexConstraint", "AT_ReplicaIdentity",
    "AT_SetRelOptions", "AT_ResetRelOptions", "AT_ClusterOn", "AT_DropCluster", "AT_DropExpression",
    "AT_SetExpression", "AT_EnableTrig", "AT_DisableTrig", "AT_EnableAlwaysTrig", "AT_EnableReplicaTrig",
    "AT_EnableTrigAll", "AT_DisableTrigAll", "AT_EnableTrigUser", "AT_DisableTrigUser", "AT_SetLogged",
    "AT_SetUnLogged", "AT_AddInherit", "AT_DropInherit",
})
#: ALTER TABLE subcommands left out on the destination (roles and foreign options are not the sync's to change).
ALTER_LEFT_OUT = frozenset({"AT_ChangeOwner", "AT_GenericOptions"})
#: Objects a COMMENT names by their relation: how many names they have, the schema's included.
COMMENT_NAMES = {"OBJECT_COLUMN": 3, "OBJECT_TABCONSTRAINT": 3, "OBJECT_TRIGGER": 3, "OBJECT_POLICY": 3,
                 "OBJECT_RULE": 3, "OBJECT_TABLE": 2, "OBJECT_VIEW": 2, "OBJECT_MATVIEW": 2, "OBJECT_FOREIGN_TABLE": 2,
                 "OBJECT_SEQUENCE": 2, "OBJECT_INDEX": 2}
#: Renames the sync follows.
RENAMED_KINDS = frozenset({"OBJECT_TABLE", "OBJECT_COLUMN", "OBJECT_INDEX", "OBJECT_TABCONSTRAINT"})


@dataclass(frozen=True)
class DdlRecord:
    """One row of the source's DDL log, and the source commit that carried it."""

    id: int
    ordinal: int
    tag: str
    query: str
    search_path: list[str]
    objects: list[dict[str, Any]]
    dropped: list[dict[str, Any]]
    columns: list[list[str]] | None
    commit_lsn: int
    #: The constraints and indexes of the touched tables after the command, as the source named them.
    names: list[dict[str, Any]] = field(default_factory=list)
    #: The source transaction's start time and the session's TimeZone (what ``now()`` and CURRENT_DATE read).
    time: SourceTime | None = None

    def where(self) -> str:
        return f"DDL {self.id} ({self.tag}, committed at source LSN {int_to_lsn(self.commit_lsn)})"


@dataclass
class DdlStep:
    """What the writer runs for one DDL record: statements under a search_path, and the destination tables whose
    shape may have changed (their cached shapes and staging tables are forgotten)."""

    record: DdlRecord
    statements: list[str]
    search_path: str
    tables: set[QualifiedName] = field(default_factory=set)
    #: The statement that tells the sync a person applied this record by hand (said when it cannot be applied).
    mark_done: str = ""
    #: Under a name mapping: the source's names of the touched tables' constraints and indexes, with the destination's
    #: table and column names (names PostgreSQL chose on the destination are renamed to these).
    names: list[SourceName] = field(default_factory=list)
    #: A named index or constraint that may be on the destination already: made by the DDL during the full load, it
    #: is in the post-data section too. Its "already exists" error means the step is done.
    may_exist: bool = False


@dataclass(frozen=True)
class SourceName:
    """A constraint or index as the source named it, on a destination table, by kind and destination columns."""

    table: QualifiedName
    kind: str  # constraint or index
    type: str  # the constraint's contype, or u / i for a unique or plain index
    name: str
    columns: tuple[str, ...]


class DdlStop(SyncError):
    """A DDL statement the sync cannot apply safely: it stopped before it, nothing of it applied."""


def _text(value: Any) -> str | None:
    return None if value is None else bytes(value).decode()


def record_of(relation: Relation, change: Change, commit_lsn: int) -> DdlRecord:
    """The DDL log row inserted by ``change`` (values of the log table's columns, by name)."""
    values = dict(zip([c.name for c in relation.columns], change.new or [], strict=False))

    def field_(name: str) -> str | None:
        return _text(values.get(name))

    return DdlRecord(int(field_("id") or 0), int(field_("ordinal") or 1), field_("command_tag") or "",
                     field_("query") or "", split_search_path(field_("search_path") or ""),
                     json.loads(field_("objects") or "[]"), json.loads(field_("dropped") or "[]"),
                     json.loads(field_("columns") or "null"), commit_lsn, json.loads(field_("names") or "[]"),
                     SourceTime(field_("xact_time") or "", field_("time_zone") or "UTC") if field_("xact_time")
                     else None)


def split_search_path(text: str) -> list[str]:
    """The schemas of a search_path setting, unquoted (``"$user"`` stays as written)."""
    parts, current, quoted = [], "", False
    for ch in text:
        if ch == '"':
            quoted = not quoted
            current += ch
        elif ch == "," and not quoted:
            parts.append(current.strip())
            current = ""
        else:
            current += ch
    if current.strip():
        parts.append(current.strip())
    return [p if p == '"$user"' else p[1:-1].replace('""', '"') if p.startswith('"') else p for p in parts]


def fires_event_trigger(stmt: Any) -> bool:
    """Whether a parsed statement is a DDL command the capture records (and counts among those of its text)."""
    kind = type(stmt).__name__
    if kind in NOT_DDL:
        return getattr(stmt, "intoClause", None) is not None  # SELECT ... INTO makes a table
    if kind in NO_EVENT_TRIGGER:
        return False
    return not any(getattr(getattr(stmt, attr, None), "name", None) in SHARED_OBJECTS
                   for attr in ("objtype", "objectType", "renameType", "removeType"))


def committed_commands(statements: Any) -> dict[int, Any]:
    """The DDL commands of a text that can have committed, by the position the capture recorded for each.

    The capture counts a text's commands in a session setting, which a rollback (to a savepoint) takes back with the
    commands it undoes: a command after it gets the position of the first one undone. Undone commands are left out
    here (their log rows never commit), so each position names one command."""
    found: dict[int, Any] = {}
    count = start = 0
    pending: list[tuple[int, Any]] = []  # commands of the open transaction
    savepoints: list[tuple[str, int, int]] = []  # name, count and len(pending) when it was set
    for raw in statements:
        stmt = raw.stmt
        if type(stmt).__name__ != "TransactionStmt":
            if fires_event_trigger(stmt):
                count += 1
                pending.append((count, raw))
            continue
        kind = stmt.kind.name.removeprefix("TRANS_STMT_")
        if kind in ("COMMIT", "PREPARE", "ROLLBACK"):
            if kind == "ROLLBACK":
                pending, count = [], start
            found.update(pending)
            pending, start = [], count
            savepoints.clear()
        elif kind == "SAVEPOINT":
            savepoints.append((stmt.savepoint_name, count, len(pending)))
        elif kind in ("RELEASE", "ROLLBACK_TO"):
            names = [name for name, _, _ in savepoints]
            if stmt.savepoint_name not in names:
                continue  # an error on the source: nothing of this transaction committed
            at = len(names) - 1 - names[::-1].index(stmt.savepoint_name)
            if kind == "RELEASE":
                del savepoints[at:]
            else:
                _, count, kept = savepoints[at]
                del pending[kept:], savepoints[at + 1:]
    found.update(pending)
    return found


class DdlPlanner:
    """Makes DDL records into destination steps.

    :param migrated: whether the migration moves a source table's definition.
    :param resolve: the schema an unqualified relation name resolves to on the source, through a search_path.
    :param log: where the records left alone are said.
    """

    def __init__(self, config: MigrationConfig, migrated: Callable[[QualifiedName], bool],
                 resolve: Callable[[str, list[str]], str | None], log: Callable[[str], None]) -> None:
        self.config, self.migrated, self.resolve, self.log = config, migrated, resolve, log
        self.mapper = NameMapper(config.mapping)
        self.selector = TableSelector(config.objects)
        mapping = config.mapping
        self.identity = not (mapping.schemas or mapping.tables or mapping.columns) and mapping.name_case == "keep"
        self.column_selection = {parse_qualified_name(k): set(v) for k, v in config.objects.columns.items()}

    # -- entry point ---------------------------------------------------------------------------------------------

    def plan(self, record: DdlRecord) -> DdlStep | None:
        """The destination step of ``record``; None when it concerns nothing the migration moves."""
        if record.tag == "NOT PUBLISHED":
            return self._not_published(record)
        stmt, raw = self._statement(record)
        if stmt is None:
            return self._left_alone(record)
        kind = type(stmt).__name__
        if kind in ("GrantStmt", "AlterOwnerStmt"):
            if self._touches_migrated(record):
                self.log(f"incremental ddl left_alone={record.id} tag={record.tag!r}: grants and owners are not "
                         "replicated (apply them on the destination by hand if the destination needs them)")
            return None
        if kind == "RefreshMatViewStmt":
            self.log(f"incremental ddl left_alone={record.id} tag={record.tag!r}: it changes no definition, and the "
                     "cutover refreshes the destination's materialized views")
            return None
        handlers: dict[str, Callable[[DdlRecord, Any, Any], DdlStep | None]] = {
            "CreateStmt": self._create, "CreateTableAsStmt": self._create_as, "AlterTableStmt": self._alter,
            "IndexStmt": self._index, "DropStmt": self._drop, "RenameStmt": self._rename,
            "CommentStmt": self._comment, "SelectStmt": self._select_into, "AlterObjectSchemaStmt": self._set_schema,
            "CreateSchemaStmt": self._create_schema,
        }
        handler = handlers.get(kind)
        if handler is None:
            if not self._touches_migrated(record):
                return self._left_alone(record)
            raise self._stop(record, f"{kind.removesuffix('Stmt')} statements are not replicated",
                             "apply the same change on the destination by hand")
        return handler(record, stmt, raw)

    def _not_published(self, record: DdlRecord) -> DdlStep | None:
        """The capture could not add a new table to the publication (its account may not): its rows would be lost."""
        table = next((parse_qualified_name(str(o["identity"])) for o in record.objects), None)
        if table is None or not self.selector(table):
            return self._left_alone(record)
        raise DdlStop(f"{record.where()}: new table {table} could not be added to publication "
                      f"{self.config.publication_name} ({record.query}), so its rows would not reach the "
                      "destination. Incremental sync stopped. Fix: as the table's owner or a superuser, run on the "
                      f"source ALTER PUBLICATION {self.config.publication_name} ADD TABLE {table}; then restart "
                      "the migration from a fresh full load (its rows written so far were not streamed), or exclude "
                      "the table with objects.exclude")

    # -- picking the statement -------------------------------------------------------------------------------------

    def _statement(self, record: DdlRecord) -> tuple[Any, Any]:
        from pglast import parse_sql
        from pglast.parser import ParseError

        try:
            statements = parse_sql(record.query)
        except ParseError as exc:
            raise self._stop(record, f"its text cannot be parsed ({exc.args[0]})",
                             "apply the same change on the destination by hand") from None
        kinds = [type(raw.stmt).__name__ for raw in statements]
        commands = committed_commands(statements)
        if RUNS_OTHERS & set(kinds) or record.ordinal not in commands:
            if not self._touches_migrated(record):
                return None, None
            raise self._stop(record, "it ran inside a function, procedure or DO block, whose statements are not in "
                             "the recorded text", "apply the same change on the destination by hand")
        raw = commands[record.ordinal]
        words = statement_text(record.query, raw).split(None, 1)
        if not words or not record.tag.upper().startswith(words[0].upper()):
            raise self._stop(record, f"the recorded command {record.tag!r} is not the statement found in its text",
                             "apply the same change on the destination by hand")
        return raw.stmt, raw

    # -- handlers ------------------------------------------------------------------------------------------------

    def _create(self, record: DdlRecord, stmt: Any, raw: Any) -> DdlStep | None:
        table = self._qualify(stmt.relation, record)
        if stmt.relation.relpersistence == "t" or not self.selector(table):
            return self._left_alone(record)
        self._check_like(record, stmt)
        if stmt.relation.relpersistence == "u":
            self.log(f"incremental ddl warning: {table} is created UNLOGGED: PostgreSQL does not stream its rows, so "
                     "its destination table stays empty (verification reports the difference)")
        self._qualify_all(stmt, record)
        return self._step(record, [self._rewritten(stmt, raw, record)], {self.mapper.table(table)})

    def _check_like(self, record: DdlRecord, stmt: Any) -> None:
        """CREATE TABLE ... (LIKE t): on the destination, LIKE copies the destination's column names of ``t``; when
        the mapping renames them explicitly, the new table's columns would not be the source's (mapped)."""
        for element in stmt.tableElts or ():
            if type(element).__name__ == "TableLikeClause":
                like = self._qualify(element.relation, record)
                if self._explicit_columns(like):
                    raise self._stop(record, f"the new table copies the columns of {like} (LIKE), which "
                                     "mapping.columns renames", "create the new table on the destination by hand with "
                                     "the source's column names")

    def _filter_columns(self, table: QualifiedName) -> set[str]:
        """The names the config's row filter of ``table`` uses (column names, and any qualifier)."""
        from pglast import parse_sql

        text = self.config.filters.get(table.key) or self.config.filters.get(str(table))
        if not text:
            return set()
        where = parse_sql(f"SELECT WHERE {text}")[0].stmt  # noqa: S608 - parsed, never run
        return {part.sval for node in walk_nodes(where) if type(node).__name__ == "ColumnRef"
                for part in node.fields if type(part).__name__ == "String"}

    def _explicit_columns(self, table: QualifiedName) -> dict[str, str]:
        columns = self.config.mapping.columns
        return columns.get(table.key) or columns.get(str(table)) or {}

    def _create_as(self, record: DdlRecord, stmt: Any, raw: Any) -> DdlStep | None:
        if stmt.objtype.name != "OBJECT_TABLE":
            return self._other_relation(record, stmt)
        return self._new_table_from_columns(record, stmt.into.rel)

    def _new_table_from_columns(self, record: DdlRecord, rv: Any) -> DdlStep | None:
        """A table made by a query (CREATE TABLE AS, SELECT INTO): created with the columns the capture recorded;
        its rows follow in the stream."""
        table = self._qualify(rv, record)
        if rv.relpersistence == "t" or not self.selector(table):
            return self._left_alone(record)
        if not record.columns:
            raise self._stop(record, "the capture did not record the new table's columns",
                             f"create {self.mapper.table(table)} on the destination by hand")
        columns = sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(self.mapper.column(table, name)),
                                                             sql.SQL(type_name))
                                     for name, type_name in record.columns)
        target = self.mapper.table(table)
        text = sql.SQL("CREATE TABLE {} ({})").format(sql.Identifier(target.schema, target.name), columns)
        return self._step(record, [self._mapped_types(text.as_string(None))], {target})

    def _select_into(self, record: DdlRecord, stmt: Any, raw: Any) -> DdlStep | None:
        return self._new_table_from_columns(record, stmt.intoClause.rel)

    def _alter(self, record: DdlRecord, stmt: Any, raw: Any) -> DdlStep | None:
        if stmt.objtype.name not in ("OBJECT_TABLE", "OBJECT_INDEX"):
            return self._other_relation(record, stmt)
        table = self._table_of_alter(stmt, record)
        if table is None or not self.migrated(table):
            return self._left_alone(record)
        kept, changed = [], False
        for cmd in stmt.cmds or ():
            subtype = cmd.subtype.name
            if subtype in ALTER_LEFT_OUT or self._left_out_column(table, cmd):
                self.log(f"incremental ddl {record.id} table={table} left_out={subtype}")
                changed = True
                continue
            if subtype == "AT_DropColumn" and cmd.name in self._filter_columns(table):
                raise self._stop(record, f"column {cmd.name} of {table} is dropped, and the row filter "
                                 f"(filters['{table.key}']) names it", "change the filter in the config, drop the "
                                 "destination column by hand")
            if subtype not in ALTER_APPLIED:
                raise self._stop(record, f"ALTER TABLE {subtype.removeprefix('AT_')} is not replicated",
                                 "apply the same change on the destination by hand")
            if subtype == "AT_DetachPartition" and getattr(cmd.def_, "concurrent", False):
                cmd.def_.concurrent = False  # the destination applies it inside its transaction
                changed = True
            kept.append(cmd)
        if not kept:
            return self._left_alone(record)
        stmt.cmds = tuple(kept)
        self._qualify_all(stmt, record)
        restore = self._added_defaults(record, stmt, kept)
        statements = [self._rewritten(stmt, raw, record, changed=changed or bool(restore))]
        statements += [self._rewritten_text(text, record) for text in restore]
        step = self._step(record, statements, {self.mapper.table(table)})
        step.may_exist = len(kept) == 1 and kept[0].subtype.name == "AT_AddConstraint" and bool(
            getattr(kept[0].def_, "conname", None))
        return step

    def _added_defaults(self, record: DdlRecord, stmt: Any, cmds: list[Any]) -> list[str]:
        """Added columns whose default reads the clock get the source's time for the existing rows (see
        ddl_defaults.py); the statements that set their written default back. Stops where that cannot be done."""
        restore = []
        for cmd in cmds:
            if cmd.subtype.name != "AT_AddColumn" or cmd.def_ is None:
                continue
            try:
                written = freeze_added_default(cmd.def_, record.time)
            except NotReplicable as exc:
                raise self._stop(record, f"column {cmd.def_.colname} is added with values for the existing rows "
                                 f"that the change stream does not carry: {exc}",
                                 "add the column on the destination and copy its values from the source by hand "
                                 "(for example through a temporary table), or exclude the table") from None
            if written is not None:
                restore.append(f"ALTER TABLE {deparse(stmt.relation)} ALTER COLUMN "
                               f"{sql.Identifier(cmd.def_.colname).as_string(None)} SET DEFAULT {written}")
        return restore

    def _rewritten_text(self, text: str, record: DdlRecord) -> str:
        """A statement written here, in the source's names, for the destination."""
        if self.identity:
            return text
        try:
            return DefinitionRewriter(self.mapper, self._tables_named(_parsed(text)), {}).rewrite(text).sql.strip() \
                .rstrip(";")
        except RewriteError as exc:
            raise self._stop(record, str(exc), "apply the same change on the destination by hand") from None

    def _index(self, record: DdlRecord, stmt: Any, raw: Any) -> DdlStep | None:
        table = self._qualify(stmt.relation, record)
        if not self.migrated(table):
            return self._left_alone(record)
        concurrent = bool(stmt.concurrent)
        stmt.concurrent = False  # the destination builds it inside its transaction
        self._qualify_all(stmt, record)
        step = self._step(record, [self._rewritten(stmt, raw, record, changed=concurrent)], set())
        step.may_exist = bool(stmt.idxname)
        return step

    def _drop(self, record: DdlRecord, stmt: Any, raw: Any) -> DdlStep | None:
        kind = stmt.removeType.name
        if kind not in ("OBJECT_TABLE", "OBJECT_INDEX"):
            return self._other_relation(record, stmt)
        gone = [QualifiedName(o["schema"], o["name"]) for o in record.dropped
                if o.get("original") and o.get("type") == ("table" if kind == "OBJECT_TABLE" else "index")]
        if kind == "OBJECT_TABLE":
            names = [self.mapper.table(t) for t in gone if self.migrated(t)]
        else:  # an index of a migrated schema: dropped on the destination if it is there
            names = [QualifiedName(self.mapper.schema(t.schema), t.name) for t in gone
                     if self._schema_migrated(t.schema)]
        if not names:
            return self._left_alone(record)
        what = sql.SQL("TABLE" if kind == "OBJECT_TABLE" else "INDEX")
        cascade = sql.SQL(" CASCADE" if stmt.behavior.name == "DROP_CASCADE" else "")
        text = sql.SQL("DROP {} IF EXISTS {}{}").format(
            what, sql.SQL(", ").join(sql.Identifier(n.schema, n.name) for n in names), cascade)
        return self._step(record, [text.as_string(None)], set(names) if kind == "OBJECT_TABLE" else set())

    def _rename(self, record: DdlRecord, stmt: Any, raw: Any) -> DdlStep | None:
        kind = stmt.renameType.name
        if kind == "OBJECT_SCHEMA" and (self._schema_migrated(stmt.subname) or self._schema_migrated(stmt.newname)):
            raise self._stop(record, f"schema {stmt.subname} is renamed to {stmt.newname}: its tables change schema, "
                             "which is not replicated", "rename the destination schema by hand and change the "
                             "selection (objects) to name the new schema")
        if kind not in RENAMED_KINDS:
            return self._other_relation(record, stmt)
        if kind == "OBJECT_INDEX":
            return self._rename_index(record, stmt)
        table = self._qualify(stmt.relation, record, renamed=kind == "OBJECT_TABLE")
        if not self.migrated(table):
            return self._left_alone(record)
        target = self.mapper.table(table)
        ident = sql.Identifier(target.schema, target.name)
        if kind == "OBJECT_TABLE":
            return self._rename_table(record, table, ident, stmt.newname)
        if kind == "OBJECT_COLUMN":
            return self._rename_column(record, table, ident, stmt.subname, stmt.newname)
        text = sql.SQL("ALTER TABLE {} RENAME CONSTRAINT {} TO {}").format(
            ident, sql.Identifier(stmt.subname), sql.Identifier(stmt.newname))
        return self._step(record, [text.as_string(None)], set())

    def _comment(self, record: DdlRecord, stmt: Any, raw: Any) -> DdlStep | None:
        if not self._touches_migrated(record):
            return self._left_alone(record)
        names, length = stmt.object, COMMENT_NAMES.get(stmt.objtype.name)
        if not self.identity and length and isinstance(names, tuple) and len(names) == length - 1:
            # The relation of the commented object without its schema: qualified, for the name mapping.
            from pglast.ast import RangeVar, String

            relation = self._qualify(RangeVar(relname=names[0].sval, inh=True, relpersistence="p"), record)
            stmt.object = (String(sval=relation.schema), *names)
        return self._step(record, [self._rewritten(stmt, raw, record, changed=False)], set())

    def _create_schema(self, record: DdlRecord, stmt: Any, raw: Any) -> DdlStep | None:
        """A schema the selection covers (every schema when nothing is listed): created on the destination, so that
        its new tables have a place (their rows are published by the capture). Its owner is not replicated."""
        names = [split_search_path(str(o["identity"]))[0] for o in record.objects if o.get("type") == "schema"]
        if not names or not self._schema_migrated(names[0]):
            return self._left_alone(record)
        if stmt.schemaElts:
            raise self._stop(record, "CREATE SCHEMA with the objects to create in it is not replicated",
                             "create the schema and its objects on the destination by hand")
        text = sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self.mapper.schema(names[0])))
        return self._step(record, [text.as_string(None)], set())

    def _set_schema(self, record: DdlRecord, stmt: Any, raw: Any) -> DdlStep | None:
        """ALTER ... SET SCHEMA: the record names the object in its new schema only; the schema it leaves is the one
        written, else one of the search_path."""
        written = stmt.relation.schemaname if stmt.relation is not None else None
        names = stmt.object.objname if type(stmt.object).__name__ == "ObjectWithArgs" else stmt.object
        if written is None and isinstance(names, tuple) and len(names) > 1:
            written = names[0].sval
        left = [written] if written else record.search_path
        if not (self._schema_migrated(stmt.newschema) or self._touches_migrated(record)
                or any(self._schema_migrated(s) for s in left)):
            return self._left_alone(record)
        raise self._stop(record, "moving an object to another schema (SET SCHEMA) is not replicated",
                         "move it on the destination by hand (and change the selection if it should follow)")

    # -- renames ----------------------------------------------------------------------------------------------

    def _rename_table(self, record: DdlRecord, table: QualifiedName, ident: sql.Identifier,
                      new_name: str) -> DdlStep:
        renamed = QualifiedName(table.schema, new_name)
        mapped = {parse_qualified_name(k) for k in self.config.mapping.tables} | set(self.column_selection) | {
            parse_qualified_name(k) for k in self.config.mapping.columns}
        if table in mapped or renamed in mapped:
            raise self._stop(record, f"table {table} is renamed to {renamed}, and the migration's config names it "
                             "(mapping.tables, mapping.columns or objects.columns) by its old name",
                             f"rename the destination table by hand, change the config to name {renamed}, resume")
        if not self.selector(renamed) and self.selector(table):
            raise self._stop(record, f"table {table} is renamed to {renamed}, which the selection (objects) does "
                             "not cover, so its changes would be lost from here on",
                             f"add {renamed.key} to objects.tables (or select its schema), then resume")
        target = self.mapper.table(renamed)
        text = sql.SQL("ALTER TABLE {} RENAME TO {}").format(ident, sql.Identifier(target.name))
        # Under a case policy, a rename that only changes case names the same destination table: nothing to run.
        same = target == self.mapper.table(table)
        return self._step(record, [] if same else [text.as_string(None)], {self.mapper.table(table), target})

    def _rename_column(self, record: DdlRecord, table: QualifiedName, ident: sql.Identifier, old: str,
                       new: str) -> DdlStep | None:
        explicit = self._explicit_columns(table)
        wanted = self.column_selection.get(table)
        if wanted is not None and old not in wanted and new not in wanted and not explicit:
            self.log(f"incremental ddl {record.id} table={table} left_out=AT_RenameColumn (column {old} is not "
                     "selected)")
            return None
        if old in self._filter_columns(table):
            raise self._stop(record, f"column {old} of {table} is renamed to {new}, and the row filter "
                             f"(filters['{table.key}']) names it by its old name", "rename the destination column by "
                             "hand, change the filter in the config to name the new one")
        if old in explicit or new in explicit or table in self.column_selection:
            raise self._stop(record, f"column {old} of {table} is renamed to {new}, and the config names the "
                             "table's columns (mapping.columns or objects.columns) by their old names",
                             "rename the destination column by hand, change the config, resume")
        before, after = self.mapper.column(table, old), self.mapper.column(table, new)
        text = sql.SQL("ALTER TABLE {} RENAME COLUMN {} TO {}").format(
            ident, sql.Identifier(before), sql.Identifier(after))
        return self._step(record, [] if before == after else [text.as_string(None)], {self.mapper.table(table)})

    def _rename_index(self, record: DdlRecord, stmt: Any) -> DdlStep | None:
        index = self._qualify(stmt.relation, record, renamed=True)
        if not self._schema_migrated(index.schema):
            return self._left_alone(record)
        text = sql.SQL("ALTER INDEX IF EXISTS {} RENAME TO {}").format(
            sql.Identifier(self.mapper.schema(index.schema), index.name), sql.Identifier(stmt.newname))
        return self._step(record, [text.as_string(None)], set())

    # -- names -------------------------------------------------------------------------------------------------

    def _qualify(self, rv: Any, record: DdlRecord, *, renamed: bool = False) -> QualifiedName:
        """A relation's source name: its schema as written, else the recorded object's schema (the command's own
        relation), else the search_path's first schema that has it."""
        if rv.schemaname:
            return QualifiedName(rv.schemaname, rv.relname)
        for obj in record.objects + record.dropped:
            identity = str(obj.get("identity") or "")
            if obj.get("schema") and (identity.endswith("." + rv.relname) or identity.endswith(f'."{rv.relname}"')
                                      or renamed):
                rv.schemaname = obj["schema"]
                return QualifiedName(obj["schema"], rv.relname)
        schema = self.resolve(rv.relname, record.search_path) or next(
            (s for s in record.search_path if s not in ('"$user"', "pg_catalog", "pg_temp")), "public")
        rv.schemaname = schema
        return QualifiedName(schema, rv.relname)

    def _qualify_all(self, stmt: Any, record: DdlRecord) -> None:
        """Every relation of a statement gets its schema (the name mapping renames qualified names only)."""
        if self.identity:
            return
        for node in walk_nodes(stmt):
            if type(node).__name__ == "RangeVar" and not node.schemaname and node.relpersistence != "t":
                self._qualify(node, record)

    def _table_of_alter(self, stmt: Any, record: DdlRecord) -> QualifiedName | None:
        name = self._qualify(stmt.relation, record)
        if stmt.objtype.name == "OBJECT_TABLE":
            return name
        tables = [parse_qualified_name(str(o["identity"])) for o in record.objects
                  if o.get("type") == "table"]
        return tables[0] if tables else (name if self._schema_migrated(name.schema) else None)

    def _left_out_column(self, table: QualifiedName, cmd: Any) -> bool:
        """A subcommand about a column that ``objects.columns`` leaves out of ``table``."""
        wanted = self.column_selection.get(table)
        if wanted is None:
            return False
        name = cmd.name or getattr(cmd.def_, "colname", None)
        return bool(name) and name not in wanted

    def _schema_migrated(self, schema: str) -> bool:
        objects = self.config.objects
        return objects.selects_everything or schema in objects.schemas or any(
            parse_qualified_name(t).schema == schema for t in objects.tables) or bool(objects.include)

    def _touches_migrated(self, record: DdlRecord) -> bool:
        for obj in record.objects + record.dropped:
            schema = obj.get("schema") or (split_search_path(str(obj.get("identity")))[0]
                                           if obj.get("type") == "schema" else None)
            if schema and self._schema_migrated(str(schema)):
                return True
        return False

    # -- output ------------------------------------------------------------------------------------------------

    def _rewritten(self, stmt: Any, raw: Any, record: DdlRecord, *, changed: bool = True) -> str:
        """The statement's text for the destination: as written when nothing is renamed or changed, else rewritten
        through the name mapping."""
        if self.identity and not changed:
            return statement_text(record.query, raw)
        text = deparse(stmt)
        if self.identity:
            return text
        try:
            rewriter = DefinitionRewriter(self.mapper, self._tables_named(stmt), self._relkinds(stmt))
            result = rewriter.rewrite(text)
        except RewriteError as exc:
            raise self._stop(record, str(exc), "apply the same change on the destination by hand") from None
        if result.unsafe:
            raise self._stop(record, f"names in it cannot be mapped safely ({', '.join(result.unsafe)})",
                             "apply the same change on the destination by hand")
        return result.sql.strip().rstrip(";")

    def _mapped_types(self, text: str) -> str:
        if self.identity:
            return text
        return DefinitionRewriter(self.mapper, {}, {}).rewrite(text).sql.strip().rstrip(";")

    @staticmethod
    def _tables_named(stmt: Any) -> dict[QualifiedName, list[str]]:
        tables: dict[QualifiedName, list[str]] = {
            QualifiedName(n.schemaname, n.relname): [] for n in walk_nodes(stmt)
            if type(n).__name__ == "RangeVar" and n.schemaname}
        names = getattr(stmt, "object", None)
        if type(stmt).__name__ == "CommentStmt" and isinstance(names, tuple) \
                and len(names) == COMMENT_NAMES.get(stmt.objtype.name):
            tables[QualifiedName(names[0].sval, names[1].sval)] = []  # COMMENT ON COLUMN s.t.c and the like
        return tables

    def _relkinds(self, stmt: Any) -> dict[QualifiedName, str]:
        return dict.fromkeys(self._tables_named(stmt), "r")

    def _other_relation(self, record: DdlRecord, stmt: Any) -> DdlStep | None:
        if not self._touches_migrated(record):
            return self._left_alone(record)
        raise self._stop(record, f"{record.tag} is not replicated", "apply the same change on the destination by hand")

    def _step(self, record: DdlRecord, statements: list[str], tables: set[QualifiedName]) -> DdlStep:
        path = ", ".join(p if p == '"$user"' else sql.Identifier(self.mapper.schema(p)).as_string(None)
                         if p not in ("pg_catalog", "pg_temp") else p for p in record.search_path)
        names = [] if self.identity else [self._source_name(n) for n in record.names]
        return DdlStep(record, statements, path or "public", tables, self._mark_done(record), names)

    def _source_name(self, item: dict[str, Any]) -> SourceName:
        table = QualifiedName(item["schema"], item["table"])
        columns = tuple(self.mapper.column(table, c) if c else "" for c in item.get("columns") or ())
        return SourceName(self.mapper.table(table), item["kind"], item["type"], item["name"], columns)

    def _mark_done(self, record: DdlRecord) -> str:
        table = sql.Identifier(self.config.state_schema, "ddl_applied_by_hand").as_string(None)
        name = sql.Literal(self.config.name).as_string(None)
        return f"INSERT INTO {table} (migration, ddl_id) VALUES ({name}, {record.id});"  # noqa: S608 - quoted

    def _left_alone(self, record: DdlRecord) -> DdlStep | None:
        self.log(f"incremental ddl left_alone={record.id} tag={record.tag!r}: it concerns nothing the migration "
                 "moves")
        return None

    def _stop(self, record: DdlRecord, why: str, fix: str) -> DdlStop:
        return DdlStop(f"{record.where()} cannot be replicated: {why}. Statement: {record.query.strip()[:500]}. "
                       f"Incremental sync stopped before it, nothing of its transaction applied. Fix: {fix}, then "
                       f"mark it done with {self._mark_done(record)} and resume (the rest of its transaction is "
                       "applied then)")


def _parsed(text: str) -> Any:
    from pglast import parse_sql

    return parse_sql(text)[0].stmt


def apply_ddl(dst: psycopg.Connection, step: DdlStep, log: Callable[[str], None]) -> None:
    """Run a step's statements in the open destination transaction, under the step's search_path (restored after).
    A statement the destination refuses stops the sync, naming it: the transaction is rolled back."""
    row = dst.execute("SELECT current_setting('search_path')").fetchone()
    assert row is not None
    dst.execute("SELECT set_config('search_path', %s, true)", (step.search_path,))
    for statement in step.statements:
        try:
            _run_statement(dst, step, statement, log)
        except psycopg.Error as exc:
            record = step.record
            raise DdlStop(f"{record.where()} failed on the destination: {(exc.diag.message_primary or str(exc)).strip()}. "
                          f"Statement run: {statement[:500]}. Incremental sync stopped before it, nothing of its "
                          "transaction applied. Fix: bring the destination table to the source's definition by hand, "
                          f"then mark the DDL done with {step.mark_done} and resume") from None
    dst.execute("SELECT set_config('search_path', %s, true)", (row[0],))
    if step.names:
        follow_source_names(dst, step, log)


def _run_statement(dst: psycopg.Connection, step: DdlStep, statement: str, log: Callable[[str], None]) -> None:
    record = step.record
    if not step.may_exist:
        dst.execute(statement)
    else:
        try:
            # A savepoint (apply_ddl's first query opened the transaction): "already exists" leaves it usable.
            with dst.transaction():
                dst.execute(statement)
        except (psycopg.errors.DuplicateTable, psycopg.errors.DuplicateObject) as exc:
            log(f"incremental ddl already_there={record.id} tag={record.tag!r}: "
                f"{(exc.diag.message_primary or str(exc)).strip()} (the post-data step made it after the full load)")
            return
    log(f"incremental ddl applied={record.id} tag={record.tag!r} lsn={int_to_lsn(record.commit_lsn)} "
        f"statement={statement[:200]!r}")


#: The destination's constraints and indexes of a table (those an index of a constraint is not listed twice).
_DESTINATION_NAMES = """
SELECT 'constraint', k.contype::text, k.conname, coalesce((SELECT array_agg(a.attname ORDER BY u.ord)
         FROM unnest(k.conkey) WITH ORDINALITY AS u(attnum, ord)
         JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = u.attnum), '{}')
  FROM pg_constraint k WHERE k.conrelid = to_regclass(%(table)s) AND k.contype IN ('p', 'u', 'f', 'c', 'x')
UNION ALL
SELECT 'index', CASE WHEN x.indisunique THEN 'u' ELSE 'i' END, i.relname,
       (SELECT array_agg(coalesce(a.attname, '') ORDER BY u.ord) FROM unnest(x.indkey::int2[]) WITH ORDINALITY
               AS u(attnum, ord) LEFT JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = u.attnum)
  FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
 WHERE x.indrelid = to_regclass(%(table)s)
   AND NOT EXISTS (SELECT FROM pg_constraint k WHERE k.conindid = x.indexrelid AND k.contype IN ('p', 'u', 'x'))
"""


def follow_source_names(dst: psycopg.Connection, step: DdlStep, log: Callable[[str], None]) -> None:
    """Give the constraints and indexes PostgreSQL named on the destination the source's names: a name it chooses
    follows the table and column names, which the name mapping changed (``orders_status_idx`` would become
    ``ORDERS_STATUS_idx`` under ``name_case: upper``). One unambiguous match per name, else left as it is."""
    for table in sorted({n.table for n in step.names}):
        ident = sql.Identifier(table.schema, table.name)
        there = [SourceName(table, kind, kind_type, name, tuple(columns or ())) for kind, kind_type, name, columns
                 in dst.execute(_DESTINATION_NAMES, {"table": ident.as_string(dst)}).fetchall()]
        wanted = [n for n in step.names if n.table == table]
        for kind in ("constraint", "index"):
            source_names = {n.name for n in wanted if n.kind == kind}
            present = {n.name for n in there if n.kind == kind}
            spare = [n for n in there if n.kind == kind and n.name not in source_names]
            for name in (n for n in wanted if n.kind == kind and n.name not in present):
                matches = [n for n in spare if (n.type, n.columns) == (name.type, name.columns)]
                if len(matches) != 1:
                    continue
                spare.remove(matches[0])
                chosen, wanted_name = sql.Identifier(matches[0].name), sql.Identifier(name.name)
                dst.execute(sql.SQL("ALTER TABLE {} RENAME CONSTRAINT {} TO {}").format(ident, chosen, wanted_name)
                            if kind == "constraint" else sql.SQL("ALTER INDEX {} RENAME TO {}").format(
                                sql.Identifier(table.schema, matches[0].name), wanted_name))
                log(f"incremental ddl {step.record.id} table={table} {kind}={matches[0].name} "
                    f"renamed_to={name.name} (the source's name)")


def ddl_done_by_hand(conn: psycopg.Connection, state_schema: str, migration: str) -> set[int]:
    """The DDL records a person applied by hand (the sync skips them): ``<state_schema>.ddl_applied_by_hand``."""
    table = sql.Identifier(state_schema, "ddl_applied_by_hand")
    conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} (migration text NOT NULL, ddl_id bigint NOT NULL, "
                         "recorded_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (migration, ddl_id))"
                         ).format(table))
    return {int(r[0]) for r in conn.execute(sql.SQL("SELECT ddl_id FROM {} WHERE migration = %s").format(table),
                                            (migration,))}


def source_resolver(source: ConnectionInfo) -> Callable[[str, list[str]], str | None]:
    """The schema of the first relation named ``name`` along a search_path, on the source now (the capture records
    ``"$user"`` spelled out as the role that ran the DDL)."""

    def resolve(name: str, path: list[str]) -> str | None:
        with connect(source) as src:
            for schema in path:
                found = src.execute("SELECT to_regclass(%s)", (sql.Identifier(schema, name).as_string(src),))
                if found.fetchone() != (None,):
                    return schema
        return None

    return resolve


__all__ = ["DdlPlanner", "DdlRecord", "DdlStep", "DdlStop", "SourceName", "apply_ddl", "ddl_done_by_hand",
           "follow_source_names", "record_of",
           "source_resolver", "split_search_path"]
