"""The migration's durable state, kept in the destination in a schema of the product's own.

One row per (migration, key) holding a JSON value. Later steps (full load, incremental sync, cutover) read what
earlier ones recorded, across task retries and worker restarts.
"""

from __future__ import annotations

from typing import Any

from psycopg import sql
from psycopg.types.json import Jsonb

from airflow_pgmigrate.engine.connection import ConnectionInfo, connect


class MigrationState:
    """Key-value state of one migration in ``<schema>.migration_state`` on the destination."""

    def __init__(self, destination: ConnectionInfo, schema: str, migration: str) -> None:
        self.destination = destination
        self.schema = schema
        self.migration = migration
        self._table = sql.Identifier(schema, "migration_state")

    @property
    def chunks_table(self) -> sql.Identifier:
        """One row per full-load chunk committed, written in the same transaction as the chunk's rows."""
        return sql.Identifier(self.schema, "full_load_chunks")

    @property
    def index_builds_table(self) -> sql.Identifier:
        """One row per index or key the full load built, written in the same transaction as the build."""
        return sql.Identifier(self.schema, "full_load_index_builds")

    def built_by_full_load(self, conn: Any) -> dict[str, float]:
        """The post-data entries (as the schema phase names them) the full load built -> seconds; {} before any."""
        exists = conn.execute("SELECT to_regclass(%s)", (self.index_builds_table.as_string(conn),)).fetchone()
        if not exists or exists[0] is None:
            return {}
        rows = conn.execute(sql.SQL("SELECT build_id, seconds FROM {} WHERE migration = %s").format(
            self.index_builds_table), (self.migration,)).fetchall()
        return {str(r[0]): float(r[1]) for r in rows}

    def ensure(self, conn: Any) -> None:
        """Create the state schema and tables if missing."""
        self._ensure(conn)

    def _ensure(self, conn: Any) -> None:
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self.schema)))
        conn.execute(sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} (migration text NOT NULL, key text NOT NULL, value jsonb NOT NULL, "
            "updated_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (migration, key))").format(self._table))
        conn.execute(sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} (migration text NOT NULL, chunk_id text NOT NULL, table_name text NOT "
            "NULL, rows bigint NOT NULL, bytes bigint NOT NULL, seconds double precision NOT NULL, skipped_rows "
            "bigint NOT NULL DEFAULT 0, done_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (migration, "
            "chunk_id))").format(self.chunks_table))
        conn.execute(sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} (migration text NOT NULL, build_id text NOT NULL, table_name text NOT "
            "NULL, seconds double precision NOT NULL, parallel_workers int NOT NULL DEFAULT 0, done_at timestamptz "
            "NOT NULL DEFAULT now(), PRIMARY KEY (migration, build_id))").format(self.index_builds_table))

    def put(self, key: str, value: Any) -> None:
        with connect(self.destination) as conn:
            self.write(conn, key, value)

    def write(self, conn: Any, key: str, value: Any) -> None:
        """Record a key through an open destination connection: inside the caller's transaction, the record
        commits (or not) with the work it describes."""
        self._ensure(conn)
        conn.execute(sql.SQL(
            "INSERT INTO {} (migration, key, value) VALUES (%s, %s, %s) "
            "ON CONFLICT (migration, key) DO UPDATE SET value = EXCLUDED.value, updated_at = now()"
        ).format(self._table), (self.migration, key, Jsonb(value)))

    def get(self, key: str, default: Any = None) -> Any:
        with connect(self.destination) as conn:
            return self.read(conn, key, default)

    def read(self, conn: Any, key: str, default: Any = None) -> Any:
        """Read a key through an open destination connection (no table yet: the default)."""
        exists = conn.execute("SELECT to_regclass(%s)", (sql.Identifier(self.schema, "migration_state")
                                                          .as_string(conn),)).fetchone()
        if not exists or exists[0] is None:
            return default
        row = conn.execute(sql.SQL("SELECT value FROM {} WHERE migration = %s AND key = %s").format(self._table),
                           (self.migration, key)).fetchone()
        return default if row is None else row[0]


__all__ = ["MigrationState"]
