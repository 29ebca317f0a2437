"""Ingress rules the RDS precheck adds, against real PostgreSQL servers (the record lives in the destination) and
the moto server: recorded before they are added, merged across prechecks, removed at the end even when the
precheck was killed between adding a rule and recording its id, or the record was lost."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from dataclasses import asdict
from typing import Any

import pytest

from airflow_pgmigrate.config import MigrationConfig
from airflow_pgmigrate.engine.connection import ConnectionInfo
from airflow_pgmigrate.engine.precheck import run_precheck
from airflow_pgmigrate.engine.rds import RdsInspector, rule_description
from airflow_pgmigrate.engine.rds_ledger import IngressLedger, remove_added_rules
from airflow_pgmigrate.engine.state import MigrationState
from tests.unit.test_rds import ingress_cidrs, inject_error, make_instance, make_sg

pytestmark = pytest.mark.integration

WORKER = "203.0.113.0/24"
OFFICE = "198.51.100.0/24"


@pytest.fixture
def aws(aws_env: str) -> tuple[Any, Any, str]:
    import boto3

    rds, ec2 = boto3.client("rds"), boto3.client("ec2")
    sg_id = make_sg(ec2)
    make_instance(rds, "shop-prod", sg_id)
    return rds, ec2, sg_id


def _config(env: Any, cidrs: list[str]) -> MigrationConfig:
    env.src("CREATE TABLE IF NOT EXISTS public.orders (id bigint PRIMARY KEY)")
    return env.config(migration_types=["schema", "full"], rds={
        "db_instance_identifier": "shop-prod", "worker_cidrs": cidrs, "manage_security_group": True})


def _ledger(env: Any, config: MigrationConfig) -> IngressLedger:
    return IngressLedger(MigrationState(env.destination_info(), config.state_schema, config.name))


def _precheck(env: Any, config: MigrationConfig, rds: Any, ec2: Any, destination: ConnectionInfo | None = None) -> Any:
    return run_precheck(config, env.source_info(), destination or env.destination_info(),
                        rds=RdsInspector(rds, ec2), record_rules=_ledger(env, config).add)


def test_rules_of_two_prechecks_are_merged_and_all_removed(migration_env, aws):
    rds, ec2, sg_id = aws
    first = _precheck(migration_env, _config(migration_env, [WORKER]), rds, ec2)
    assert first.result("rds_security_group").status == "passed"
    config = _config(migration_env, [WORKER, OFFICE])
    second = _precheck(migration_env, config, rds, ec2)
    assert [r["cidr"] for r in second.added_ingress_rules] == [OFFICE]
    ledger = _ledger(migration_env, config)
    assert sorted(r.cidr for r in ledger.read()) == [OFFICE, WORKER]
    assert all(r.rule_id for r in ledger.read())

    result = remove_added_rules(RdsInspector(rds, ec2), config.rds, config.name, ledger)
    assert sorted(r["cidr"] for r in result["removed_ingress_rules"]) == [OFFICE, WORKER]
    assert ingress_cidrs(ec2, sg_id) == [] and ledger.read() == []
    # A second cleanup has nothing to do.
    assert remove_added_rules(RdsInspector(rds, ec2), config.rds, config.name, ledger)["removed_ingress_rules"] == []


def test_no_rule_is_added_while_the_destination_is_unreachable(migration_env, aws):
    rds, ec2, sg_id = aws
    config = _config(migration_env, [WORKER])
    closed = ConnectionInfo(host="127.0.0.1", port=1, dbname="x", user="x", params={"connect_timeout": "2"})
    report = _precheck(migration_env, config, rds, ec2, destination=closed)
    assert report.result("destination_connection").status == "failed"
    result = report.result("rds_security_group")
    assert result.status == "failed" and "no rule was added" in result.detail
    assert ingress_cidrs(ec2, sg_id) == [] and report.added_ingress_rules == []


def test_a_denied_aws_call_never_loses_the_report(migration_env, aws):
    rds, ec2, _ = aws
    inject_error(ec2, "DescribeSecurityGroups", "UnauthorizedOperation")
    inject_error(rds, "DescribeDBParameters", "AccessDenied")
    config = _config(migration_env, [WORKER])
    report = run_precheck(config.__class__.from_dict({**config.to_dict(), "migration_types": ["full", "incremental"]}),
                          migration_env.source_info(), migration_env.destination_info(), rds=RdsInspector(rds, ec2),
                          record_rules=_ledger(migration_env, config).add)
    assert "ec2:DescribeSecurityGroups" in report.result("rds_security_group").fix
    assert "rds:DescribeDBParameters" in report.result("rds_logical_replication").fix
    assert report.result("primary_keys").status == "passed"  # the rest of the report is there


_KILLED_PRECHECK = textwrap.dedent("""
    import json, os, signal, sys
    import boto3
    from airflow_pgmigrate.config import MigrationConfig
    from airflow_pgmigrate.engine.connection import ConnectionInfo
    from airflow_pgmigrate.engine.precheck import run_precheck
    from airflow_pgmigrate.engine.rds import RdsInspector
    from airflow_pgmigrate.engine.rds_ledger import IngressLedger
    from airflow_pgmigrate.engine.state import MigrationState

    args = json.loads(sys.argv[1])
    config = MigrationConfig.from_dict(args["config"])
    source, destination = ConnectionInfo(**args["source"]), ConnectionInfo(**args["destination"])

    class KilledAfterAuthorize:
        def __init__(self, ec2):
            self.ec2 = ec2
        def __getattr__(self, name):
            return getattr(self.ec2, name)
        def authorize_security_group_ingress(self, **kwargs):
            self.ec2.authorize_security_group_ingress(**kwargs)
            os.kill(os.getpid(), signal.SIGKILL)  # the worker dies before the rule id is recorded

    ledger = IngressLedger(MigrationState(destination, config.state_schema, config.name))
    run_precheck(config, source, destination, record_rules=ledger.add,
                 rds=RdsInspector(boto3.client("rds"), KilledAfterAuthorize(boto3.client("ec2"))))
