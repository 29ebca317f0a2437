"""The DDL capture on the source (``incremental.ddl: replicate``): an event trigger that records table DDL in a table
of the migration's own, published with the migrated tables, so the change stream carries each DDL statement at its
place in commit order, between the row changes before and after it.

Objects, all in schema ``pgmigrate_ddl`` of the source (never migrated itself):
- the log table ``pgmigrate_ddl.<slot name>``: one row per DDL command (its tag, the statement's text, its position
  among the DDL commands of that text, the search_path, the objects it created, altered or dropped, schemas too);
- two functions of the same name: the event triggers' (``ddl_command_end`` and ``sql_drop``), which runs as the user
  who ran the DDL and passes on that user's search_path, and the recording one it calls (``SECURITY DEFINER``: it
  runs as the migration's account, with a search_path of its own).

A table created whose rows the migration moves (its selection, ``exclude`` and ``exclude_data``) is added to the
publication (always the migration's own) by the trigger, in the creating transaction, so its rows (those written
later in that transaction too) are streamed. A table created without a primary key gets ``REPLICA IDENTITY FULL``
there: once published, the source would refuse its updates and deletes otherwise. The rows written by
``CREATE TABLE ... AS`` itself come before the table is published: the trigger writes them again after publishing it
(an emptied table and the same rows), so they are streamed too.

:func:`remove_capture` drops everything at release or abort: nothing is left behind.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import psycopg
from psycopg import sql

from airflow_pgmigrate.engine.identifiers import CAPTURE_SCHEMA, QualifiedName, parse_qualified_name

if TYPE_CHECKING:
    from airflow_pgmigrate.config import MigrationConfig

#: The recording function. Placeholders: the log table, the publication, a session setting prefix of this capture.
#: ``columns`` holds, for a table made by CREATE TABLE AS / SELECT INTO, its columns and types (the destination cannot
#: run the query that made it).
_FUNCTION = """
CREATE OR REPLACE FUNCTION {function}(tg_event text, tg_tag text, caller_path text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $pgm$
DECLARE
  objs jsonb;
  gone jsonb;
  cols jsonb;
  owned jsonb;
  mark text;
  seq int := 1;
  r record;
BEGIN
  IF current_setting({busy}, true) = 'on' OR tg_tag = 'REINDEX' THEN
    -- Statements of this function itself, or of another migration's capture; REINDEX (PostgreSQL 17+ fires event
    -- triggers for it) changes no definition.
    RETURN;
  END IF;
  IF TG_EVENT = 'sql_drop' THEN
    SELECT jsonb_agg(jsonb_build_object('type', object_type, 'schema', schema_name, 'name', object_name,
                                        'identity', object_identity, 'original', original))
      INTO gone FROM pg_event_trigger_dropped_objects()
     WHERE schema_name IS NOT NULL AND schema_name NOT LIKE 'pg\\_%' AND schema_name <> {schema};
    IF gone IS NOT NULL THEN
      -- Kept for the ddl_command_end of the same command (a session setting: a local one would end with
      -- this function, which has a SET clause).
      PERFORM set_config({dropped}, (coalesce(nullif(current_setting({dropped}, true), ''), '[]')::jsonb
                                    || gone)::text, false);
    END IF;
    RETURN;
  END IF;
  SELECT jsonb_agg(jsonb_build_object('type', object_type, 'schema', schema_name, 'identity', object_identity,
                                      'tag', command_tag))
    INTO objs FROM pg_event_trigger_ddl_commands()
   WHERE coalesce(schema_name, CASE object_type WHEN 'schema' THEN object_identity END) NOT LIKE 'pg\\_%'
     AND coalesce(schema_name, object_identity) <> {schema} AND NOT in_extension;
  gone := nullif(current_setting({dropped}, true), '')::jsonb;
  PERFORM set_config({dropped}, '', false);
  -- The position of this command among the DDL commands of the statement text (a text may hold several).
  mark := current_setting({mark}, true);
  IF mark IS NOT NULL AND split_part(mark, '|', 1) = statement_timestamp()::text
     AND split_part(mark, '|', 2) = pg_backend_pid()::text THEN
    seq := split_part(mark, '|', 3)::int + 1;
  END IF;
  PERFORM set_config({mark}, statement_timestamp()::text || '|' || pg_backend_pid() || '|' || seq, false);
  IF objs IS NULL AND gone IS NULL THEN
    RETURN;  -- temporary objects, the system's, or ours
  END IF;
  FOR r IN SELECT * FROM pg_event_trigger_ddl_commands()
            WHERE command_tag IN ('CREATE TABLE AS', 'SELECT INTO') AND object_type = 'table'
              AND schema_name NOT LIKE 'pg\\_%' LOOP
    SELECT jsonb_agg(jsonb_build_array(attname, format_type(atttypid, atttypmod)) ORDER BY attnum) INTO cols
      FROM pg_attribute WHERE attrelid = r.objid AND attnum > 0 AND NOT attisdropped;
  END LOOP;
  -- The constraints and indexes of the tables the command touched, by name (names PostgreSQL chose follow the
  -- destination's table and column names, which a name mapping may change: the destination renames them after).
  WITH touched AS (
    SELECT objid AS rel FROM pg_event_trigger_ddl_commands() WHERE object_type = 'table'
    UNION SELECT x.indrelid FROM pg_index x
     WHERE x.indexrelid IN (SELECT objid FROM pg_event_trigger_ddl_commands() WHERE object_type = 'index'))
  SELECT jsonb_agg(item) INTO owned FROM (
    SELECT jsonb_build_object('schema', n.nspname, 'table', t.relname, 'kind', 'constraint', 'name', k.conname,
                              'type', k.contype, 'columns', (
                                SELECT jsonb_agg(a.attname ORDER BY u.ord) FROM unnest(k.conkey) WITH ORDINALITY
                                       AS u(attnum, ord) JOIN pg_attribute a ON a.attrelid = t.oid
                                       AND a.attnum = u.attnum)) AS item
      FROM pg_constraint k JOIN pg_class t ON t.oid = k.conrelid JOIN pg_namespace n ON n.oid = t.relnamespace
     WHERE k.conrelid IN (SELECT rel FROM touched) AND k.contype IN ('p', 'u', 'f', 'c', 'x')
    UNION ALL
    SELECT jsonb_build_object('schema', n.nspname, 'table', t.relname, 'kind', 'index', 'name', i.relname,
                              'type', CASE WHEN x.indisunique THEN 'u' ELSE 'i' END, 'columns', (
                                SELECT jsonb_agg(coalesce(a.attname, '') ORDER BY u.ord)
                                  FROM unnest(x.indkey::int2[]) WITH ORDINALITY AS u(attnum, ord)
                                  LEFT JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = u.attnum))
      FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class t ON t.oid = x.indrelid
      JOIN pg_namespace n ON n.oid = t.relnamespace
     WHERE x.indrelid IN (SELECT rel FROM touched)
       AND NOT EXISTS (SELECT FROM pg_constraint k WHERE k.conindid = x.indexrelid AND k.contype IN ('p', 'u', 'x'))
  ) named;
  INSERT INTO {log} (statement_time, ordinal, command_tag, query, search_path, objects, dropped, columns, names,
                     xact_time, time_zone)
  VALUES (statement_timestamp(), seq, tg_tag, current_query(), caller_path, objs, gone, cols, owned, now(),
          current_setting('TimeZone'));
  PERFORM set_config({busy}, 'on', true);
  FOR r IN SELECT c.command_tag, c.objid, c.object_identity, c.schema_name FROM pg_event_trigger_ddl_commands() c
             JOIN pg_class k ON k.oid = c.objid
            WHERE c.command_tag IN ('CREATE TABLE', 'CREATE TABLE AS', 'SELECT INTO') AND c.object_type = 'table'
              AND k.relkind = 'r' AND k.relpersistence = 'p'
              AND c.schema_name <> {schema} AND {streamed}
              AND NOT EXISTS (SELECT FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid
                               WHERE p.pubname = {publication} AND pr.prrelid = c.objid) LOOP
    BEGIN
      IF NOT EXISTS (SELECT FROM pg_index WHERE indrelid = r.objid AND indisprimary) THEN
        EXECUTE format('ALTER TABLE %s REPLICA IDENTITY FULL', r.object_identity);
        -- Recorded as a DDL of its own, so that the destination's definition follows.
        INSERT INTO {log} (statement_time, ordinal, command_tag, query, search_path, objects)
        VALUES (statement_timestamp(), 1, 'ALTER TABLE',
                format('ALTER TABLE %s REPLICA IDENTITY FULL', r.object_identity), 'pg_catalog',
                jsonb_build_array(jsonb_build_object('type', 'table', 'schema', r.schema_name,
                                                     'identity', r.object_identity)));
      END IF;
      EXECUTE format('ALTER PUBLICATION %I ADD TABLE %s', {publication}, r.object_identity);
    EXCEPTION WHEN insufficient_privilege THEN
      -- The migration's account may not publish this table (it neither owns it nor is a superuser): the user's DDL
      -- goes on, and the sync stops at this record, naming the table and the fix.
      INSERT INTO {log} (statement_time, ordinal, command_tag, query, search_path, objects)
      VALUES (statement_timestamp(), 1, 'NOT PUBLISHED', SQLERRM, 'pg_catalog',
              jsonb_build_array(jsonb_build_object('type', 'table', 'schema', r.schema_name,
                                                   'identity', r.object_identity)));
      CONTINUE;
    END;
    IF r.command_tag <> 'CREATE TABLE' THEN
      -- Its rows were written before it was published: write them again, now that they are streamed.
      EXECUTE format('CREATE TEMPORARY TABLE pgmigrate_ddl_rows ON COMMIT DROP AS TABLE %s', r.object_identity);
      EXECUTE format('TRUNCATE %s', r.object_identity);
      EXECUTE format('INSERT INTO %s TABLE pg_temp.pgmigrate_ddl_rows', r.object_identity);
      DROP TABLE pg_temp.pgmigrate_ddl_rows;
    END IF;
  END LOOP;
  PERFORM set_config({busy}, 'off', true);
END
$pgm$;
-- The event trigger's function: it runs as the user who ran the DDL, and hands the recording function (which runs
-- as the migration's account, with a search_path of its own) the user's search_path, "$user" spelled out (on the
-- destination the sync runs as another account).
CREATE OR REPLACE FUNCTION {function}() RETURNS event_trigger LANGUAGE plpgsql AS $pgm$
BEGIN
  PERFORM {function}(TG_EVENT, TG_TAG, pg_catalog.replace(pg_catalog.current_setting('search_path'), '"$user"',
                                                          pg_catalog.quote_ident(current_user::text)));
END
$pgm$;
GRANT USAGE ON SCHEMA {schema_ident} TO PUBLIC;
-- Said outright: a database may take EXECUTE on new functions away from PUBLIC (ALTER DEFAULT PRIVILEGES), and every
-- user who runs DDL calls it. Outside an event trigger it fails (pg_event_trigger_* refuse), so it records nothing.
GRANT EXECUTE ON FUNCTION {function}(text, text, text) TO PUBLIC;
"""


#: The session setting every capture's function sets while it runs statements of its own (publishing a new table,
#: setting its replica identity): no capture records them, nor counts them among the DDL commands of the user's text.
BUSY_SETTING = f"{CAPTURE_SCHEMA}.busy"


@dataclass(frozen=True)
class CaptureNames:
    """The capture's objects on the source for one migration."""

    table: QualifiedName
    end_trigger: str
    drop_trigger: str
    #: Prefix of the session settings the trigger keeps (custom settings need a dotted name).
    setting: str


def capture_names(config: MigrationConfig) -> CaptureNames:
    slot = config.slot_name
    stem = slot if len(slot) <= 50 else slot[:41] + "_" + hashlib.md5(slot.encode()).hexdigest()[:8]  # noqa: S324
    return CaptureNames(QualifiedName(CAPTURE_SCHEMA, slot), f"{stem}_ddl_end", f"{stem}_ddl_drop",
                        f"pgmigrate_ddl.{stem}")


def is_capture_object(entry_type: str, schema: str | None, name: str, text: str) -> bool:
    """Whether a pg_dump entry is part of a DDL capture (any migration's): never migrated, never reported."""
    if schema == CAPTURE_SCHEMA or (entry_type == "SCHEMA" and name == CAPTURE_SCHEMA):
        return True
    if entry_type in ("ACL", "COMMENT") and name == f"SCHEMA {CAPTURE_SCHEMA}":
        return True
    return entry_type == "EVENT TRIGGER" and f"{CAPTURE_SCHEMA}." in text


def streamed_condition(config: MigrationConfig) -> sql.Composable:
    """The recording function's test (over ``c.schema_name`` and ``k.relname``) that a new table is one whose rows the
    migration moves: selected as :class:`~airflow_pgmigrate.engine.names.TableSelector` selects, rows not left out."""
    objects = config.objects
    key = sql.SQL("(c.schema_name || '.' || k.relname)")
    tables = [parse_qualified_name(t) for t in objects.tables]
    chosen = sql.SQL("true") if objects.selects_everything else sql.SQL(
        "(c.schema_name = ANY({schemas}::text[]) OR (c.schema_name, k.relname::text) IN "
        "(SELECT * FROM unnest({in_schema}::text[], {named}::text[])) OR {key} ~ ANY({include}::text[]))").format(
        schemas=sql.Literal(list(objects.schemas)), in_schema=sql.Literal([t.schema for t in tables]),
        named=sql.Literal([t.name for t in tables]), key=key,
        include=sql.Literal([glob_regex(p) for p in objects.include]))
    return sql.SQL("({} AND NOT {} ~ ANY({}::text[]))").format(
        chosen, key, sql.Literal([glob_regex(p) for p in [*objects.exclude, *objects.exclude_data]]))


def glob_regex(pattern: str) -> str:
    """A selection pattern (a shell glob, as :mod:`fnmatch` reads it) as a PostgreSQL regular expression matching
    the whole text."""
    out, i = [], 0
    while i < len(pattern):
        ch, end = pattern[i], pattern.find("]", i + 2)
        if ch == "*":
            out.append(".*")
        elif ch == "?":
            out.append(".")
        elif ch == "[" and end > 0:
            body = pattern[i + 1:end]
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body).replace("\\", "\\\\") + "]")
            i = end
        else:
            out.append(re.escape(ch))
        i += 1
    return "^" + "".join(out) + "$"


