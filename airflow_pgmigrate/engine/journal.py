"""The migration's journal: step events and progress samples, kept durably in the destination's state schema.

``<state_schema>.events``: one row per step (a task try, a sensor poke, a cutover phase) with its start, end and
outcome. ``<state_schema>.progress_samples``: lag, throughput and retained WAL over time. Both are created on first
use (idempotently) and written at clear points by the operators and the sensor; the report (engine/report.py) reads
them. Every method takes an open destination connection (autocommit), so a caller batches its writes on one.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

#: Outcome of an event still running (or whose task was killed before it could record its end).
RUNNING = "running"
#: Outcomes of a sensor poke, from the best to the worst (a merged mark shows the worst of its pokes).
POKE_OUTCOMES = ("not_delayed", "delayed", "unreachable", "failed", "stopped")


class Journal:
    """Events and samples of one migration in ``<schema>.events`` and ``<schema>.progress_samples``."""

    def __init__(self, schema: str, migration: str) -> None:
        self.schema = schema
        self.migration = migration
        self.events_table = sql.Identifier(schema, "events")
        self.samples_table = sql.Identifier(schema, "progress_samples")
        self._ensured = False

    def ensure(self, conn: psycopg.Connection) -> None:
        """Create the schema and both tables if missing (once per instance; concurrent creators are fine)."""
        if self._ensured:
            return
        statements = [
            sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self.schema)),
            sql.SQL("CREATE TABLE IF NOT EXISTS {} (id bigserial PRIMARY KEY, migration text NOT NULL, run_id text, "
                    "step text NOT NULL, kind text NOT NULL, started_at timestamptz NOT NULL DEFAULT now(), "
                    "finished_at timestamptz, outcome text NOT NULL, detail jsonb NOT NULL DEFAULT '{{}}')"
                    ).format(self.events_table),
            sql.SQL("CREATE TABLE IF NOT EXISTS {} (id bigserial PRIMARY KEY, migration text NOT NULL, "
                    "at timestamptz NOT NULL DEFAULT now(), kind text NOT NULL, lag_bytes bigint, "
                    "lag_seconds double precision, changes_per_second double precision, "
                    "bytes_per_second double precision, retained_wal_bytes bigint, "
                    "detail jsonb NOT NULL DEFAULT '{{}}')").format(self.samples_table),
        ]
        statements += [
            sql.SQL("CREATE INDEX IF NOT EXISTS events_by_migration ON {} (migration, kind, started_at)").format(
                self.events_table),
            sql.SQL("CREATE INDEX IF NOT EXISTS progress_samples_by_migration ON {} (migration, at)").format(
                self.samples_table),
        ]
        for statement in statements:
            try:
                conn.execute(statement)
            except (psycopg.errors.UniqueViolation, psycopg.errors.DuplicateObject, psycopg.errors.DuplicateTable):
                pass  # another task created it at the same instant
        self._ensured = True

    # -- writing ------------------------------------------------------------------------------------------------

    def start_step(self, conn: psycopg.Connection, *, run_id: str | None, step: str, kind: str = "task",
                   detail: dict[str, Any] | None = None) -> None:
        """Record that a step started; :meth:`finish_step` closes it."""
        self.ensure(conn)
        conn.execute(sql.SQL("INSERT INTO {} (migration, run_id, step, kind, outcome, detail) "
                             "VALUES (%s, %s, %s, %s, %s, %s)").format(self.events_table),
                     (self.migration, run_id, step, kind, RUNNING, Jsonb(detail or {})))

    def finish_step(self, conn: psycopg.Connection, *, run_id: str | None, step: str, outcome: str,
                    detail: dict[str, Any] | None = None, kind: str = "task") -> None:
        """Close the latest running event of the step with its outcome (or record a point event if none runs)."""
        self.ensure(conn)
        row = conn.execute(sql.SQL(
            "UPDATE {t} SET finished_at = now(), outcome = %s, detail = detail || %s WHERE id = (SELECT id FROM {t} "
            "WHERE migration = %s AND run_id IS NOT DISTINCT FROM %s AND step = %s AND kind = %s AND outcome = %s "
            "ORDER BY id DESC LIMIT 1) RETURNING id").format(t=self.events_table),
            (outcome, Jsonb(detail or {}), self.migration, run_id, step, kind, RUNNING)).fetchone()
        if row is None:
            conn.execute(sql.SQL("INSERT INTO {} (migration, run_id, step, kind, finished_at, outcome, detail) "
                                 "VALUES (%s, %s, %s, %s, now(), %s, %s)").format(self.events_table),
                         (self.migration, run_id, step, kind, outcome, Jsonb(detail or {})))

    def add_event(self, conn: psycopg.Connection, *, run_id: str | None, step: str, kind: str, started_at: datetime,
                  finished_at: datetime | None, outcome: str, detail: dict[str, Any] | None = None) -> None:
        """Record a whole event at once (a sensor poke, a cutover phase)."""
        self.ensure(conn)
        conn.execute(sql.SQL("INSERT INTO {} (migration, run_id, step, kind, started_at, finished_at, outcome, "
                             "detail) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)").format(self.events_table),
                     (self.migration, run_id, step, kind, started_at, finished_at, outcome, Jsonb(detail or {})))

    def add_sample(self, conn: psycopg.Connection, *, kind: str, lag_bytes: int | None = None,
                   lag_seconds: float | None = None, changes_per_second: float | None = None,
                   bytes_per_second: float | None = None, retained_wal_bytes: int | None = None,
                   detail: dict[str, Any] | None = None) -> None:
        """Record one progress sample (now)."""
        self.ensure(conn)
        conn.execute(sql.SQL("INSERT INTO {} (migration, kind, lag_bytes, lag_seconds, changes_per_second, "
                             "bytes_per_second, retained_wal_bytes, detail) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
                             ).format(self.samples_table),
                     (self.migration, kind, lag_bytes, lag_seconds, changes_per_second, bytes_per_second,
                      retained_wal_bytes, Jsonb(detail or {})))

    # -- reading ------------------------------------------------------------------------------------------------

    def _exists(self, conn: psycopg.Connection, table: sql.Identifier) -> bool:
        row = conn.execute("SELECT to_regclass(%s)", (table.as_string(conn),)).fetchone()
        return row is not None and row[0] is not None

    @staticmethod
    def _dicts(cur: psycopg.Cursor[Any]) -> list[dict[str, Any]]:
        names = [c.name for c in cur.description or []]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def events(self, conn: psycopg.Connection) -> list[dict[str, Any]]:
        """Every event of the migration but the sensor pokes (see :meth:`poke_marks`), oldest first."""
        if not self._exists(conn, self.events_table):
            return []
        return self._dicts(conn.execute(sql.SQL(
            "SELECT run_id, step, kind, started_at, finished_at, outcome, detail FROM {} WHERE migration = %s "
            "AND kind <> 'poke' ORDER BY started_at, id").format(self.events_table), (self.migration,)))

    def poke_marks(self, conn: psycopg.Connection, max_marks: int = 400) -> list[dict[str, Any]]:
        """The pokes of each sensor task (run and step), oldest first; beyond ``max_marks`` per task, consecutive
        pokes merge into one mark with their count, transactions and worst outcome (a week of pokes stays small)."""
        if not self._exists(conn, self.events_table):
            return []
        rows = self._dicts(conn.execute(sql.SQL(
            "WITH p AS (SELECT id, run_id, step, started_at, coalesce(finished_at, started_at) AS finished_at, "
            "       coalesce((detail ->> 'transactions')::bigint, 0) AS transactions, "
            "       coalesce(array_position(%(o)s::text[], outcome), 1) - 1 AS rank "
            "     FROM {t} WHERE migration = %(m)s AND kind = 'poke'), "
            "b AS (SELECT run_id, step, count(*) AS n, extract(epoch FROM min(started_at)) AS lo, "
            "      extract(epoch FROM max(started_at)) AS hi FROM p GROUP BY run_id, step) "
            "SELECT p.run_id, p.step, min(p.started_at) AS started_at, max(p.finished_at) AS finished_at, "
            "       count(*) AS pokes, sum(p.transactions)::bigint AS transactions, max(p.rank) AS rank "
            "FROM p JOIN b ON b.run_id IS NOT DISTINCT FROM p.run_id AND b.step = p.step "
            "GROUP BY p.run_id, p.step, CASE WHEN b.n <= %(k)s THEN p.id ELSE width_bucket(extract(epoch FROM "
            "         p.started_at), b.lo, b.hi + 0.001, %(k)s) END "
            "ORDER BY 3").format(t=self.events_table), {"m": self.migration, "k": max_marks, "o": list(POKE_OUTCOMES)}))
        for row in rows:
            row["outcome"] = POKE_OUTCOMES[row.pop("rank")]
        return rows

    def last_pokes(self, conn: psycopg.Connection, limit: int = 200) -> list[dict[str, Any]]:
        """The latest ``limit`` pokes of the migration, oldest first."""
        if not self._exists(conn, self.events_table):
            return []
        rows = self._dicts(conn.execute(sql.SQL(
            "SELECT run_id, step, kind, started_at, finished_at, outcome, detail FROM {} WHERE migration = %s "
            "AND kind = 'poke' ORDER BY started_at DESC, id DESC LIMIT %s").format(self.events_table),
            (self.migration, limit)))
        return rows[::-1]

    def samples(self, conn: psycopg.Connection, max_points: int = 600) -> list[dict[str, Any]]:
        """The samples, oldest first; more than ``max_points`` per kind are merged into time buckets (the largest
        lag and retained WAL of a bucket, its mean throughput), so peaks survive."""
        if not self._exists(conn, self.samples_table):
            return []
        cur = conn.execute(sql.SQL(
            "WITH s AS (SELECT * FROM {t} WHERE migration = %(m)s), "
            "b AS (SELECT kind, count(*) AS n, extract(epoch FROM min(at)) AS lo, extract(epoch FROM max(at)) AS hi "
            "      FROM s GROUP BY kind) "
            "SELECT s.kind, max(s.at) AS at, max(s.lag_bytes) AS lag_bytes, max(s.lag_seconds) AS lag_seconds, "
            "       avg(s.changes_per_second) AS changes_per_second, avg(s.bytes_per_second) AS bytes_per_second, "
            "       max(s.retained_wal_bytes) AS retained_wal_bytes "
            "FROM s JOIN b USING (kind) "
            "GROUP BY s.kind, CASE WHEN b.n <= %(p)s THEN s.id ELSE width_bucket(extract(epoch FROM s.at), b.lo, "
            "         b.hi + 0.001, %(p)s) END "
            "ORDER BY 2").format(t=self.samples_table), {"m": self.migration, "p": max_points})
        names = [c.name for c in cur.description or []]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


__all__ = ["Journal", "POKE_OUTCOMES", "RUNNING"]
