"""Secrets never leak: a whole migration through Airflow by least-privilege accounts with distinctive passwords, then
every log line, XCom, rendered field, report and error message of it (and of provoked failures) is searched for them.

Airflow's own log masker is switched off for these runs (``mask_secret`` made a no-op), so what is searched is what
the product itself wrote: a password the product printed would show up in clear.
"""

from __future__ import annotations

import json
import re
import stat
import threading
from pathlib import Path
from urllib.parse import quote, quote_plus

import psycopg
import pytest

from airflow_pgmigrate.config import MigrationConfig
from airflow_pgmigrate.engine.connection import ConnectFailed, ConnectionInfo, connect
from airflow_pgmigrate.engine.pgdump import (
    PgDumpError,
    client_env,
    client_failure,
    find_pg_dump,
    pg_dump_command,
    psql_command,
    run_pg_dump,
)
from airflow_pgmigrate.engine.precheck import run_precheck
from airflow_pgmigrate.exceptions import ConfigError
from airflow_pgmigrate.testing.local_postgres import free_port
from tests.dags.security_dags import OWNER_PUBLICATION
from tests.integration.hitl import Responder, prepare_orm
from tests.integration.test_precheck_dag import _run, _states

pytestmark = [pytest.mark.integration, pytest.mark.hardening]

SOURCE_PASSWORD = "S3cr3t-pgm!x-src"
DESTINATION_PASSWORD = "S3cr3t-pgm!x-dst"
WRONG_PASSWORD = "Wr0ng-S3cr3t!pgm"
URI_PASSWORD = "Ur1-S3cr3t!pgm@x"
KEY_PASSPHRASE = "K3y-S3cr3t!pgm"
SECRETS = (SOURCE_PASSWORD, DESTINATION_PASSWORD, WRONG_PASSWORD, URI_PASSWORD, KEY_PASSPHRASE)
#: A ``postgresql://user:password@`` URI whose password was not replaced by ``***``.
CREDENTIAL_URI = re.compile(r"postgres(?:ql)?://[^\s/@:'\"]+:(?!\*\*\*@)[^\s@'\"]+@")
SOURCE_ROLE, DESTINATION_ROLE = "pgm_sec_src", "pgm_sec_dst"

SHOP = """
CREATE TABLE public.customers (id bigserial PRIMARY KEY, name text NOT NULL);
CREATE TABLE public.orders (id bigserial PRIMARY KEY, customer_id bigint REFERENCES public.customers (id),
                            amount numeric NOT NULL, note text);
INSERT INTO public.customers (name) SELECT 'c' || g FROM generate_series(1, 100) g;
INSERT INTO public.orders (customer_id, amount) SELECT 1 + g % 100, g FROM generate_series(1, 1000) g;
SELECT lo_from_bytea(424242, 'a large object');
"""


def leaks(text: str) -> list[str]:
    """Every test secret (raw or URL-encoded) and every credential-bearing URI found in ``text``."""
    found = [f"{secret!r} as {form!r}" for secret in SECRETS
             for form in {secret, quote(secret, safe=""), quote_plus(secret)} if form in text]
    return found + [m.group(0) for m in CREDENTIAL_URI.finditer(text)]


@pytest.fixture
def no_airflow_masking(monkeypatch):
    """Switch Airflow's log masker off, so a password printed by the product is seen in clear."""
    import airflow.sdk.execution_time.context as context
    import airflow.sdk.log as sdk_log

    monkeypatch.setattr(sdk_log, "mask_secret", lambda *args, **kwargs: None)
    monkeypatch.setattr(context, "mask_secret", lambda *args, **kwargs: None)


def least_privilege_accounts(env) -> None:
    """A source account with only REPLICATION and SELECT (USAGE on the schema), a publication created by the
    owner of the tables, and a destination account that owns the destination database (neither is superuser)."""
    env.src(SHOP)
    env.create_role(env.source, SOURCE_ROLE, SOURCE_PASSWORD, "REPLICATION")
    env.src(f"GRANT USAGE ON SCHEMA public TO {SOURCE_ROLE}; "
            f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {SOURCE_ROLE}; "
            f"GRANT SELECT ON ALL SEQUENCES IN SCHEMA public TO {SOURCE_ROLE}; "
            f"GRANT SELECT ON LARGE OBJECT 424242 TO {SOURCE_ROLE}; "
            f"CREATE PUBLICATION {OWNER_PUBLICATION} FOR TABLE public.customers, public.orders")
    env.create_role(env.destination, DESTINATION_ROLE, DESTINATION_PASSWORD)
    env.destination.execute(f'ALTER DATABASE "{env.destination_db}" OWNER TO {DESTINATION_ROLE}')


