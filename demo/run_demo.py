"""The demo: a migration of a small shop database between two local PostgreSQL servers, driven through Airflow.

Starts a source (wal_level=logical) and a destination on free loopback ports, loads demo/sample.sql, writes a
migration config, and runs the migration DAG with Airflow's ``dag.test()`` on a throwaway metadata DB, printing the
migration's own progress (Airflow's log goes to .demo/airflow.log), then the precheck report and the cutover report.
``--keep`` leaves the servers running and prints how to reach them; ``--keep-state`` keeps the migration's state
schema in the destination (by default it is dropped at the end; the HTML report stays in .demo/reports).

``--ui`` runs a real Airflow instead (scheduler, dag processor, triggerer, API server and UI on
http://localhost:8080): trigger the DAG and answer the cutover question in the browser. Ctrl-C stops every process it
started (Airflow's, in their own process groups, SIGKILL after a grace period) and the two servers.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = Path(os.environ.get("PGMIGRATE_DEMO_DIR") or ROOT / ".demo")  # where the servers, Airflow and reports go


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keep", action="store_true", help="leave the servers running at the end")
    parser.add_argument("--keep-state", action="store_true",
                        help="keep the migration's state schema in the destination at the end")
    parser.add_argument("--ui", action="store_true",
                        help="run a real Airflow with its UI instead: trigger the DAG and answer the cutover question "
                             "in the browser; Ctrl-C stops everything")
    parser.add_argument("--port", type=int, default=8080, help="the Airflow UI's port with --ui (default 8080)")
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
            "incremental: {ddl: replicate}\n"
            f"cutover: {{approval: {'manual' if args.ui else 'automatic'}, freeze_source: true}}\n"
            f"alerts: {{notifiers: [{{notifier: file, kwargs: {{path: {WORK / 'alerts.jsonl'}}}}}]}}\n"
            f"report: {{directory: {WORK / 'reports'}}}\n"
        )
        if args.ui:
            return run_ui(source, airflow_home, configs, args.port)
        print("demo: preparing Airflow's metadata database ...", flush=True)
        subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True, capture_output=True)
        # Runs during the whole migration, full load included; adds a column once the sync runs (replicated DDL).
        writer = WriteLoad(source.info("shop"), destination.info("shop"))
        writer.start()
        try:
            code = run_dag()
        finally:
            writer.stop()
        print(f"demo: the write load committed {writer.transactions} transactions on the source during the run")
        if writer.altered:
            print(f"demo: and ran this DDL on the source mid-migration, replicated by the sync: {writer.DDL}")
        code = code or verify(configs / "demo.yaml", source, destination)
        if not args.keep_state:
            drop_state(configs / "demo.yaml", destination)
        return code
    finally:
        if args.keep:
            print(f"demo: servers left running: {source.uri('shop')} and {destination.uri('shop')}")
        else:
            source.stop()
            destination.stop()


class WriteLoad(threading.Thread):
    """Orders placed, paid and cancelled on the source while the migration runs. With the destination given, once the
    full load has copied the orders, the source's orders table gets a new column (incremental sync replicates that
    DDL: ``incremental.ddl: replicate``) and later orders fill it."""

    #: The DDL run on the source during the sync.
    DDL = "ALTER TABLE public.orders ADD COLUMN channel text NOT NULL DEFAULT 'web'"

    def __init__(self, info, destination=None) -> None:  # noqa: ANN001 - ConnectionInfo
        super().__init__(daemon=True)
        self.info, self.destination = info, destination
        self.transactions = 0
        self.altered = False
        self._stop_event = threading.Event()

    def _orders_copied(self) -> bool:
        import psycopg

        try:
            with psycopg.connect(**self.destination.connect_kwargs(), autocommit=True) as dst:
                return bool(dst.execute("SELECT EXISTS (SELECT FROM public.orders)").fetchone()[0])
        except psycopg.Error:  # not created yet
            return False

    def _maybe_alter(self, conn) -> None:  # noqa: ANN001
        if self.altered or self.destination is None or self.transactions % 20 or not self._orders_copied():
            return
        conn.execute(self.DDL)
        self.altered = True  # said after the run (Airflow's task logging holds stdout meanwhile)

    def run(self) -> None:
        import random

        import psycopg

        rnd = random.Random(7)
        with psycopg.connect(**self.info.connect_kwargs(), autocommit=True) as conn:
            while not self._stop_event.is_set():
                try:
                    self._maybe_alter(conn)
                    self._one(conn, rnd, self.altered)
                except psycopg.Error:
                    return  # the cutover froze the source and ended this session: writes stopped
                self.transactions += 1
                time.sleep(0.01)

    @staticmethod
    def _one(conn, rnd, altered: bool) -> None:  # noqa: ANN001
        with conn.transaction():
            if altered:
                order = conn.execute("INSERT INTO public.orders (customer_id, channel) VALUES (%s, %s) RETURNING id",
                                     (rnd.randint(1, 2000), rnd.choice(["web", "app", "phone"]))).fetchone()[0]
            else:
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


def drop_state(config_path: Path, destination) -> None:  # noqa: ANN001 - a LocalPostgres server
    """The documented final step: keep the report as a file, remove the migration's state from the destination."""
    from airflow_pgmigrate.config import MigrationConfig
    from airflow_pgmigrate.engine.report import drop_state as drop
    from airflow_pgmigrate.engine.report import write_report

    config = MigrationConfig.from_yaml(config_path)
    info = destination.info("shop")
    path = write_report(config, info)
    print(f"demo: {drop(config, info)}; the report stays in {path} (--keep-state keeps the schema)")