def install_capture(conn: psycopg.Connection, config: MigrationConfig,
                    log: Callable[[str], None] = lambda message: None) -> None:
    """Create (or renew) the capture and publish its log table; the publication must exist. Idempotent."""
    names = capture_names(config)
    table = sql.Identifier(names.table.schema, names.table.name)
    setting = names.setting
    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(CAPTURE_SCHEMA)))
    conn.execute(sql.SQL(
        "CREATE TABLE IF NOT EXISTS {} (id bigserial PRIMARY KEY, statement_time timestamptz NOT NULL, "
        "ordinal int NOT NULL, command_tag text NOT NULL, query text NOT NULL, search_path text NOT NULL, "
        "objects jsonb, dropped jsonb, columns jsonb, names jsonb, xact_time timestamptz, time_zone text, "
        "recorded_at timestamptz NOT NULL DEFAULT clock_timestamp())"
    ).format(table))
    conn.execute(sql.SQL(_FUNCTION).format(
        function=table, log=table, schema=sql.Literal(CAPTURE_SCHEMA), schema_ident=sql.Identifier(CAPTURE_SCHEMA),
        publication=sql.Literal(config.publication_name), busy=sql.Literal(BUSY_SETTING),
        dropped=sql.Literal(f"{setting}_dropped"), mark=sql.Literal(f"{setting}_mark"),
        streamed=streamed_condition(config)))
    for trigger, event in ((names.end_trigger, "ddl_command_end"), (names.drop_trigger, "sql_drop")):
        conn.execute(sql.SQL("DROP EVENT TRIGGER IF EXISTS {}").format(sql.Identifier(trigger)))
        conn.execute(sql.SQL("CREATE EVENT TRIGGER {} ON {} EXECUTE PROCEDURE {}()").format(
            sql.Identifier(trigger), sql.SQL(event), table))
    published = conn.execute(
        "SELECT 1 FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid "
        "WHERE p.pubname = %s AND pr.prrelid = to_regclass(%s)",
        (config.publication_name, table.as_string(conn))).fetchone()
    if not published:
        conn.execute(sql.SQL("ALTER PUBLICATION {} ADD TABLE {}").format(
            sql.Identifier(config.publication_name), table))
    log(f"ddl_capture installed table={names.table} triggers={names.end_trigger},{names.drop_trigger} "
        f"publication={config.publication_name}")


