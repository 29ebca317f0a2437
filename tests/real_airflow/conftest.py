"""One real Airflow deployment for the module's tests, with a source and a destination database per migration."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from airflow_pgmigrate.testing.airflow_deployment import Deployment
from tests.integration.test_cutover_dag import Writes  # noqa: F401 - the write load the tests share

DAGS = Path(__file__).parent / "dags"
MIGRATIONS = ("real_cut", "real_abort", "real_ui")
SHOP = """
CREATE TABLE public.customers (id bigserial PRIMARY KEY, name text NOT NULL);
CREATE TABLE public.orders (id bigserial PRIMARY KEY, customer_id bigint REFERENCES public.customers (id),
                            amount numeric NOT NULL, note text);
INSERT INTO public.customers (name) SELECT 'c' || g FROM generate_series(1, 200) g;
INSERT INTO public.orders (customer_id, amount) SELECT 1 + g % 200, g FROM generate_series(1, 3000) g;
"""
#: Where the tests keep what a person would look at (screenshots, component logs): kept after the run.
ARTIFACTS = Path(os.environ.get("PGMIGRATE_TEST_ARTIFACTS", Path(tempfile.gettempdir()) / "pgmigrate-artifacts"))


@dataclass
class Migration:
    name: str
    servers: object
    source_db: str
    destination_db: str

    @property
    def dag_id(self) -> str:
        return f"pgmigrate_{self.name}"

    def src(self, sql: str, params: object = None) -> list[tuple]:
        return self.servers.source.execute(sql, self.source_db, params)  # type: ignore[attr-defined]

    def dst(self, sql: str, params: object = None) -> list[tuple]:
        return self.servers.destination.execute(sql, self.destination_db, params)  # type: ignore[attr-defined]

    def source_info(self):  # noqa: ANN201
        return self.servers.source.info(self.source_db)  # type: ignore[attr-defined]


@pytest.fixture(scope="package")
def migrations(pg_servers) -> Iterator[dict[str, Migration]]:
    made = {}
    for name in MIGRATIONS:
        m = Migration(name, pg_servers, f"src_{name}_{os.getpid()}", f"dst_{name}_{os.getpid()}")
        pg_servers.source.create_database(m.source_db)
        pg_servers.destination.create_database(m.destination_db)
        m.src(SHOP)
        made[name] = m
    try:
        yield made
    finally:
        for m in made.values():
            pg_servers.source.execute(f'ALTER DATABASE "{m.source_db}" RESET default_transaction_read_only')
            pg_servers.source.execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = %s",
                params=(m.source_db,))
            pg_servers.source.drop_database(m.source_db)
            pg_servers.destination.drop_database(m.destination_db)


@pytest.fixture(scope="package")
def airflow(migrations: dict[str, Migration]) -> Iterator[Deployment]:
    home = Path(tempfile.mkdtemp(prefix="pgmigrate-real-airflow-"))
    env = {"PGMIGRATE_REAL_MIGRATIONS": ",".join(migrations)}
    for m in migrations.values():
        env[f"AIRFLOW_CONN_{m.name.upper()}_SRC"] = m.servers.source.uri(m.source_db)  # type: ignore[attr-defined]
        env[f"AIRFLOW_CONN_{m.name.upper()}_DST"] = m.servers.destination.uri(  # type: ignore[attr-defined]
            m.destination_db)
    deployment = Deployment(home, DAGS, env_extra=env)
    try:
        deployment.start()
        for m in migrations.values():
            deployment.wait_for_dag(m.dag_id)
        yield deployment
    finally:
        deployment.stop()
        left = deployment.leftovers()
        logs = ARTIFACTS / "real-airflow-logs"
        logs.mkdir(parents=True, exist_ok=True)
        for log in home.glob("*.log"):
            shutil.copy(log, logs / log.name)
        shutil.rmtree(home, ignore_errors=True)
    assert left == [], f"processes of the deployment still running after stop(): {left}"