def point_connections(env, source_uri: str, destination_uri: str) -> None:
    env.monkeypatch.setenv("AIRFLOW_CONN_PGM_SEC_SOURCE", source_uri)
    env.monkeypatch.setenv("AIRFLOW_CONN_PGM_SEC_DESTINATION", destination_uri)


class Writes(threading.Thread):
    """Writes on the source (as its owner) until incremental sync has applied something, then stops: the cutover
    of this migration does not freeze the source, the approval is the word that writes stopped."""

    def __init__(self, env) -> None:
        super().__init__(daemon=True)
        self.env = env
        self.done = threading.Event()
        self.count = 0

    def run(self) -> None:
        with psycopg.connect(**self.env.source_info().connect_kwargs(), autocommit=True) as src, \
                psycopg.connect(**self.env.destination_info().connect_kwargs(), autocommit=True) as dst:
            while not self.done.wait(0.02):
                with src.transaction():
                    customer = src.execute("INSERT INTO public.customers (name) VALUES ('new') RETURNING id"
                                           ).fetchone()[0]
                    src.execute("INSERT INTO public.orders (customer_id, amount) VALUES (%s, 1)", (customer,))
                    src.execute("UPDATE public.orders SET amount = amount + 1 WHERE id = %s", (1 + self.count % 900,))
                self.count += 1
                if self.count % 10 == 0 and self._applied(dst):
                    return

    @staticmethod
    def _applied(dst: psycopg.Connection) -> bool:
        if dst.execute("SELECT to_regclass('pgmigrate.apply_progress')").fetchone()[0] is None:
            return False
        return bool(dst.execute("SELECT count(*) FROM pgmigrate.apply_progress WHERE migration = 'it_secure'"
                                ).fetchone()[0])

    def stop(self) -> None:
        self.done.set()
        self.join(timeout=10)


def run_artifacts(dag_run, airflow_home: str) -> dict[str, str]:
    """Everything kept of a run, as text: XComs, rendered template fields, and every file under AIRFLOW_HOME (task
    log files, the migration's HTML report, the metadata database itself, byte for byte)."""
    from airflow.models.renderedtifields import RenderedTaskInstanceFields as RTIF
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    out: dict[str, str] = {}
    with create_session() as session:
        for row in session.scalars(select(XComModel).where(XComModel.dag_id == dag_run.dag_id,
                                                           XComModel.run_id == dag_run.run_id)):
            out[f"xcom {row.task_id}.{row.key}"] = json.dumps(XComModel.deserialize_value(row), default=str)
        for row in session.scalars(select(RTIF).where(RTIF.dag_id == dag_run.dag_id,
                                                      RTIF.run_id == dag_run.run_id)):
            out[f"rendered {row.task_id}"] = json.dumps(row.rendered_fields, default=str)
    for path in Path(airflow_home).rglob("*"):
        if path.is_file():
            out[f"file {path}"] = path.read_bytes().decode("latin-1")
    return out


def assert_no_leaks(artifacts: dict[str, str]) -> None:
    found = {name: hits for name, text in artifacts.items() if (hits := leaks(text))}
    assert not found, found


