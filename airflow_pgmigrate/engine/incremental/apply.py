"""Applying decoded changes to the destination: batched, collapsed to each row's net effect, set-based.

Many source transactions go into one destination transaction. Inside a batch, the changes to one row collapse into
their net effect (the row's final state, and whether it existed before the batch). Each table's rows are then written
with a few set-based statements through a temporary table filled by COPY: DELETE ... USING, UPDATE ... FROM, and COPY
(or INSERT ... WHERE NOT EXISTS) for new rows. Key changes, tables without a key (REPLICA IDENTITY FULL) and TRUNCATE
are applied one by one, in order. If a set-based batch fails, the caller replays it one change at a time.

A set-based statement joins the staging table to the target. When the batch is small against the table, it is planned
as index lookups driven by the staged keys (hash and merge joins are turned off for that statement): a hash or merge
join reads the whole target table, so every batch would cost the table instead of the batch.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from operator import itemgetter
from typing import Any

import psycopg
from psycopg import sql

from airflow_pgmigrate.engine.incremental.pgoutput import TUPLECODEC, UNCHANGED, Change, Value
from airflow_pgmigrate.engine.names import QualifiedName
from airflow_pgmigrate.exceptions import PgMigrateError

#: A set-based statement is planned as index lookups when its staged rows are fewer than this share of the target
#: table's rows; above it the planner chooses (a hash join over the whole table pays off once the batch touches a
#: large part of it). Measured on 2 M rows: 36 k random keys took 1.2 s as lookups, 1.5 s as a merge join over the
#: whole primary key and 2.4 s as a hash join; 200 k keys took 4.7 s as a hash join and 8.1 s as lookups.
LOOKUP_SHARE = 0.05
#: A staging table is emptied with DELETE until this many rows were staged in it since its last TRUNCATE.
STAGING_DELETE_ROWS = 10_000
#: Seconds a target table's estimated row count is reused before it is read again.
TABLE_SIZE_SECONDS = 60.0

#: Whether index lookups driven by staged keys pay on a table: a valid, non-partial index starting with a key column,
#: and every partitioned table of its tree partitioned by key columns alone (else each key probes every partition).
LOOKUPS_POSSIBLE = """
WITH RECURSIVE target(relid) AS (SELECT format('%%I.%%I', %(schema)s::text, %(name)s::text)::regclass::oid),
tree(relid) AS (SELECT relid FROM target
                UNION ALL SELECT i.inhrelid FROM pg_inherits i JOIN tree ON i.inhparent = tree.relid)
SELECT EXISTS (SELECT FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
                WHERE i.indrelid = (SELECT relid FROM target) AND i.indisvalid AND i.indpred IS NULL
                  AND a.attname = ANY(%(keys)s::text[]))
   AND NOT EXISTS (SELECT FROM tree JOIN pg_partitioned_table p ON p.partrelid = tree.relid
                   CROSS JOIN LATERAL unnest(p.partattrs::int2[]) AS k(attnum)
                   LEFT JOIN pg_attribute a ON a.attrelid = p.partrelid AND a.attnum = k.attnum
                    WHERE k.attnum = 0 OR a.attname IS NULL OR NOT a.attname = ANY(%(keys)s::text[]))