def run_ui(source, airflow_home: Path, configs: Path, port: int) -> int:  # noqa: ANN001 - a LocalPostgres server
    """A real Airflow (its own processes, UI on ``port``) with a write load on the source, until Ctrl-C."""
    import signal

    from airflow_pgmigrate.testing.airflow_deployment import Deployment, free_port

    env = {k: v for k, v in os.environ.items() if k.startswith("AIRFLOW_CONN_") or k.startswith("PGMIGRATE_")}
    try:
        with socket.create_server(("127.0.0.1", port)):
            pass
    except OSError:
        print(f"demo: port {port} is taken; using another one", flush=True)
        port = free_port()
    airflow = Deployment(airflow_home, ROOT / "dags", env_extra=env, port=port)
    writer = WriteLoad(source.info("shop"))

    def interrupted(signum, frame) -> None:  # noqa: ANN001 - a signal handler
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, interrupted)  # also when started with SIGINT ignored (a background job)
    try:
        print(f"demo: starting Airflow (scheduler, dag processor, triggerer, API server) in {airflow_home} ...",
              flush=True)
        airflow.start()
        airflow.wait_for_dag("pgmigrate_demo_shop")
        writer.start()
        print(f"""
demo: Airflow is up: {airflow.url}  (no login needed). A write load runs on the source meanwhile.
  1. Open {airflow.url}/dags/pgmigrate_demo_shop and press Trigger (then Trigger again in the form).
  2. Watch the steps in the grid: precheck, schema, full load, incremental sync, verify.
  3. When cutover_question shows "Awaiting input" (also under Browse > Required Actions), open its
     Required Action tab: it shows the lag, the write rate, the estimated drain and the last verification.
     Answer Keep syncing (the destination keeps following; the question stays open), Cut over or Abort.
  4. The migration report: any migration task > Details > Migration report
     ({airflow.url}/pgmigrate/reports/demo_shop.html).
demo: press Ctrl-C to stop Airflow and the two PostgreSQL servers.
""", flush=True)
        while True:
            airflow.check_alive()
            time.sleep(1)
    except KeyboardInterrupt:
        print("\ndemo: stopping Airflow ...", flush=True)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the cleanup short
        if writer.is_alive():
            writer.stop()
        airflow.stop(grace=10)
        left = airflow.leftovers()
        print("demo: Airflow stopped" + (f"; still running: {left}" if left else " (every process it started)"),
              flush=True)
    return 0


class MigrationProgress:
    """While ``dag.test()`` runs: Airflow's output goes to a log file, and only the migration's own progress lines
    (what its tasks log: steps, rows, MB/s, lag, the cutover's steps) and each task's end are printed."""

    OURS = re.compile(r"\[(\w+)\s*\] (.*?)\s+\[airflow\.task\.operators\.airflow_pgmigrate\.[\w.]*?(\w+)\] loc=")
    TASK_END = re.compile(r"Task instance state updated .*new_state=(success|failed|skipped|up_for_retry)\b")
    ANSI = re.compile(r"\x1b\[[0-9;]*m")

    def __init__(self, log: Path) -> None:
        self.log = log
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._follow, daemon=True)

    def __enter__(self) -> MigrationProgress:
        sys.stdout.flush()
        sys.stderr.flush()
        self._out = os.dup(1)
        self._err = os.dup(2)
        self._file = open(self.log, "ab")  # noqa: SIM115 - closed in __exit__
        os.dup2(self._file.fileno(), 1)
        os.dup2(self._file.fileno(), 2)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(self._out, 1)
        os.dup2(self._err, 2)
        self._halt.set()
        self._thread.join(timeout=5)
        self._file.close()

    def _say(self, text: str) -> None:
        os.write(self._out, (text + "\n").encode())

    def _follow(self) -> None:
        with open(self.log, encoding="utf-8", errors="replace") as handle:
            handle.seek(0, os.SEEK_END)
            while True:
                line = handle.readline()
                if not line:
                    if self._halt.is_set():
                        return
                    time.sleep(0.2)
                    continue
                line = self.ANSI.sub("", line)
                ours = self.OURS.search(line)
                if ours is not None and ours.group(1) in ("info", "warning", "error"):
                    step = re.sub(r"(Operator|Sensor)$", "", ours.group(3))
                    level = "" if ours.group(1) == "info" else f"{ours.group(1).upper()} "
                    self._step = step
                    self._say(f"  {step:<18} {level}{ours.group(2)}")
                    continue
                end = self.TASK_END.search(line)
                if end is not None and getattr(self, "_step", None):
                    self._say(f"  {self._step:<18} -> {end.group(1)}")


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
    print(f"demo: running DAG {dag.dag_id} with tasks {', '.join(t.task_id for t in dag.tasks)} "
          f"(Airflow's own log: {WORK / 'airflow.log'})", flush=True)
    with MigrationProgress(WORK / "airflow.log"):
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
    print(f"demo: migration report: {WORK / 'reports' / 'demo_shop.html'} (with make demo-ui, Airflow serves it: the "
          "tasks' Migration report link)")
    print()
    print(f"demo: DAG run {dag_run.run_id} ended {dag_run.state}")
    return 0 if dag_run.state == "success" else 1


if __name__ == "__main__":
    sys.exit(main())