@pytest.mark.slow  # over 20 s (a whole DAG under dag.test()): make test-slow
def test_least_privilege_migration_through_airflow_leaks_no_secret(migration_env, airflow_db, capfd,
                                                                   no_airflow_masking):
    env = migration_env
    least_privilege_accounts(env)
    point_connections(env, env.source.uri(env.source_db, SOURCE_ROLE, SOURCE_PASSWORD),
                      env.destination.uri(env.destination_db, DESTINATION_ROLE, DESTINATION_PASSWORD))
    capfd.readouterr()
    prepare_orm()
    writes = Writes(env)
    writes.start()
    responder = Responder("pgmigrate_it_secure", [("cutover_question", "Cut over")])
    responder.start()
    try:
        dag_run = _run("pgmigrate_it_secure")
    finally:
        writes.stop()
        responder.stop()
    output = capfd.readouterr()
    states = _states(dag_run)
    assert dag_run.state == "success", (states, output.out[-5000:], output.err[-5000:])
    assert writes.count > 0

    # The migration is complete and exact, done by accounts that are not superusers.
    artifacts = run_artifacts(dag_run, airflow_db)
    precheck = json.loads(artifacts["xcom precheck.return_value"])
    results = {(r["name"], r["status"]): r for r in precheck["results"]}
    assert ("publication", "passed") in results and ("source_privileges", "passed") in results
    replica_role = results[("destination_privileges", "warning")]
    assert f'GRANT SET ON PARAMETER session_replication_role TO "{DESTINATION_ROLE}";' in replica_role["fix"]
    report = json.loads(artifacts["xcom cutover.return_value"])
    assert report["status"] == "completed" and report["verification"]["equal"] is True, report
    assert report["released"] == {"slot": True, "publication": False}
    assert any(f'DROP PUBLICATION "{OWNER_PUBLICATION}";' in step for step in report["next_steps"])
    assert env.src("SELECT count(*) FROM pg_publication WHERE pubname = %s", (OWNER_PUBLICATION,)) == [(1,)]
    for table in ("public.customers", "public.orders"):
        query = f"SELECT count(*), md5(string_agg(t::text, '|' ORDER BY t::text)) FROM {table} t"
        assert env.src(query) == env.dst(query), table
    assert env.dst("SELECT last_value FROM public.orders_id_seq") == \
        [(env.src("SELECT last_value FROM public.orders_id_seq")[0][0] + 5,)]
    assert env.dst("SELECT lo_get(424242)") == [(b"a large object",)]
    assert env.dst("SELECT DISTINCT pg_get_userbyid(relowner) FROM pg_class WHERE relname IN "
                   "('customers', 'orders')") == [(DESTINATION_ROLE,)]

    # Nothing it logged, pushed, rendered or recorded holds a password or a URI with credentials.
    artifacts["task output (stdout)"] = output.out
    artifacts["task output (stderr)"] = output.err
    assert "precheck migration=it_secure" in output.out + output.err, "the task logs were not captured"
    assert any(name.endswith("it_secure.html") for name in artifacts), "the migration report was written"
    for key, value in env.dst("SELECT key, value::text FROM pgmigrate.migration_state"):
        artifacts[f"migration state {key}"] = value
    assert_no_leaks(artifacts)


def test_failed_logins_through_airflow_leak_no_secret(migration_env, airflow_db, capfd, no_airflow_masking):
    """A wrong password on the source and an unreachable destination: the precheck fails with both reasons, and
    neither password (nor the right one) appears anywhere."""
    env = migration_env
    least_privilege_accounts(env)
    closed_port = free_port()
    point_connections(env, env.source.uri(env.source_db, SOURCE_ROLE, WRONG_PASSWORD),
                      f"postgresql://{DESTINATION_ROLE}:{quote(DESTINATION_PASSWORD, safe='')}@127.0.0.1:"
                      f"{closed_port}/{env.destination_db}")
    capfd.readouterr()
    dag_run = _run("pgmigrate_it_secure")
    output = capfd.readouterr()
    assert dag_run.state == "failed"
    assert _states(dag_run)["precheck"] == "failed"
    artifacts = run_artifacts(dag_run, airflow_db)
    report = json.loads(artifacts["xcom precheck.precheck_report"])
    failures = {r["name"]: r["detail"] for r in report["results"] if r["status"] == "failed"}
    assert "password authentication failed" in failures["source_connection"]
    assert str(closed_port) in failures["destination_connection"]
    artifacts["task output"] = output.out + output.err
    assert "password authentication failed" in artifacts["task output"]
    assert_no_leaks(artifacts)


