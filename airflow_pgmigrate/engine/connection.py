"""How the engine reaches a PostgreSQL server: connection settings (with TLS) and connecting with psycopg 3.

The password never appears in ``repr``, ``describe()`` or any error this module raises.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import psycopg

from airflow_pgmigrate.exceptions import PgMigrateError

#: Settings pinned on every session so that text values (and decoded changes) look the same on both sides, and
#: string literals mean what the SQL parser on our side (row filters, definitions) read: standard strings.
SESSION_OPTIONS = ("-c DateStyle=ISO -c IntervalStyle=postgres -c extra_float_digits=3 -c TimeZone=UTC "
                   "-c bytea_output=hex -c standard_conforming_strings=on")
TLS_KEYS = ("sslmode", "sslrootcert", "sslcert", "sslkey", "sslpassword", "sslcrl", "sslcompression")


@dataclass(frozen=True)
class ConnectionInfo:
    """Everything needed to open a session on one server. Built from an Airflow connection by the hooks layer."""

    host: str
    port: int = 5432
    dbname: str = "postgres"
    user: str = "postgres"
    password: str | None = field(default=None, repr=False)
    #: TLS and other libpq parameters (sslmode, sslrootcert, sslcert, sslkey, connect_timeout, ...).
    params: dict[str, str] = field(default_factory=dict)
    application_name: str = "airflow-pgmigrate"

    def describe(self) -> str:
        """A printable identity without secrets: ``user@host:port/dbname``."""
        tls = f" sslmode={self.params['sslmode']}" if "sslmode" in self.params else ""
        return f"{self.user}@{self.host}:{self.port}/{self.dbname}{tls}"

    def with_database(self, dbname: str) -> ConnectionInfo:
        return replace(self, dbname=dbname)

    def connect_kwargs(self, *, replication: bool = False) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "dbname": self.dbname,
            "user": self.user,
            "application_name": self.application_name,
            "connect_timeout": int(self.params.get("connect_timeout", 10)),
        }
        if self.password is not None:
            kwargs["password"] = self.password
        for key, value in self.params.items():
            if key not in ("connect_timeout", "options"):
                kwargs[key] = value
        options = " ".join(x for x in (SESSION_OPTIONS, self.params.get("options", "")) if x)
        kwargs["options"] = options
        if replication:
            kwargs["replication"] = "database"
        return kwargs


class ConnectFailed(PgMigrateError):
    """A server could not be reached or refused the login. The message holds no secret."""


def connect(info: ConnectionInfo, *, autocommit: bool = True, replication: bool = False) -> psycopg.Connection:
    """Open a psycopg connection; turn failures into a message that names the server, never the password."""
    try:
        conn = psycopg.connect(**info.connect_kwargs(replication=replication), autocommit=autocommit)
    except psycopg.OperationalError as exc:
        message = str(exc).strip()
        if info.password:
            message = message.replace(info.password, "***")
        raise ConnectFailed(f"cannot connect to {info.describe()}: {message}") from None
    if replication:
        # The replication protocol speaks only simple queries; auto-prepare would break on the 6th execution.
        conn.prepare_threshold = None
    return conn


__all__ = ["ConnectFailed", "ConnectionInfo", "SESSION_OPTIONS", "connect"]