""")


@pytest.mark.parametrize("record_lost", [False, True], ids=["record kept", "record lost"])
def test_killed_between_authorize_and_record_the_rule_is_still_removed(migration_env, aws, record_lost):
    rds, ec2, sg_id = aws
    config = _config(migration_env, [WORKER])
    args = {"config": config.to_dict(), "source": asdict(migration_env.source_info()),
            "destination": asdict(migration_env.destination_info())}
    done = subprocess.run([sys.executable, "-c", _KILLED_PRECHECK, json.dumps(args)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == -9, done.stderr[-2000:]
    assert ingress_cidrs(ec2, sg_id) == [("tcp", 5432, 5432, WORKER)]  # added, and the process is gone
    ledger = _ledger(migration_env, config)
    (planned,) = ledger.read()
    assert planned.rule_id is None and planned.description == rule_description(config.name)
    if record_lost:
        migration_env.dst("DELETE FROM pgmigrate.migration_state WHERE key = 'added_ingress_rules'")

    result = remove_added_rules(RdsInspector(rds, ec2), config.rds, config.name, ledger)
    assert [r["cidr"] for r in result["removed_ingress_rules"]] == [WORKER]
    assert result["aws_problems"] == []
    assert ingress_cidrs(ec2, sg_id) == [] and ledger.read() == []


def _revoke_denied(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Every ec2 client the operators make answers RevokeSecurityGroupIngress with UnauthorizedOperation (until the
    returned function is called)."""
    import airflow_pgmigrate.hooks.rds as hooks

    real = hooks.rds_client_factory

    def factory(settings: Any) -> Any:
        make = real(settings)

        def client(service: str) -> Any:
            made = make(service)
            if service == "ec2":
                inject_error(made, "RevokeSecurityGroupIngress", "UnauthorizedOperation")
            return made
        return client

    real_clients = hooks.rds_clients
    monkeypatch.setattr(hooks, "rds_client_factory", factory)
    monkeypatch.setattr(hooks, "rds_clients", lambda settings: (factory(settings)("rds"), factory(settings)("ec2")))

    def allow() -> None:
        monkeypatch.setattr(hooks, "rds_client_factory", real)
        monkeypatch.setattr(hooks, "rds_clients", real_clients)
    return allow