def test_error_paths_name_the_problem_without_the_secret(migration_env, tmp_path):
    """Errors the engine raises or reports for a wrong password, an unreachable host and bad config."""
    env = migration_env
    env.create_role(env.source, SOURCE_ROLE, SOURCE_PASSWORD)
    wrong = env.source.info(env.source_db, SOURCE_ROLE, WRONG_PASSWORD)
    messages: list[str] = []

    with pytest.raises(ConnectFailed) as caught:
        connect(wrong)
    assert "password authentication failed" in str(caught.value)
    messages.append(str(caught.value))
    with pytest.raises(ConnectFailed) as caught:
        connect(ConnectionInfo("127.0.0.1", free_port(), "db", SOURCE_ROLE, SOURCE_PASSWORD))
    assert "127.0.0.1" in str(caught.value)
    messages.append(str(caught.value))
    # A connection URI typed where a database name belongs reaches libpq as a name: echoed back, redacted.
    uri_db = f"postgresql://{SOURCE_ROLE}:{quote(URI_PASSWORD, safe='')}@127.0.0.1/{env.source_db}"
    with pytest.raises(ConnectFailed) as caught:
        connect(env.source.info(uri_db, SOURCE_ROLE, SOURCE_PASSWORD))
    assert "does not exist" in str(caught.value)
    messages.append(str(caught.value))
    dump = find_pg_dump(env.source.major)
    for info in (wrong, env.source.info(uri_db, SOURCE_ROLE, SOURCE_PASSWORD)):
        with pytest.raises(PgDumpError) as dump_error:
            run_pg_dump(dump, info, ["--schema-only"])
        messages.append(str(dump_error.value))
    assert "password authentication failed" in messages[-2] and "does not exist" in messages[-1]
    messages.append(client_failure("psql", wrong, f"psql: error: password={WRONG_PASSWORD} and {uri_db} failed"))
    report = run_precheck(env.config(), wrong, env.destination_info())
    assert report.statuses()["source_connection"] == "failed"
    messages.append(json.dumps(report.to_dict()))
    messages.append(repr(wrong) + wrong.describe())

    # Bad config: a URI with credentials where a connection id or a database name belongs.
    for field, data in (("source.conn_id", {"source": {"conn_id": uri_db}}),
                        ("destination.database", {"destination": {"conn_id": "pgm_destination",
                                                                  "database": uri_db}})):
        with pytest.raises(ConfigError) as config_error:
            MigrationConfig.from_dict(env.config_dict(**data))
        assert field in config_error.value.fields
        messages.append(str(config_error.value))
    folder = tmp_path / "configs"
    folder.mkdir()
    (folder / "leaky.yaml").write_text(f"name: leaky\nsource: {{conn_id: '{uri_db}'}}\n"
                                       "destination: {conn_id: pgm_destination}\n")
    from airflow_pgmigrate.templates.migration_dag import broken_config_dag, dags_from_folder

    dags, errors = dags_from_folder(folder)
    assert not dags and len(errors) == 1
    (file, error), = errors.items()
    messages += [str(error), broken_config_dag(file, error).doc_md or ""]

    found = {m: hits for m in messages if (hits := leaks(m))}
    assert not found, found


def test_client_programs_get_no_secret_in_argv(tmp_path):
    """psql and pg_dump take the server, login, password and the key's passphrase from their environment (and a
    private service file), never from argv, which every user of the machine can read in ``ps``."""
    info = ConnectionInfo("db.example.com", 6543, "shop", "migrator", SOURCE_PASSWORD,
                          params={"sslmode": "verify-full", "sslrootcert": "/etc/ca.pem", "sslcert": "/etc/c.crt",
                                  "sslkey": "/etc/c.key", "sslpassword": KEY_PASSPHRASE})
    argv = psql_command(Path("/usr/bin/psql"), ["COPY t TO STDOUT"]) + pg_dump_command(
        find_pg_dump(10), ["--schema-only", "--schema", "public"])
    joined = " ".join(argv)
    assert not leaks(joined)
    assert "db.example.com" not in joined and "migrator" not in joined and "sslkey" not in joined
    env = client_env(info)
    assert env["PGPASSWORD"] == SOURCE_PASSWORD
    assert (env["PGHOST"], env["PGPORT"], env["PGUSER"], env["PGDATABASE"]) == ("db.example.com", "6543", "migrator",
                                                                                 "shop")
    assert (env["PGSSLMODE"], env["PGSSLROOTCERT"], env["PGSSLCERT"], env["PGSSLKEY"]) == (
        "verify-full", "/etc/ca.pem", "/etc/c.crt", "/etc/c.key")
    assert KEY_PASSPHRASE not in json.dumps(env)
    service = Path(env["PGSERVICEFILE"])
    assert env["PGSERVICE"] == "pgmigrate" and f"sslpassword={KEY_PASSPHRASE}" in service.read_text()
    assert stat.S_IMODE(service.stat().st_mode) == 0o600 and stat.S_IMODE(service.parent.stat().st_mode) == 0o700


def test_redaction_of_every_credential_form():
    """What the redaction step replaces, whether or not it knows the secret."""
    from airflow_pgmigrate.engine.secrets import redact

    cases = {
        f"postgresql://bob:{quote(URI_PASSWORD, safe='')}@db:5432/shop": "postgresql://bob:***@db:5432/shop",
        f"host=db password={WRONG_PASSWORD} user=bob": "host=db password=*** user=bob",
        f"sslpassword='{KEY_PASSPHRASE}' sslmode=verify-full": "sslpassword=*** sslmode=verify-full",
        f"PGPASSWORD={SOURCE_PASSWORD} psql": "PGPASSWORD=*** psql",
        f"OPTIONS (user 'bob', password '{WRONG_PASSWORD}')": "OPTIONS (user 'bob', password '***')",
        f"FATAL: role {DESTINATION_PASSWORD} does not exist": "FATAL: role *** does not exist",
    }
    for text, expected in cases.items():
        assert redact(text, [DESTINATION_PASSWORD]) == expected
    assert redact("connected to bob@db:5432/shop (TLS), http://host:8080/x") == \
        "connected to bob@db:5432/shop (TLS), http://host:8080/x"
