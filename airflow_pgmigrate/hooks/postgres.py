"""Reading a migration endpoint from an Airflow connection of type postgres (credentials and TLS included)."""

from __future__ import annotations

from functools import cached_property
from typing import Any

from airflow.sdk import BaseHook

from airflow_pgmigrate.engine.connection import SECRET_PARAMS, TLS_KEYS, ConnectionInfo
from airflow_pgmigrate.exceptions import ConnectionConfigError

POSTGRES_CONN_TYPES = ("postgres", "postgresql")
#: Connection extras passed to libpq besides TLS.
PASSTHROUGH_EXTRAS = (*TLS_KEYS, "connect_timeout", "options", "target_session_attrs", "keepalives",
                      "keepalives_idle", "keepalives_interval", "keepalives_count", "gssencmode", "passfile")


def _mask(*secrets: str | None) -> None:
    """Register secrets with Airflow's log masker (it masks the password, but not a value inside the extras)."""
    from airflow.sdk.log import mask_secret

    for secret in secrets:
        if secret:
            mask_secret(secret)


class PostgresEndpointHook(BaseHook):
    """One side of a migration, named by an Airflow connection id; gives the engine a ConnectionInfo.

    :param postgres_conn_id: an Airflow connection of type postgres.
    :param database: a database to use instead of the connection's own.
    """

    conn_name_attr = "postgres_conn_id"
    default_conn_name = "postgres_default"
    conn_type = "postgres"
    hook_name = "PostgreSQL migration endpoint"

    def __init__(self, postgres_conn_id: str = default_conn_name, database: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.postgres_conn_id = postgres_conn_id
        self.database = database

    @cached_property
    def connection_info(self) -> ConnectionInfo:
        conn = self.get_connection(self.postgres_conn_id)
        if conn.conn_type not in POSTGRES_CONN_TYPES:
            raise ConnectionConfigError(
                f"connection {self.postgres_conn_id!r} has type {conn.conn_type!r}; a migration endpoint needs a "
                f"connection of type postgres")
        if not conn.host:
            raise ConnectionConfigError(f"connection {self.postgres_conn_id!r} has no host")
        extra = conn.extra_dejson or {}
        database = self.database or extra.get("database") or conn.schema
        if not database:
            raise ConnectionConfigError(
                f"connection {self.postgres_conn_id!r} names no database: set its 'schema' (database) field, or "
                f"'database' in the migration config")
        params = {k: str(extra[k]) for k in PASSTHROUGH_EXTRAS if extra.get(k) not in (None, "")}
        _mask(conn.password, *(params.get(k) for k in SECRET_PARAMS))
        return ConnectionInfo(host=conn.host, port=int(conn.port or 5432), dbname=database,
                              user=conn.login or "postgres", password=conn.password or None, params=params)


__all__ = ["PostgresEndpointHook"]