def test_a_rule_that_cannot_be_removed_never_fails_a_cutover_that_released_the_slot(migration_env, aws, monkeypatch):
    """Removing the rule comes after the point of no return (slot and publication dropped): a denied revoke is
    reported and left to the ingress cleanup teardown (which fails naming the action); the cutover completes."""
    from airflow_pgmigrate.exceptions import PgMigrateError
    from airflow_pgmigrate.operators.cutover import CutoverOperator
    from airflow_pgmigrate.operators.rds import IngressCleanupOperator
    from tests.integration.test_incremental import catch_up, start_migration

    rds, ec2, sg_id = aws
    env = migration_env
    env.src("CREATE TABLE IF NOT EXISTS public.orders (id bigint PRIMARY KEY)")
    rds_settings = {"db_instance_identifier": "shop-prod", "worker_cidrs": [WORKER], "manage_security_group": True}
    config = start_migration(env, rds=rds_settings, cutover={"freeze_source": True})
    assert _precheck(env, config, rds, ec2).result("rds_security_group").status == "passed"
    env.src("INSERT INTO public.orders VALUES (1)")
    catch_up(env, config)
    allow_revoke = _revoke_denied(monkeypatch)
    try:
        report = CutoverOperator(task_id="cutover", config=config.to_dict()).execute({})
    finally:
        env.source.execute(f'ALTER DATABASE "{env.source_db}" RESET default_transaction_read_only')
    assert report["status"] == "completed" and report["verification"]["equal"] is True
    assert env.dst("SELECT id FROM public.orders") == [(1,)]
    assert ingress_cidrs(ec2, sg_id) == [("tcp", 5432, 5432, WORKER)]  # still there: the teardown's to remove
    with pytest.raises(PgMigrateError, match="ec2:RevokeSecurityGroupIngress"):
        IngressCleanupOperator(task_id="remove_ingress_rules", config=config.to_dict()).execute({})
    allow_revoke()
    IngressCleanupOperator(task_id="remove_ingress_rules", config=config.to_dict()).execute({})
    assert ingress_cidrs(ec2, sg_id) == []


def test_the_adhoc_precheck_leaves_the_rule_of_a_migration_in_progress(migration_env, aws):
    """The ad hoc precheck DAG run on the config of a migration whose incremental sync is under way (its slot
    exists) shares the migration's record and description: its cleanup must not cut the running sync off the
    database. Once the migration is released, the same cleanup removes the rule."""
    from airflow_pgmigrate.engine.incremental import release
    from airflow_pgmigrate.templates.migration_dag import build_adhoc_precheck_dag
    from tests.integration.test_incremental import start_migration

    rds, ec2, sg_id = aws
    env = migration_env
    env.src("CREATE TABLE IF NOT EXISTS public.orders (id bigint PRIMARY KEY)")
    config = start_migration(env, rds={"db_instance_identifier": "shop-prod", "worker_cidrs": [WORKER],
                                       "manage_security_group": True})
    assert _precheck(env, config, rds, ec2).result("rds_security_group").status == "passed"
    cleanup = build_adhoc_precheck_dag().get_task("remove_ingress_rules")
    cleanup.config = config.to_dict()  # as the trigger form renders it
    cleanup.execute({})
    assert ingress_cidrs(ec2, sg_id) == [("tcp", 5432, 5432, WORKER)]
    assert [r.cidr for r in _ledger(env, config).read()] == [WORKER]
    release(config, env.source_info())
    cleanup.execute({})
    assert ingress_cidrs(ec2, sg_id) == [] and _ledger(env, config).read() == []
