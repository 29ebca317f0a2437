"""The demo: a migration of a small shop database between two local PostgreSQL servers, driven through Airflow.

Starts a source (wal_level=logical) and a destination on free loopback ports, loads demo/sample.sql, writes a
migration config, and runs the migration DAG with Airflow's ``dag.test()`` on a throwaway metadata DB. Prints the
precheck report. ``--keep`` leaves the servers running and prints how to reach them.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / ".demo"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keep", action="store_true", help="leave the servers running at the end")
    parser.add_argument("--ui", action="store_true",
                        help="run Airflow with its UI (airflow standalone) instead: trigger the DAG and answer the "
                             "cutover question in the browser; Ctrl-C stops everything")
    args = parser.parse_args()

    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    WORK.chmod(0o755)
    airflow_home = WORK / "airflow"
    configs = WORK / "migrations"
    configs.mkdir(parents=True)
    os.environ.update({
        "AIRFLOW_HOME": str(airflow_home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "PGMIGRATE_CONFIG_FOLDER": str(configs),
    })

    from airflow_pgmigrate.testing.local_postgres import SOURCE_SETTINGS, LocalPostgres

    major = int(os.environ["PGMIGRATE_DEMO_PG"]) if os.environ.get("PGMIGRATE_DEMO_PG") else None
    print("demo: starting a source and a destination PostgreSQL server ...", flush=True)
    source = LocalPostgres(WORK / "source", major=major, settings=SOURCE_SETTINGS).start()
    destination = LocalPostgres(WORK / "destination", major=major).start()
    try:
        print(f"demo: source PostgreSQL {source.major} on port {source.port}, "
              f"destination PostgreSQL {destination.major} on port {destination.port}", flush=True)
        source.create_database("shop")
        destination.create_database("shop")
        started = time.monotonic()
        source.execute((ROOT / "demo" / "sample.sql").read_text(), "shop")
        rows = source.execute("SELECT (SELECT count(*) FROM public.orders) + (SELECT count(*) FROM public.order_items)"
                              " + (SELECT count(*) FROM public.customers)", "shop")[0][0]
        print(f"demo: loaded the sample shop database rows={rows} seconds={time.monotonic() - started:.1f}", flush=True)

        os.environ["AIRFLOW_CONN_DEMO_SOURCE"] = source.uri("shop")
        os.environ["AIRFLOW_CONN_DEMO_DESTINATION"] = destination.uri("shop")
        (configs / "demo.yaml").write_text(
            "name: demo_shop\n"
            "source: {conn_id: demo_source}\n"
            "destination: {conn_id: demo_destination}\n"
            "migration_types: [schema, full, incremental]\n"
            "objects: {schemas: [public, reporting]}\n"
            f"cutover: {{approval: {'manual' if args.ui else 'automatic'}, freeze_source: true}}\n"
            f"alerts: {{notifiers: [{{notifier: file, kwargs: {{path: {WORK / 'alerts.jsonl'}}}}}]}}\n"
            f"report: {{directory: {WORK / 'reports'}}}\n"
        )
        if args.ui:
            return run_ui(source)
        print("demo: preparing Airflow's metadata database ...", flush=True)
        subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True, capture_output=True)
        writer = WriteLoad(source.info("shop"))  # runs during the whole migration, full load included
        writer.start()
        try:
            code = run_dag()
        finally:
            writer.stop()
        print(f"demo: the write load committed {writer.transactions} transactions on the source during the run")
        return code or verify(configs / "demo.yaml", source, destination)
    finally:
        if args.keep:
            print(f"demo: servers left running: {source.uri('shop')} and {destination.uri('shop')}")
        else:
            source.stop()
            destination.stop()


class WriteLoad(threading.Thread):
    """Orders placed, paid and cancelled on the source while the migration runs."""

    def __init__(self, info) -> None:  # noqa: ANN001 - a ConnectionInfo
        super().__init__(daemon=True)
        self.info = info
        self.transactions = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        import random

        import psycopg

        rnd = random.Random(7)
        with psycopg.connect(**self.info.connect_kwargs(), autocommit=True) as conn:
            while not self._stop_event.is_set():
                try:
                    self._one(conn, rnd)
                except psycopg.Error:
                    return  # the cutover froze the source and ended this session: writes stopped
                self.transactions += 1
                time.sleep(0.01)

    @staticmethod
    def _one(conn, rnd) -> None:  # noqa: ANN001
        with conn.transaction():
            order = conn.execute("INSERT INTO public.orders (customer_id) VALUES (%s) RETURNING id",
                                 (rnd.randint(1, 2000),)).fetchone()[0]
            conn.execute("INSERT INTO public.order_items VALUES (%s, %s, %s)",
                         (order, f"SKU-{rnd.randint(1, 500)}", rnd.randint(1, 5)))
            conn.execute("UPDATE public.orders SET status = 'paid' WHERE id = %s", (rnd.randint(1, order),))
            conn.execute("UPDATE public.products SET price = price + 0.01 WHERE sku = %s",
                         (f"SKU-{rnd.randint(1, 500)}",))

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def verify(config_path: Path, source, destination) -> int:  # noqa: ANN001 - LocalPostgres servers
    """Catch up the last changes, then compare every table's rows on both sides."""
    from airflow_pgmigrate.config import MigrationConfig
    from airflow_pgmigrate.engine.incremental import run_incremental

    config = MigrationConfig.from_yaml(config_path)
    slot = source.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", "shop", (config.slot_name,))
    if slot:  # no cutover happened: catch up first
        for _ in range(10):
            result = run_incremental(config, source.info("shop"), destination.info("shop"), window_seconds=30)
            if result.caught_up:
                break
        print(f"demo: incremental sync caught up applied_lsn={result.applied_lsn} lag_bytes={result.lag_bytes}")
    tables = [r[0] for r in source.execute(
        "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables WHERE schemaname IN ('public', 'reporting') "
        "ORDER BY 1", "shop")]
    different = []
    for table in tables:
        query = f"SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) FROM {table} t"
        here, there = source.execute(query, "shop")[0], destination.execute(query, "shop")[0]
        print(f"demo: verify table={table} rows={here[0]} source_md5={here[1][:12]} destination_md5={there[1][:12]} "
              f"{'equal' if here == there else 'DIFFERENT'}")
        if here != there:
            different.append(table)
    if different:
        print(f"demo: verification FAILED for {', '.join(different)}")
        return 1
    print(f"demo: verified: all {len(tables)} tables are equal on both sides")
    return 0