def remove_capture(conn: psycopg.Connection, config: MigrationConfig,
                   log: Callable[[str], None] = lambda message: None) -> bool:
    """Drop the capture's triggers, function and log table (and the schema once no migration uses it). True when
    something was there. Safe to repeat; done whatever ``incremental.ddl`` says now (it may have changed)."""
    names = capture_names(config)
    table = sql.Identifier(names.table.schema, names.table.name)
    found = False
    for trigger in (names.end_trigger, names.drop_trigger):
        if conn.execute("SELECT 1 FROM pg_event_trigger WHERE evtname = %s", (trigger,)).fetchone():
            conn.execute(sql.SQL("DROP EVENT TRIGGER {}").format(sql.Identifier(trigger)))
            found = True
    if conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (CAPTURE_SCHEMA,)).fetchone() is None:
        return found
    conn.execute(sql.SQL("DROP FUNCTION IF EXISTS {}()").format(table))
    conn.execute(sql.SQL("DROP FUNCTION IF EXISTS {}(text, text, text)").format(table))
    if conn.execute("SELECT to_regclass(%s)", (table.as_string(conn),)).fetchone() != (None,):
        conn.execute(sql.SQL("DROP TABLE {}").format(table))
        found = True
    left = conn.execute("SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                        "WHERE n.nspname = %s", (CAPTURE_SCHEMA,)).fetchone()
    if left is not None and left[0] == 0:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {}").format(sql.Identifier(CAPTURE_SCHEMA)))
    if found:
        log(f"release ddl_capture={names.table} dropped=True")
    return found


__all__ = ["CaptureNames", "is_capture_object", "capture_names", "install_capture", "remove_capture"]