"""


class ApplyError(PgMigrateError):
    """A change cannot be applied (DDL on the source, a row the destination cannot take)."""


class RowsNotMatched(Exception):  # noqa: N818 - a signal to the caller, not an error shown to anyone
    """A set-based UPDATE or DELETE touched another number of rows than the changes it applies: the caller replays
    the batch one change at a time, in source order, which names the exact change whose row is missing."""


def _escape(value: Value) -> bytes:
    if value is None:
        return b"\\N"
    assert isinstance(value, bytes)
    if b"\\" in value or b"\t" in value or b"\n" in value or b"\r" in value:
        value = value.replace(b"\\", b"\\\\").replace(b"\t", b"\\t").replace(b"\n", b"\\n").replace(b"\r", b"\\r")
    return value


#: Bytes of COPY text ``copy_lines`` aims at per block: the rows of the next chunk follow the size of the last.
COPY_BLOCK_BYTES = 262144


def copy_lines(rows: Iterable[list[Value]], positions: list[int]) -> Iterator[bytes]:
    """COPY text lines of ``rows`` (the values at ``positions``), about ``COPY_BLOCK_BYTES`` at a time.

    Most values need no escaping: a chunk is formatted whole (one join per row, in C; NULL markers put in only where
    a row holds a NULL), and checked as a whole: exactly the separators' tabs and newlines, no backslash but the NULL
    markers, no carriage return. A chunk that fails the check is formatted row by row, escaping only the rows that
    need it.
    """
    pick: Any = itemgetter(*positions) if len(positions) > 1 else \
        (lambda row, p=positions[0]: (row[p],)) if positions else None
    fast = TUPLECODEC.copy_block if TUPLECODEC is not None else None
    picked = tuple(positions)
    iterator = iter(rows)
    size = 64  # rows of the first chunk; rows of any size stay near COPY_BLOCK_BYTES per block from then on
    while chunk := list(islice(iterator, size)):
        block = fast(chunk, picked) if fast is not None else None
        if block is None and pick is not None:
            block = _copy_block(chunk, len(positions), pick)
        if block is None:
            block = _copy_rows(chunk, positions)
        yield block
        size = max(1, min(8192, len(chunk) * COPY_BLOCK_BYTES // max(1, len(block))))


def _copy_block(chunk: list[list[Value]], width: int, pick: Any) -> bytes | None:
    """The COPY lines of a chunk formatted whole, or None when a value needs escaping (or is not bytes)."""
    picked = list(map(pick, chunk))
    nulls = 0
    try:
        block = b"\n".join(map(b"\t".join, picked))
    except TypeError:  # NULLs: their markers are the chunk's only backslashes
        lines = []
        try:
            for values in picked:
                if None in values:
                    nulls += values.count(None)
                    values = [b"\\N" if v is None else v for v in values]
                lines.append(b"\t".join(values))
        except TypeError:  # an unchanged TOASTed value, which is never staged
            return None
        block = b"\n".join(lines)
    n = len(chunk)
    if (block.count(b"\t") != n * (width - 1) or block.count(b"\n") != n - 1 or block.count(b"\\") != nulls
            or b"\r" in block):
        return None
    return block + b"\n"


def _copy_rows(rows: list[list[Value]], positions: list[int]) -> bytes:
    """COPY text lines of ``rows``, row by row: a line is joined first and checked as a whole (its tabs are the
    separators, its backslashes the NULL markers), and only a row that holds a special character is escaped."""
    width = len(positions)
    buffer: list[bytes] = []
    for row in rows:
        values = [row[p] for p in positions]
        nulls = 0
        if None in values:
            nulls = values.count(None)
            values = [b"\\N" if v is None else v for v in values]
        line = b"\t".join(values)  # type: ignore[arg-type]
        if (line.count(b"\t") != width - 1 or line.count(b"\\") != nulls or b"\n" in line or b"\r" in line):
            line = b"\t".join(_escape(row[p]) for p in positions)
        buffer.append(line)
    buffer.append(b"")
    return b"\n".join(buffer)


@dataclass
class TableTarget:
    """How changes of one source relation land in the destination."""

    source: QualifiedName
    target: QualifiedName
    #: Index in the source tuple -> destination column name, for the columns that migrate.
    columns: list[tuple[int, str]]
    #: Source tuple indexes of the key (empty: REPLICA IDENTITY FULL, rows are found by all their values).
    key: list[int]
    #: Destination names of the key columns.
    key_names: list[str]
    #: Update-or-insert semantics (conflicting_tables: ignore, or a row filter: rows move in and out).
    upsert: bool
    #: The row filter rewritten for the destination's column names, or None.
    row_filter: str | None
    #: Changes committed before this LSN are already in the destination (the table's full-load snapshot).
    start_lsn: int = 0

    @property
    def ident(self) -> sql.Identifier:
        return sql.Identifier(self.target.schema, self.target.name)

    def __post_init__(self) -> None:
        self._single = self.key[0] if len(self.key) == 1 else None

    def key_of(self, values: list[Value]) -> tuple[Value, ...]:
        if self._single is not None:
            return (values[self._single],)
        return tuple([values[i] for i in self.key])


@dataclass
class SetOps:
    """Collapsible changes of one keyed table, as each row's net effect: key -> ``[existed, final]``, whether the row
    existed before the batch and its final values (None: deleted). A two-item list is cheaper than an object.

    While every change of the group is an insert, the new rows are only listed (``inserted``), without computing a
    key: no key repeats in such a run (the source's key is unique; a delete or update of an inserted row comes before
    any new insert of its key, and a key change or truncate ends the group). The first other change moves the listed
    rows into ``rows`` and collapsing goes on from there. An insert-only group goes straight to COPY.
    """

    table: TableTarget
    rows: dict[tuple[Value, ...], list[Any]] = field(default_factory=dict)
    inserted: list[list[Value]] | None = field(default_factory=list)

    def add(self, change: Change) -> None:
        kind = change.kind
        inserted = self.inserted
        if inserted is not None:
            if kind == "I":
                inserted.append(change.new)  # type: ignore[arg-type]
                return
            self._index_inserted(inserted)
        key_of = self.table.key_of
        rows = self.rows
        if kind == "D":
            assert change.old is not None
            key = key_of(change.old)
            state = rows.get(key)
            if state is None:
                rows[key] = [True, None]
            else:
                state[1] = None
            return
        new = change.new
        assert new is not None
        key = key_of(new)
        state = rows.get(key)
        if state is None:
            rows[key] = [kind == "U", new]
        elif kind == "I" or state[1] is None:
            state[1] = new
        else:
            final = state[1]
            state[1] = [f if n is UNCHANGED else n for n, f in zip(new, final, strict=True)] \
                if UNCHANGED in new else new

    def _index_inserted(self, inserted: list[list[Value]]) -> None:
        """End the insert-only run: its rows become net effects (new rows) keyed like every other change."""
        key_of = self.table.key_of
        rows = self.rows
        for new in inserted:
            rows[key_of(new)] = [False, new]
        self.inserted = None

    def net_effect(self) -> tuple[list[tuple[Value, ...]], list[list[Value]], list[list[Value]]]:
        """The keys to delete, the rows to update and the rows to insert."""
        if self.inserted is not None:
            return [], [], self.inserted
        deletes, updates, inserts = [], [], []
        for key, (existed, final) in self.rows.items():
            if final is None:
                if existed:
                    deletes.append(key)
            elif existed:
                updates.append(final)
            else:
                inserts.append(final)
        return deletes, updates, inserts


@dataclass
class Sequential:
    """A change applied on its own, in order (key change, table without key, truncate)."""

    table: TableTarget | None
    change: Change | None
    truncate: list[TableTarget] | None = None
    restart_identity: bool = False


class Batch:
    """Changes of many source transactions, kept in the order that matters and collapsed where it does not."""

    def __init__(self, *, collapse: bool = True) -> None:
        self.steps: list[SetOps | Sequential] = []
        #: Every change as it came (a truncate as its step; an insert of an insert-only run as its new row alone),
        #: for a one-by-one replay when a set-based write fails; ``_tables`` holds where each run of one table's
        #: changes starts (one entry per run, not per change).
        self._log: list[Change | Sequential | list[Value]] = []
        self._tables: list[tuple[int, TableTarget | None]] = [(0, None)]
        self._last_table: TableTarget | None = None
        self.collapse = collapse
        self._open: dict[int, SetOps] = {}
        self.changes = 0
        self.bytes = 0

    def add_insert(self, rel: int, table: TableTarget, new: list[Value], size: int) -> None:
        """An insert, given as its new row: while it continues an insert-only run (see :class:`SetOps`), no
        :class:`Change` is made for it; otherwise it goes through :meth:`add`."""
        ops = self._open.get(rel)
        if ops is None or ops.inserted is None or ops.table is not table:
            self.add(rel, table, Change("I", rel, new, None), size)
            return
        self._note(table, new, size)
        ops.inserted.append(new)

    def _note(self, table: TableTarget, item: Change | list[Value], size: int) -> None:
        """Count a change and keep it in the replay log (a new run when its table is not the last one's)."""
        self.changes += 1
        self.bytes += size
        if table is not self._last_table:
            self._tables.append((len(self._log), table))
            self._last_table = table
        self._log.append(item)

    def add(self, rel: int, table: TableTarget, change: Change, size: int) -> None:
        self._note(table, change, size)
        ops = self._open.get(rel)
        if ops is not None and ops.inserted is not None and change.kind == "I" and ops.table is table:
            ops.inserted.append(change.new)  # type: ignore[arg-type]  # the insert-only run (see SetOps)
            return
        if not self.collapse:
            self.steps.append(Sequential(table, change))
            return
        old = change.old
        key_change = (old is not None and change.kind == "U" and change.old_kind == "K"
                      and change.new is not None and table.key_of(old) != table.key_of(change.new))
        if not table.key or key_change:
            self._open.pop(rel, None)
            self.steps.append(Sequential(table, change))
            return
        if ops is None or ops.table is not table:
            # A new relation description (columns, replica identity) starts a new group: rows are keyed by it.
            ops = SetOps(table)
            self._open[rel] = ops
            self.steps.append(ops)
        ops.add(change)

    def truncate(self, rels: list[int], tables: list[TableTarget], restart_identity: bool) -> None:
        self.changes += 1
        for rel in rels:
            self._open.pop(rel, None)
        step = Sequential(None, None, tables, restart_identity)
        self.steps.append(step)
        self._log.append(step)

    @property
    def original(self) -> list[tuple[TableTarget, Change] | Sequential]:
        """Every change as it came, ``(table, change)``, or a truncate's step (a batch's truncates before its first
        row change fall in a run without a table)."""
        out: list[tuple[TableTarget, Change] | Sequential] = []
        starts = self._tables + [(len(self._log), None)]
        for (start, table), (end, _) in zip(starts, starts[1:], strict=False):
            for item in self._log[start:end]:
                if type(item) is list:  # an insert of an insert-only run
                    out.append((table, Change("I", 0, item, None)))  # type: ignore[arg-type]
                else:
                    out.append(item if isinstance(item, Sequential) else (table, item))  # type: ignore[arg-type]
        return out

    def __bool__(self) -> bool:
        return bool(self.steps)


class Applier:
    """Writes batches on one destination connection (in the caller's transaction).

    With ``count_rows`` (destination triggers and foreign keys do not fire: ``session_replication_role = replica``),
    every UPDATE and DELETE must touch exactly the rows its changes name; without it a destination trigger or an
    ON DELETE CASCADE may legitimately have touched them first, so the counts are not checked.
    """

    def __init__(self, conn: psycopg.Connection, *, count_rows: bool = True) -> None:
        self.conn = conn
        self.count_rows = count_rows
        self._staging: dict[tuple[str, tuple[str, ...]], sql.Identifier] = {}
        self._staging_serial = 0  # staging table names are never reused (a forgotten one may still exist)
        #: Rows staged into each staging table since it was last truncated (dead rows its scans step over).
        self._staged_since_truncate: dict[tuple[str, tuple[str, ...]], int] = {}
        #: Target table -> (staged rows below which its statements are index lookups, when read).
        self._lookup_limits: dict[str, tuple[float, float]] = {}
        #: The session's enable_hashjoin and enable_mergejoin, restored for statements the planner chooses freely.
        self._join_settings: tuple[str, str] | None = None

    def staging_mark(self) -> dict[tuple[str, tuple[str, ...]], sql.Identifier]:
        """The staging tables known now (before a savepoint)."""
        return dict(self._staging)

    def staging_rolled_back(self, mark: dict[tuple[str, tuple[str, ...]], sql.Identifier]) -> None:
        """A rollback to the savepoint undid the staging tables created after ``mark``: forget them."""
        self._staging = mark

    def forget(self, tables: Iterable[QualifiedName]) -> None:
        """Replicated DDL changed these destination tables: drop their staging tables (made with the old shape) and
        what was measured of them."""
        names = {str(t) for t in tables}
        for key in [k for k in self._staging if k[0] in names]:
            self.conn.execute(sql.SQL("DROP TABLE IF EXISTS pg_temp.{}").format(self._staging.pop(key)))
            self._staged_since_truncate.pop(key, None)
        for name in names:
            self._lookup_limits.pop(name, None)

    # -- set-based ---------------------------------------------------------------------------------------------

    def apply(self, batch: Batch) -> None:
        for step in batch.steps:
            if isinstance(step, SetOps):
                self._apply_set(step)
            else:
                self._apply_one(step)

    def replay(self, batch: Batch) -> None:
        """Apply a batch's changes one by one, in source order (the fallback of a failed set-based write)."""
        for step in batch.original:
            self._apply_one(step if isinstance(step, Sequential) else Sequential(*step))

    def _stage(self, table: TableTarget, names: list[str], rows: Iterable[list[Value]],
               positions: list[int], staged: int) -> sql.Identifier:
        """Fill a temporary table (columns ``names``) with ``rows`` (``staged`` of them) through COPY, and plan the
        statement that joins it to ``table`` (see ``_join_plan``); return the temporary table's name.

        Emptying (or creating) the temporary table and setting the join strategy go in one round trip."""
        key = (str(table.target), tuple(names))
        ident = self._staging.get(key)
        if ident is None:
            self._staging_serial += 1
            ident = sql.Identifier(f"pgm_stage_{self._staging_serial}")
            prepare = sql.SQL("CREATE TEMP TABLE {} ON COMMIT DELETE ROWS AS SELECT {} FROM {} WITH NO DATA").format(
                ident, sql.SQL(", ").join(map(sql.Identifier, names)), table.ident)
            self._staging[key] = ident
            self._staged_since_truncate[key] = 0
        elif self._staged_since_truncate.get(key, 0) > STAGING_DELETE_ROWS:
            prepare = sql.SQL("TRUNCATE {}").format(ident)
            self._staged_since_truncate[key] = 0
        else:
            # Few rows (or none: ON COMMIT DELETE ROWS empties it at each commit): a DELETE costs them, while a
            # TRUNCATE replaces the table's files, milliseconds each time, for every table of every batch.
            prepare = sql.SQL("DELETE FROM {}").format(ident)
        self._staged_since_truncate[key] += staged
        self.conn.execute(sql.SQL("{}; {}").format(prepare, self._join_plan(table, staged)))
        with self.conn.cursor().copy(sql.SQL("COPY {} FROM STDIN").format(ident)) as copy:
            for block in copy_lines(rows, positions):
                copy.write(block)
        return ident

    def _lookup_limit(self, t: TableTarget) -> float:
        """Below how many staged rows a statement on ``t`` is planned as index lookups: a share of the table's rows
        as the planner estimates them (statistics, or its size when never analysed; partitions included), or 0 when
        no valid index of the destination table starts with a key column (lookups would then scan it per key), or
        when the table is partitioned by a column (or expression) outside the key, at any level: a staged key then
        cannot prune, and each lookup probes every partition."""
        name = str(t.target)
        known = self._lookup_limits.get(name)
        now = time.monotonic()
        if known is None or now - known[1] > TABLE_SIZE_SECONDS:
            lookups = self.conn.execute(LOOKUPS_POSSIBLE, {"schema": t.target.schema, "name": t.target.name,
                                                          "keys": t.key_names}).fetchone()
            row = self.conn.execute(sql.SQL("EXPLAIN (FORMAT JSON) SELECT FROM {}").format(t.ident)).fetchone()
            rows = float(row[0][0]["Plan"]["Plan Rows"]) if row and lookups and lookups[0] else 0.0
            known = (LOOKUP_SHARE * rows, now)
            self._lookup_limits[name] = known
        return known[0]

    def _join_plan(self, t: TableTarget, staged: int) -> sql.Composable:
        """The statement to run before one that joins ``staged`` rows to ``t``: index lookups when the batch is small
        against the table (hash and merge joins off for this transaction, until the next set-based statement sets
        them again), else the session's own settings."""
        if self._join_settings is None:
            row = self.conn.execute("SELECT current_setting('enable_hashjoin'), "
                                    "current_setting('enable_mergejoin')").fetchone()
            assert row is not None
            self._join_settings = (str(row[0]), str(row[1]))
        hashjoin, mergejoin = ("off", "off") if staged < self._lookup_limit(t) else self._join_settings
        return sql.SQL("SELECT set_config('enable_hashjoin', {}, true), set_config('enable_mergejoin', {}, true)"
                       ).format(sql.Literal(hashjoin), sql.Literal(mergejoin))

    def _match(self, table: TableTarget, left: str, right: str) -> sql.Composable:
        return sql.SQL(" AND ").join(
            sql.SQL("{}.{} = {}.{}").format(sql.Identifier(left), sql.Identifier(k), sql.Identifier(right),
                                            sql.Identifier(k)) for k in table.key_names)

    def _apply_set(self, ops: SetOps) -> None:
        t = ops.table
        deletes, updates, inserts = ops.net_effect()
        key_positions = list(range(len(t.key)))
        if deletes:
            stage = self._stage(t, t.key_names, deletes, key_positions, len(deletes))  # type: ignore[arg-type]
            cur = self.conn.execute(sql.SQL("DELETE FROM {t} AS d USING {s} AS s WHERE {m}").format(
                t=t.ident, s=stage, m=self._match(t, "d", "s")))
            if self.count_rows and not t.upsert and cur.rowcount != len(deletes):
                raise RowsNotMatched(f"DELETE of {t.source} touched {cur.rowcount} of {len(deletes)} rows")
        # Rows whose unchanged TOAST columns are unknown are written with the columns known, grouped by shape.
        complete = tuple(i for i, _ in t.columns)
        groups: dict[tuple[int, ...], list[list[Value]]] = {complete: []}
        for row in updates:
            if UNCHANGED in row:
                known = tuple(i for i, name in t.columns if row[i] is not UNCHANGED)
                groups.setdefault(known, []).append(row)
            else:
                groups[complete].append(row)
        for known, rows in groups.items():
            if rows:
                self._update_rows(t, known, rows, insert_missing=t.upsert)
        if inserts:
            if t.upsert:
                self._update_rows(t, complete, [r for r in inserts if r is not None], insert_missing=True)
            else:
                names = [name for _, name in t.columns]
                target = sql.SQL("COPY {} ({}) FROM STDIN").format(t.ident,
                                                                   sql.SQL(", ").join(map(sql.Identifier, names)))
                with self.conn.cursor().copy(target) as copy:
                    for block in copy_lines(inserts, list(complete)):
                        copy.write(block)
        if t.row_filter and (updates or inserts):
            keys = [[r[i] for i in t.key] for r in updates + inserts if r is not None]
            stage = self._stage(t, t.key_names, keys, key_positions, len(keys))
            self.conn.execute(sql.SQL("DELETE FROM {t} AS d USING {s} AS s WHERE {m} AND NOT coalesce(({f}), false)")
                              .format(t=t.ident, s=stage, m=self._match(t, "d", "s"), f=sql.SQL(t.row_filter)))

    def _update_rows(self, t: TableTarget, known: tuple[int, ...], rows: list[list[Value]],
                     *, insert_missing: bool) -> None:
        names = {i: name for i, name in t.columns}
        columns = [names[i] for i in known if i in names]
        key_names = set(t.key_names)
        staged_names = list(dict.fromkeys(t.key_names + columns))
        positions = [t.key[t.key_names.index(n)] if n in key_names else next(i for i in known if names.get(i) == n)
                     for n in staged_names]
        stage = self._stage(t, staged_names, rows, positions, len(rows))
        set_cols = [c for c in columns if c not in key_names]
        if set_cols:
            cur = self.conn.execute(sql.SQL("UPDATE {t} AS d SET {sets} FROM {s} AS s WHERE {m}").format(
                t=t.ident, s=stage, m=self._match(t, "d", "s"),
                sets=sql.SQL(", ").join(sql.SQL("{c} = s.{c}").format(c=sql.Identifier(c)) for c in set_cols)))
            if self.count_rows and not insert_missing and cur.rowcount != len(rows):
                raise RowsNotMatched(f"UPDATE of {t.source} touched {cur.rowcount} of {len(rows)} rows")
        elif self.count_rows and not insert_missing:
            # Nothing to write (keys set to themselves, unchanged TOASTed values): the rows still have to be there.
            found = self.conn.execute(sql.SQL("SELECT count(*) FROM {t} AS d JOIN {s} AS s ON {m}").format(
                t=t.ident, s=stage, m=self._match(t, "d", "s"))).fetchone()
            if found is None or found[0] != len(rows):
                raise RowsNotMatched(f"UPDATE of {t.source} found {found[0] if found else 0} of {len(rows)} rows")
        if not insert_missing:
            return
        missing = sql.SQL("NOT EXISTS (SELECT 1 FROM {t} AS d WHERE {m})").format(t=t.ident,
                                                                                 m=self._match(t, "d", "s"))
        all_columns = [name for _, name in t.columns]
        if len(columns) < len(all_columns):
            row = self.conn.execute(sql.SQL("SELECT count(*) FROM {s} AS s WHERE {w}").format(s=stage, w=missing))
            absent = row.fetchone()
            if absent and absent[0]:
                raise ApplyError(
                    f"{absent[0]} row(s) of {t.source} entered the destination's selection (row filter or a "
                    f"missing row) with unchanged TOASTed values the source did not send; set REPLICA IDENTITY FULL "
                    f"on {t.source} so that complete rows are sent, then run the full load of this table again")
            return
        self.conn.execute(sql.SQL("INSERT INTO {t} ({c}) SELECT {c} FROM {s} AS s WHERE {w}").format(
            t=t.ident, c=sql.SQL(", ").join(map(sql.Identifier, columns)), s=stage, w=missing))

    # -- one by one -------------------------------------------------------------------------------------------

    def _apply_one(self, step: Sequential) -> None:
        """A truncate, or one change with plain statements."""
        if step.truncate is not None:
            if step.truncate:
                self.conn.execute(sql.SQL("TRUNCATE {}{}").format(
                    sql.SQL(", ").join(t.ident for t in step.truncate),
                    sql.SQL(" RESTART IDENTITY" if step.restart_identity else "")))
            return
        assert step.table is not None and step.change is not None
        self.apply_change(step.table, step.change)

    def apply_change(self, t: TableTarget, change: Change) -> None:
        """Apply one change with plain statements (exact source order)."""
        cols = t.columns
        # A row without a key is found again by its ctid for the row filter check.
        by_ctid = bool(t.row_filter) and not t.key
        returning = sql.SQL(" RETURNING ctid::text" if by_ctid else "")
        written: list[str] = []
        if change.kind == "I":
            assert change.new is not None
            written += self._insert(t, [(n, change.new[i]) for i, n in cols], overwrite=t.upsert, returning=returning)
        elif change.kind == "U" and not cols:
            return  # a row without columns to write (only generated ones) cannot change here
        elif change.kind == "U":
            assert change.new is not None
            old = change.old if change.old is not None else change.new
            new = _known(change)
            where = self._where(t, old)
            # Unchanged TOASTed values the source did not send (no old row to take them from) keep theirs; a row
            # whose every value is kept still has to be found, so its first column is set to itself.
            sets = [(sql.SQL("{} = %s").format(sql.Identifier(n)), [_text(new[i])]) for i, n in cols
                    if new[i] is not UNCHANGED] or [(sql.SQL("{0} = {0}").format(sql.Identifier(cols[0][1])), [])]
            cur = self.conn.execute(sql.SQL("UPDATE {t} SET {s} WHERE {w}{r}").format(
                t=t.ident, s=sql.SQL(", ").join(s for s, _ in sets), w=where[0], r=returning),
                [v for _, vs in sets for v in vs] + where[1])
            if cur.rowcount == 0 and t.upsert:
                if any(new[i] is UNCHANGED for i, _ in cols):
                    raise ApplyError(f"a row of {t.source} entered the destination's selection with unchanged "
                                     "TOASTed values the source did not send; set REPLICA IDENTITY FULL on it")
                written += self._insert(t, [(n, new[i]) for i, n in cols], overwrite=False, returning=returning)
            elif self.count_rows and cur.rowcount != 1 and not t.upsert:
                raise ApplyError(_not_matched(t, "UPDATE", self._expected(t, old), cur.rowcount))
            elif by_ctid:
                written += [r[0] for r in cur.fetchall()]
        else:
            assert change.old is not None
            where = self._where(t, change.old)
            cur = self.conn.execute(sql.SQL("DELETE FROM {t} WHERE {w}").format(t=t.ident, w=where[0]), where[1])
            if self.count_rows and cur.rowcount != 1 and not t.upsert:
                raise ApplyError(_not_matched(t, "DELETE", self._expected(t, change.old), cur.rowcount))
        if t.row_filter and change.kind in "IU" and change.new is not None and t.key:
            where = self._where(t, change.new)
            self.conn.execute(sql.SQL("DELETE FROM {t} WHERE {w} AND NOT coalesce(({f}), false)").format(
                t=t.ident, w=where[0], f=sql.SQL(t.row_filter)), where[1])
        for ctid in written:
            self.conn.execute(sql.SQL("DELETE FROM {t} WHERE ctid = %s::tid AND NOT coalesce(({f}), false)").format(
                t=t.ident, f=sql.SQL(t.row_filter or "true")), [ctid])

    def _insert(self, t: TableTarget, values: list[tuple[str, Value]], *, overwrite: bool,
                returning: sql.Composable | None = None) -> list[str]:
        names = sql.SQL(", ").join(sql.Identifier(n) for n, _ in values)
        marks = sql.SQL(", ").join(sql.Placeholder() for _ in values)
        conflict: sql.Composable
        if overwrite and t.key_names:
            sets = [n for n, _ in values if n not in t.key_names]
            action = sql.SQL("DO UPDATE SET {}").format(sql.SQL(", ").join(
                sql.SQL("{c} = EXCLUDED.{c}").format(c=sql.Identifier(n)) for n in sets)) if sets else \
                sql.SQL("DO NOTHING")
            conflict = sql.SQL(" ON CONFLICT ({}) {}").format(
                sql.SQL(", ").join(map(sql.Identifier, t.key_names)), action)
        else:
            conflict = sql.SQL("")
        # A row of a table without columns to write (``CREATE TABLE t ()``, only generated columns) is all defaults.
        rows = sql.SQL("({}) VALUES ({})").format(names, marks) if values else sql.SQL("DEFAULT VALUES")
        cur = self.conn.execute(sql.SQL("INSERT INTO {} {}{}{}").format(
                                    t.ident, rows, conflict, returning or sql.SQL("")),
                                [_text(v) for _, v in values])
        return [r[0] for r in cur.fetchall()] if cur.description else []

    def _where(self, t: TableTarget, values: list[Value]) -> tuple[sql.Composable, list[Any]]:
        if t.key:
            parts = [(sql.SQL("{} = %s").format(sql.Identifier(n)), values[i]) for i, n in zip(t.key, t.key_names,
                                                                                              strict=True)]
            return sql.SQL(" AND ").join(p for p, _ in parts), [_text(v) for _, v in parts]
        # REPLICA IDENTITY FULL: the first row equal in every column, compared as the output function's text (what
        # pgoutput sends; any type compares, json too). Not ::text: that cast differs for boolean ('true' vs 't'),
        # character(n) (trimmed) and inet (always /32). format('%s') calls the output function but gives '' for NULL,
        # and IS NULL is true for a composite whose fields are all NULL: num_nulls() tests the value itself.
        conds = [(sql.SQL("num_nulls({}) = 1").format(sql.Identifier(n)), None) if values[i] is None else
                 (sql.SQL("(num_nulls({c}) = 0 AND format('%%s', {c}) = %s)").format(c=sql.Identifier(n)), values[i])
                 for i, n in t.columns if values[i] is not UNCHANGED]
        # No column to compare (a table without columns): any one row is that row.
        inner = sql.SQL("ctid = (SELECT ctid FROM {} WHERE {} LIMIT 1)").format(
            t.ident, sql.SQL(" AND ").join(c for c, _ in conds) if conds else sql.SQL("true"))
        return inner, [_text(v) for _, v in conds if v is not None]

    @staticmethod
    def _expected(t: TableTarget, values: list[Value]) -> str:
        """The row a change looked for, in words: its key, or (no key) every value it was compared by."""
        shown = [(n, values[i]) for i, n in zip(t.key, t.key_names, strict=True)] if t.key else \
                [(n, values[i]) for i, n in t.columns if values[i] is not UNCHANGED]
        text = ", ".join(f"{n}={_shown(v)}" for n, v in shown)
        return f"1 row with {text}" if t.key else f"1 row equal in every column to ({text})"


def _known(change: Change) -> list[Value]:
    """The new row with its unchanged TOASTed values taken from the old row, where the source sent the whole old
    row (REPLICA IDENTITY FULL: old tuple kind 'O'), so that an update of such a row writes every column."""
    new = change.new
    assert new is not None
    if change.old is None or change.old_kind != "O" or UNCHANGED not in new:
        return new
    return [o if n is UNCHANGED else n for n, o in zip(new, change.old, strict=True)]


def _shown(value: Value) -> str:
    if value is None:
        return "NULL"
    if value is UNCHANGED:
        return "(unchanged)"
    assert isinstance(value, bytes)
    text = value.decode(errors="replace")
    return repr(text if len(text) <= 60 else text[:57] + "...")


def _not_matched(t: TableTarget, verb: str, expected: str, touched: int) -> str:
    """An UPDATE or DELETE that found no row (or another number of rows than the changes it applies)."""
    kind = "by its key" if t.key else "by every column (REPLICA IDENTITY FULL, no key)"
    return (f"a replicated {verb} of {t.source} (into {t.target}, rows found {kind}) expected {expected} on the "
            f"destination and touched {touched}. The destination no longer holds "
            "the row the source changed (a write on the destination, or a value whose text differs between the "
            "servers: floats from PostgreSQL 10/11, money under another lc_monetary). Nothing of this batch was "
            f"applied: compare {t.source} on both sides (VerifyOperator), make the destination row equal to the "
            "source's as it was before the change, then resume")


def _text(value: Value) -> str | None:
    if value is None:
        return None
    assert isinstance(value, bytes)
    return value.decode()


__all__ = ["ApplyError", "Applier", "Batch", "RowsNotMatched", "SetOps", "Sequential", "TableTarget"]