def run_ui(source) -> int:  # noqa: ANN001 - a LocalPostgres server
    """Airflow with its UI on http://localhost:8080; a write load runs until Ctrl-C."""
    os.environ["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS"] = "True"
    os.environ["AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION"] = "False"
    # airflow standalone starts its components as `airflow ...` commands: the virtualenv's bin must be on PATH.
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    writer = WriteLoad(source.info("shop"))
    writer.start()
    print("demo: starting Airflow (airflow standalone) on http://localhost:8080 ...\n"
          "demo: trigger pgmigrate_demo_shop, watch the lag in the incremental_sync log, then answer the cutover "
          "question under Browse > Required actions. Ctrl-C stops Airflow and the servers.", flush=True)
    try:
        subprocess.run([sys.executable, "-m", "airflow", "standalone"], check=False)
    except KeyboardInterrupt:
        pass
    finally:
        writer.stop()
    return 0


def run_dag() -> int:
    import logging

    from airflow.dag_processing.dagbag import DagBag
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    from airflow_pgmigrate.engine.results import PrecheckReport

    logging.getLogger("airflow").setLevel(logging.WARNING)
    bag = DagBag(dag_folder=str(ROOT / "dags"))
    if bag.import_errors:
        print(f"demo: DAG import errors: {bag.import_errors}")
        return 1
    dag = bag.dags["pgmigrate_demo_shop"]
    print(f"demo: running DAG {dag.dag_id} with tasks {', '.join(t.task_id for t in dag.tasks)} ...", flush=True)
    dag_run = dag.test()

    def xcom(task_id: str) -> dict | None:
        with create_session() as session:
            row = session.scalars(XComModel.get_many(run_id=dag_run.run_id, dag_ids=dag.dag_id, task_ids=task_id,
                                                     key="return_value")).first()
            return None if row is None else XComModel.deserialize_value(row)

    print()
    report = xcom("precheck")
    if report is not None:
        print(PrecheckReport.from_dict(report).format_table())
        print()
    load = xcom("full_load")
    if load is not None:
        print(f"full_load: {load['rows']} rows, {load['bytes'] / 1048576:.1f} MB in {load['seconds']} s "
              f"({load['mb_per_second']} MB/s), {len(load['tables'])} tables, consistent LSN "
              f"{load['consistent_lsn']}, slot {load['slot']}")
    cut = xcom("cutover")
    if cut is not None:
        print(f"cutover: {cut['status']} in {cut['seconds']} s, downtime {cut['downtime_seconds']} s, freeze LSN "
              f"{cut['freeze_lsn']}, applied LSN {cut['applied_lsn']}, {len(cut['sequences'])} sequences set, "
              f"{cut['rows_verified']} rows verified, equal={cut['verification']['equal']}")
        for step in cut["steps"]:
            print(f"  step {step['step']}: {step['seconds']} s")
        for line in cut["next_steps"]:
            print(f"  next: {line}")
    for phase in ("schema_pre_data", "schema_post_data"):
        schema = xcom(phase)
        if schema is not None:
            created = ", ".join(f"{kind}={count}" for kind, count in schema["created"].items())
            print(f"{phase}: created {schema['created_total']} object(s) in {schema['seconds']} s ({created}); "
                  f"skipped={len(schema['skipped'])} differing={len(schema['differing'])} "
                  f"review={len(schema['review'])} refreshed={len(schema['refreshed'])}")
    alerts = WORK / "alerts.jsonl"
    print(f"demo: alerts sent: {len(alerts.read_text().splitlines()) if alerts.exists() else 0} ({alerts})")
    print(f"demo: migration report: {WORK / 'reports' / 'demo_shop.html'} (also the tasks' Migration report link)")
    print()
    print(f"demo: DAG run {dag_run.run_id} ended {dag_run.state}")
    return 0 if dag_run.state == "success" else 1


if __name__ == "__main__":
    sys.exit(main())
