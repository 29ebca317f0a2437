"""Fault-test helpers: a migration step in a child process that is SIGKILLed when a condition is seen on a server,
obstacles that hold a step at a chosen point, and equality checks between source and destination."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import psycopg

from airflow_pgmigrate.testing.local_postgres import LocalPostgres

CHILD = """
import json, sys
from airflow_pgmigrate.config import MigrationConfig
from airflow_pgmigrate.engine.connection import ConnectionInfo
args = json.loads(sys.argv[1])
config = MigrationConfig.from_dict(args["config"])
source, destination = ConnectionInfo(**args["source"]), ConnectionInfo(**args["destination"])
log = lambda message: print(message, flush=True)
step = args["step"]
if step in ("pre_data", "post_data"):
    from airflow_pgmigrate.engine.schema import migrate_schema
    from airflow_pgmigrate.engine.state import MigrationState
    state = MigrationState(destination, config.state_schema, config.name)
    result = migrate_schema(config, source, destination, step, state=state, log=log).to_dict()
elif step == "full_load":
    from airflow_pgmigrate.engine.full_load import run_full_load
    result = run_full_load(config, source, destination, log=log)
    result.pop("plan", None)
elif step == "incremental":
    from airflow_pgmigrate.engine.incremental import run_incremental
    result = run_incremental(config, source, destination, window_seconds=60, log=log).to_dict()
elif step == "cutover":
    from airflow_pgmigrate.engine.cutover import run_cutover
    result = run_cutover(config, source, destination, log=log)
print("RESULT " + json.dumps(result, default=str), flush=True)
"""


class Child:
    """One migration step run by a child Python process (an Airflow worker as far as the servers can tell)."""

    def __init__(self, env: Any, step: str, config: dict[str, Any]) -> None:
        args = {"step": step, "config": config, "source": asdict(env.source_info()),
                "destination": asdict(env.destination_info())}
        self.proc = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(args)], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines[-30:])

    def kill_when(self, condition: Callable[[], bool], timeout: float = 60.0) -> None:
        """SIGKILL the child as soon as ``condition()`` holds; fail if it ends first or the condition never holds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._reader.join(5)
                raise AssertionError(f"the child ended (code {self.proc.returncode}) before the fault point:\n"
                                     f"{self.output}")
            if condition():
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(30)
                self._reader.join(5)
                assert self.proc.returncode == -signal.SIGKILL
                return
            time.sleep(0.01)
        self.proc.kill()
        self.proc.wait()
        raise AssertionError(f"the fault point was never reached:\n{self.output}")

    def wait(self, timeout: float = 120.0) -> dict[str, Any]:
        """Wait for the child to finish; return its result (assert it succeeded)."""
        self.proc.wait(timeout)
        self._reader.join(5)
        assert self.proc.returncode == 0, self.output
        line = next(x for x in self.lines if x.startswith("RESULT "))
        return json.loads(line[7:])


def rows(server: LocalPostgres, sql: str, params: Any = None, dbname: str = "postgres") -> list[tuple[Any, ...]]:
    return server.execute(sql, dbname, params)


