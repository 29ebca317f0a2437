"""How the engine reaches a PostgreSQL server: connection settings (with TLS) and connecting with psycopg 3.

The password (and the TLS key's passphrase) never appears in ``repr``, ``describe()`` or any error this module
raises; a failed TLS handshake names the connection setting to fix.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import psycopg

from airflow_pgmigrate.engine.secrets import MASK, explain_failure, redact
from airflow_pgmigrate.exceptions import PgMigrateError

#: Settings pinned on every session so that text values (and decoded changes) look the same on both sides, and
#: string literals mean what the SQL parser on our side (row filters, definitions) read: standard strings.
SESSION_OPTIONS = ("-c DateStyle=ISO -c IntervalStyle=postgres -c extra_float_digits=3 -c TimeZone=UTC "
                   "-c bytea_output=hex -c standard_conforming_strings=on")
TLS_KEYS = ("sslmode", "sslrootcert", "sslcert", "sslkey", "sslpassword", "sslcrl", "sslcompression")
#: Parameters whose value is a secret: never shown.
SECRET_PARAMS = ("sslpassword",)


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

    def __repr__(self) -> str:
        params = {k: (MASK if k in SECRET_PARAMS else v) for k, v in self.params.items()}
        return redact(f"ConnectionInfo(host={self.host!r}, port={self.port}, dbname={self.dbname!r}, "
                      f"user={self.user!r}, password={MASK if self.password else None!r}, params={params!r})",
                      self.secrets)

    @property
    def secrets(self) -> tuple[str, ...]:
        """The values to redact from any text about this connection."""
        return tuple(v for v in (self.password, *(self.params.get(k) for k in SECRET_PARAMS)) if v)

    def describe(self) -> str:
        """A printable identity without secrets: ``user@host:port/dbname``."""
        tls = f" sslmode={self.params['sslmode']}" if "sslmode" in self.params else ""
        # Redacted too: a URI typed where a host or database name belongs must not come back with its password.
        return redact(f"{self.user}@{self.host}:{self.port}/{self.dbname}{tls}", self.secrets)

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
    except psycopg.Error as exc:
        message = explain_failure(str(exc), info.secrets, info.params)
        raise ConnectFailed(f"cannot connect to {info.describe()}: {message}") from None
    if replication:
        # The replication protocol speaks only simple queries; auto-prepare would break on the 6th execution.
        conn.prepare_threshold = None
    return conn


__all__ = ["ConnectFailed", "ConnectionInfo", "SECRET_PARAMS", "SESSION_OPTIONS", "TLS_KEYS", "connect"]
