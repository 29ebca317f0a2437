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