def sessions(server: LocalPostgres, dbname: str, where: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Our sessions (application_name airflow-pgmigrate) on ``dbname`` that match ``where`` (pg_stat_activity)."""
    return server.execute(
        "SELECT pid, state, wait_event_type, query FROM pg_stat_activity WHERE datname = %s "
        f"AND application_name = 'airflow-pgmigrate' AND pid <> pg_backend_pid() AND ({where})",  # noqa: S608
        "postgres", (dbname, *params))


def terminate_sessions(server: LocalPostgres, dbname: str) -> None:
    """End our sessions on ``dbname``: after a kill, as if the worker had died before sending its last statement."""
    server.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s "
                   "AND application_name = 'airflow-pgmigrate'", "postgres", (dbname,))


def waiting_on_lock(server: LocalPostgres, dbname: str, query_like: str) -> Callable[[], bool]:
    """A condition: one of our sessions waits for a lock with a query matching ``query_like`` (ILIKE)."""
    return lambda: bool(sessions(server, dbname, "wait_event_type = 'Lock' AND query ILIKE %s", (query_like,)))


@contextlib.contextmanager
def holding(server: LocalPostgres, dbname: str, *statements: str,
            walsender: bool = False) -> Iterator[psycopg.Connection]:
    """An obstacle: a transaction that ran ``statements`` (taking locks, creating rows) and stays open until the block
    ends, then rolls back. ``walsender``: held by a replication connection, which a cutover's freeze (it ends client
    backends) leaves alone."""
    conn = psycopg.connect(**server.info(dbname).connect_kwargs(replication=walsender), autocommit=walsender)
    if walsender:
        conn.prepare_threshold = None
        conn.execute("BEGIN")
    try:
        for statement in statements:
            conn.execute(statement)
        yield conn
    finally:
        with contextlib.suppress(psycopg.Error):
            conn.execute("ROLLBACK") if walsender else conn.rollback()
        conn.close()


def digests(run: Callable[[str], list[tuple[Any, ...]]], schema: str = "public") -> dict[str, tuple[int, str]]:
    """Row count and md5 of every table of ``schema``, through ``run`` (``env.src`` or ``env.dst``)."""
    tables = [r[0] for r in run(f"SELECT quote_ident(relname) FROM pg_class WHERE relkind IN ('r', 'p') "  # noqa: S608
                                f"AND relnamespace = '{schema}'::regnamespace ORDER BY relname")]
    out = {}
    for table in tables:
        row = run(f"SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) "  # noqa: S608
                  f"FROM {schema}.{table} t")[0]
        out[table] = (int(row[0]), str(row[1]))
    return out


def assert_same_data(env: Any, schema: str = "public") -> dict[str, tuple[int, str]]:
    """Every table of ``schema`` has the same rows on both sides; returns the source's digests."""
    source, destination = digests(env.src, schema), digests(env.dst, schema)
    assert source and destination == source, {t: (source.get(t), destination.get(t))
                                              for t in set(source) | set(destination)
                                              if source.get(t) != destination.get(t)}
    return source


def promoted_copy(primary: LocalPostgres, base_dir: Path) -> LocalPostgres:
    """A failover target: a physical copy of ``primary`` (pg_basebackup, as a standby would be built) promoted to
    primary. It has the data and the catalog (publications included) but no replication slot: slots are not copied."""
    copy = LocalPostgres(base_dir, major=primary.major, settings=primary.settings, password=primary.password)
    copy.base_dir.mkdir(parents=True, exist_ok=True)
    copy._chown(copy.base_dir)
    done = copy._run([str(copy.bindir / "pg_basebackup"), "-D", str(copy.data_dir), "-h", str(primary.base_dir),
                      "-p", str(primary.port), "-U", "postgres", "-X", "stream", "-R", "--checkpoint=fast",
                      "--no-sync"])
    assert done.returncode == 0, done.stderr
    copy.start()
    promoted = copy._run([str(copy.bindir / "pg_ctl"), "-D", str(copy.data_dir), "-w", "promote"])
    assert promoted.returncode == 0, promoted.stderr
    return copy


@contextlib.contextmanager
def tiny_tablespace(server: LocalPostgres, name: str, size: str = "1m") -> Iterator[str]:
    """A tablespace on a tmpfs of ``size``: a destination disk that fills up. Needs root (mount); skips otherwise."""
    import pytest

    if os.geteuid() != 0 or server._user is None:
        pytest.skip("a full disk is simulated with a tmpfs mount, which needs root")
    path = Path(tempfile.mkdtemp(prefix="pgmigrate-tiny-"))
    path.chmod(0o755)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        path.rmdir()
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        os.chown(path, server._user.pw_uid, server._user.pw_gid)
        server.execute(f"CREATE TABLESPACE {name} LOCATION '{path}'")
        yield name
    finally:
        with contextlib.suppress(psycopg.Error):
            server.execute(f"DROP TABLESPACE IF EXISTS {name}")
        subprocess.run(["umount", "-l", str(path)], capture_output=True)
        with contextlib.suppress(OSError):
            path.rmdir()


def applied_lsn(env: Any, name: str, state_schema: str = "pgmigrate") -> str | None:
    found = env.dst(f"SELECT applied_lsn::text FROM {state_schema}.apply_progress WHERE migration = %s",  # noqa: S608
                    (name,))
    return found[0][0] if found else None


__all__ = ["CHILD", "Child", "applied_lsn", "assert_same_data", "digests", "holding", "promoted_copy", "rows", "sessions",
           "terminate_sessions", "tiny_tablespace", "waiting_on_lock"]
