"""The RDS precheck items against a real moto server (boto3 over HTTP, no in-process mock decorator)."""

from __future__ import annotations

import json
import uuid
from types import SimpleNamespace
from typing import Any

import pytest

from airflow_pgmigrate.config import RdsSettings
from airflow_pgmigrate.engine.rds import (
    IngressRule,
    RdsCheckOutcome,
    RdsInspector,
    SourceFacts,
    parse_engine_version,
    rule_description,
)
from airflow_pgmigrate.engine.results import CheckResult
from airflow_pgmigrate.hooks.rds import rds_client_factory, rds_clients

MIGRATION = "orders_to_aurora"
WORKER = "203.0.113.0/24"
ITEMS = ("rds_instance", "rds_endpoint", "rds_logical_replication", "rds_public_access", "rds_security_group",
         "rds_storage")
GIB = 1024**3


@pytest.fixture
def clients(aws_env: str) -> tuple[Any, Any]:
    import boto3

    return boto3.client("rds"), boto3.client("ec2")


def make_sg(ec2: Any, rules: list[dict[str, Any]] | None = None) -> str:
    """A VPC security group with the given ingress permissions (default: none)."""
    vpc_id = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    sg_id = ec2.create_security_group(GroupName=f"db-{uuid.uuid4().hex[:8]}", Description="db", VpcId=vpc_id)["GroupId"]
    if rules:
        ec2.authorize_security_group_ingress(GroupId=sg_id, IpPermissions=rules)
    return str(sg_id)


def tcp(cidr: str, port: int = 5432, to_port: int | None = None) -> dict[str, Any]:
    key, cidr_key = ("Ipv6Ranges", "CidrIpv6") if ":" in cidr else ("IpRanges", "CidrIp")
    return {"IpProtocol": "tcp", "FromPort": port, "ToPort": to_port or port, key: [{cidr_key: cidr}]}


def make_instance(rds: Any, ident: str, sg_id: str, *, engine: str = "postgres", version: str = "15.4",
                  public: bool = True, logical: str | None = "1", group: str | None = "pgmigrate-pg15",
                  subnets: str | None = None) -> None:
    """A DB instance; with ``group`` a custom parameter group holding rds.logical_replication=``logical``."""
    kwargs: dict[str, Any] = {}
    if group:
        rds.create_db_parameter_group(DBParameterGroupName=group, DBParameterGroupFamily="postgres15",
                                      Description="custom")
        if logical is not None:
            rds.modify_db_parameter_group(DBParameterGroupName=group, Parameters=[{
                "ParameterName": "rds.logical_replication", "ParameterValue": logical,
                "ApplyMethod": "pending-reboot"}])
        kwargs["DBParameterGroupName"] = group
    if subnets:
        kwargs["DBSubnetGroupName"] = subnets
    rds.create_db_instance(DBInstanceIdentifier=ident, DBInstanceClass="db.t3.micro", Engine=engine,
                           EngineVersion=version, AllocatedStorage=20, MasterUsername="admin_user",
                           MasterUserPassword="secret-password-1", PubliclyAccessible=public,
                           VpcSecurityGroupIds=[sg_id], **kwargs)


def run(clients: tuple[Any, Any], *, need_logical: bool = True, source: SourceFacts | None = None,
        record: Any = None, **settings: Any) -> RdsCheckOutcome:
    settings.setdefault("db_instance_identifier", "srcdb")
    settings.setdefault("worker_cidrs", [WORKER])
    import boto3

    inspector = RdsInspector(*clients, cloudwatch_client=boto3.client("cloudwatch"))
    outcome = inspector.check(RdsSettings(**settings), MIGRATION, need_logical_replication=need_logical,
                              source=source, record=record)
    assert [r.name for r in outcome.results] == list(ITEMS)
    return outcome


class Recorder:
    """What the precheck recorded, call by call (the destination's state in the real operator)."""

    def __init__(self) -> None:
        self.calls: list[list[IngressRule]] = []

    def __call__(self, rules: list[IngressRule]) -> None:
        self.calls.append(list(rules))


def inject_error(client: Any, operation: str, code: str, message: str = "denied by the test", status: int = 403) -> None:
    """Make one operation of a real client fail as AWS answers it (a recorded error response); every other call
    still goes to the moto server, which cannot model IAM denials or quotas."""
    service = client.meta.service_model.service_id.hyphenize()

    def answer(**_: Any) -> tuple[Any, dict[str, Any]]:
        return SimpleNamespace(status_code=status, headers={}), {
            "Error": {"Code": code, "Message": message}, "ResponseMetadata": {"HTTPStatusCode": status}}

    client.meta.events.register(f"before-call.{service}.{operation}", answer)


def free_space(ident: str, free_bytes: float) -> None:
    """A FreeStorageSpace datapoint of ``ident`` in moto's CloudWatch, as RDS reports it every minute."""
    import boto3

    boto3.client("cloudwatch").put_metric_data(Namespace="AWS/RDS", MetricData=[{
        "MetricName": "FreeStorageSpace", "Dimensions": [{"Name": "DBInstanceIdentifier", "Value": ident}],
        "Value": free_bytes, "Unit": "Bytes"}])


def item(outcome: RdsCheckOutcome, name: str) -> CheckResult:
    return next(r for r in outcome.results if r.name == name)


def ingress_cidrs(ec2: Any, sg_id: str) -> list[tuple[str, int, int, str]]:
    group = ec2.describe_security_groups(GroupIds=[sg_id])["SecurityGroups"][0]
    return [(p["IpProtocol"], p.get("FromPort", -1), p.get("ToPort", -1), r.get("CidrIp") or r.get("CidrIpv6"))
            for p in group["IpPermissions"] for r in p.get("IpRanges", []) + p.get("Ipv6Ranges", [])]


# --------------------------------------------------------------------------- rds_instance


def test_everything_passes(clients: tuple[Any, Any]) -> None:
    rds, ec2 = clients
    make_instance(rds, "srcdb", make_sg(ec2, [tcp(WORKER)]))
    address = rds.describe_db_instances()["DBInstances"][0]["Endpoint"]["Address"]
    free_space("srcdb", 15 * GIB)
    outcome = run(clients, source=SourceFacts(address, 5432, "logical", False))
    assert {r.name: r.status for r in outcome.results} == dict.fromkeys(ITEMS, "passed")
    assert outcome.added_rules == []
    assert outcome.endpoint is not None and outcome.endpoint[1] == 5432
    assert "srcdb" in outcome.endpoint[0]
    assert "15.4" in item(outcome, "rds_instance").detail
    assert "pgmigrate-pg15" in item(outcome, "rds_logical_replication").detail


def test_instance_missing(clients: tuple[Any, Any]) -> None:
    outcome = run(clients, db_instance_identifier="nosuchdb", region="us-east-1")
    inst = item(outcome, "rds_instance")
    assert inst.status == "failed"
    assert "nosuchdb" in inst.detail and "us-east-1" in inst.detail
    assert inst.objects == ["nosuchdb"]
    for name in ITEMS[1:]:
        assert item(outcome, name).status == "skipped"
        assert "not found" in item(outcome, name).detail
    assert outcome.endpoint is None and outcome.added_rules == []


def test_engine_not_postgres(clients: tuple[Any, Any]) -> None:
    rds, ec2 = clients
    make_instance(rds, "srcdb", make_sg(ec2, [tcp(WORKER, 3306)]), engine="mysql", version="8.0.35", group=None)
    outcome = run(clients)
    inst = item(outcome, "rds_instance")
    assert inst.status == "failed"
    assert "'mysql'" in inst.detail and "not PostgreSQL" in inst.detail
    assert item(outcome, "rds_logical_replication").status == "skipped"
    assert outcome.endpoint is not None and outcome.endpoint[1] == 3306


def test_engine_version_too_old(clients: tuple[Any, Any]) -> None:
    rds, ec2 = clients
    make_instance(rds, "srcdb", make_sg(ec2, [tcp(WORKER)]), version="9.6.22")
    outcome = run(clients)
    inst = item(outcome, "rds_instance")
    assert inst.status == "failed"
    assert "9.6.22" in inst.detail and "10.4" in inst.detail
    assert "aws rds modify-db-instance --db-instance-identifier srcdb --engine-version" in inst.fix


def test_engine_version_comparison_is_numeric() -> None:
    versions = ["15.4", "10.21", "9.6.22", "10.4", "16.1-R2"]
    assert sorted(versions, key=parse_engine_version) == ["9.6.22", "10.4", "10.21", "15.4", "16.1-R2"]
    assert parse_engine_version("10.21") > parse_engine_version("10.4") > parse_engine_version("9.6.22")


def test_instance_not_available_is_a_warning(clients: tuple[Any, Any]) -> None:
    rds, ec2 = clients
    make_instance(rds, "srcdb", make_sg(ec2, [tcp(WORKER)]))
    rds.stop_db_instance(DBInstanceIdentifier="srcdb")
    inst = item(run(clients), "rds_instance")
    assert inst.status == "warning"
    assert "'stopped'" in inst.detail
    assert "db-instance-available" in inst.fix


# --------------------------------------------------------------------------- rds_logical_replication


def test_logical_replication_off_in_default_group(clients: tuple[Any, Any]) -> None:
    rds, ec2 = clients
    make_instance(rds, "srcdb", make_sg(ec2, [tcp(WORKER)]), group=None)
    result = item(run(clients), "rds_logical_replication")
    assert result.status == "failed"
    assert "not set" in result.detail and "default.postgres15" in result.detail
    assert "cannot be modified" in result.fix
    assert "aws rds create-db-parameter-group" in result.fix
    assert "ParameterName=rds.logical_replication,ParameterValue=1,ApplyMethod=pending-reboot" in result.fix
    assert "--db-parameter-group-name srcdb-pgmigrate" in result.fix
    assert "aws rds reboot-db-instance --db-instance-identifier srcdb" in result.fix
    assert "default.postgres15" in result.objects


def test_logical_replication_zero_in_custom_group(clients: tuple[Any, Any]) -> None:
    rds, ec2 = clients
    make_instance(rds, "srcdb", make_sg(ec2, [tcp(WORKER)]), logical="0")
    result = item(run(clients), "rds_logical_replication")
    assert result.status == "failed"
    assert "'0'" in result.detail
    assert ("aws rds modify-db-parameter-group --db-parameter-group-name pgmigrate-pg15 --parameters "
            "ParameterName=rds.logical_replication,ParameterValue=1,ApplyMethod=pending-reboot") in result.fix
    assert "aws rds reboot-db-instance --db-instance-identifier srcdb" in result.fix
    assert "create-db-parameter-group" not in result.fix


def _pending_reboot(monkeypatch: pytest.MonkeyPatch, status: str = "pending-reboot") -> None:
    """moto always reports ParameterApplyStatus in-sync: patch its (in-process) model to report ``status``."""
    from moto.rds.models import DBInstance

    original: Any = DBInstance.__dict__["db_parameter_group_status_list"]

    def status_list(self: Any) -> Any:
        groups = original.fget(self)
        if self.db_instance_identifier == "srcdb":
            for group in groups:
                group.ParameterApplyStatus = status
        return groups

    monkeypatch.setattr(DBInstance, "db_parameter_group_status_list", property(status_list))


def test_logical_replication_set_but_not_in_effect(clients: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    rds, ec2 = clients
    make_instance(rds, "srcdb", make_sg(ec2, [tcp(WORKER)]))
    _pending_reboot(monkeypatch)
    reported = rds.describe_db_instances(DBInstanceIdentifier="srcdb")["DBInstances"][0]["DBParameterGroups"]
    assert reported[0]["ParameterApplyStatus"] == "pending-reboot"

    result = item(run(clients, source=SourceFacts("db.example.com", 5432, "replica", False)),
                  "rds_logical_replication")
    assert result.status == "failed"
    assert "not in effect yet" in result.detail and "wal_level=replica" in result.detail
    assert "aws rds reboot-db-instance --db-instance-identifier srcdb" in result.fix
    assert "modify-db-parameter-group" not in result.fix


@pytest.mark.parametrize("status", ["pending-reboot", "applying"])
def test_reboot_pending_for_another_parameter_passes(clients: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch,
                                                     status: str) -> None:
    """ParameterApplyStatus is the group's: a pending shared_buffers change says nothing about logical replication;
    the source's live wal_level does."""
    rds, ec2 = clients
    make_instance(rds, "srcdb", make_sg(ec2, [tcp(WORKER)]))
    _pending_reboot(monkeypatch, status)
    result = item(run(clients, source=SourceFacts("db.example.com", 5432, "logical", False)),
                  "rds_logical_replication")
    assert result.status == "passed"
    assert f"{status!r} for other parameters" in result.detail
    # Without a source connection the pending group can't be judged: a warning, not a failure.
    unknown = item(run(clients, source=SourceFacts("db.example.com", 5432)), "rds_logical_replication")
    assert unknown.status == "warning" and "wal_level could not be read" in unknown.detail


@pytest.mark.parametrize("status", ["in-sync", "failed-to-apply"])
def test_set_but_source_not_logical_fails_whatever_the_status(clients: tuple[Any, Any],
                                                              monkeypatch: pytest.MonkeyPatch, status: str) -> None:
    rds, ec2 = clients
    make_instance(rds, "srcdb", make_sg(ec2, [tcp(WORKER)]))
    _pending_reboot(monkeypatch, status)
    result = item(run(clients, source=SourceFacts("db.example.com", 5432, "replica", False)),
                  "rds_logical_replication")
    assert result.status == "failed" and "wal_level=replica" in result.detail


def test_logical_replication_skipped_without_incremental(clients: tuple[Any, Any]) -> None:
    rds, ec2 = clients
    make_instance(rds, "srcdb", make_sg(ec2, [tcp(WORKER)]), group=None)
    result = item(run(clients, need_logical=False), "rds_logical_replication")
    assert result.status == "skipped"
    assert result.detail == "incremental migration not selected"


def test_parameters_are_read_across_pages(clients: tuple[Any, Any]) -> None:
    """describe_db_parameters is paginated: the parameter may sit on a later page."""
    from botocore.stub import Stubber

    rds, ec2 = clients
    stubber = Stubber(rds)
    stubber.add_response("describe_db_parameters", {
        "Parameters": [{"ParameterName": "work_mem", "ParameterValue": "4096"}], "Marker": "page2"},
        {"DBParameterGroupName": "g"})
    stubber.add_response("describe_db_parameters", {
        "Parameters": [{"ParameterName": "rds.logical_replication", "ParameterValue": "1"}]},
        {"DBParameterGroupName": "g", "Marker": "page2"})
    with stubber:
        assert RdsInspector(rds, ec2)._parameter_value("g", "rds.logical_replication") == "1"
    stubber.assert_no_pending_responses()


# --------------------------------------------------------------------------- rds_public_access


def test_not_publicly_accessible(clients: tuple[Any, Any]) -> None:
    rds, ec2 = clients
    make_instance(rds, "srcdb", make_sg(ec2, [tcp(WORKER)]), public=False)
    result = item(run(clients), "rds_public_access")
    assert result.status == "failed"
    assert "not publicly accessible" in result.detail
    assert "aws rds modify-db-instance --db-instance-identifier srcdb --publicly-accessible --apply-immediately" \
        in result.fix


def test_private_connection_does_not_need_public_access(clients: tuple[Any, Any]) -> None:
    rds, ec2 = clients
    make_instance(rds, "srcdb", make_sg(ec2, [tcp(WORKER)]), public=False)
    result = item(run(clients, connect_over_internet=False), "rds_public_access")
    assert result.status == "passed"
    assert "workers connect privately" in result.detail


# --------------------------------------------------------------------------- rds_security_group


def test_cidr_missing_fails_with_the_command(clients: tuple[Any, Any]) -> None:
    rds, ec2 = clients
    sg_id = make_sg(ec2, [tcp("198.51.100.0/24")])
    make_instance(rds, "srcdb", sg_id)
    outcome = run(clients, worker_cidrs=[WORKER, "198.51.100.7/32"])
    result = item(outcome, "rds_security_group")
    assert result.status == "failed"
    assert WORKER in result.detail and "198.51.100.7/32" not in result.detail and sg_id in result.detail
    assert (f"aws ec2 authorize-security-group-ingress --group-id {sg_id} "
            f"--ip-permissions 'IpProtocol=tcp,FromPort=5432,ToPort=5432,IpRanges=[{{CidrIp={WORKER}}}]'") in result.fix
    assert result.objects == [WORKER, sg_id]
    assert outcome.added_rules == []
    assert ingress_cidrs(ec2, sg_id) == [("tcp", 5432, 5432, "198.51.100.0/24")]


def test_cidr_missing_rule_added_then_removed(clients: tuple[Any, Any]) -> None:
    rds, ec2 = clients
    sg_id = make_sg(ec2)
    make_instance(rds, "srcdb", sg_id)
    recorder = Recorder()
    outcome = run(clients, manage_security_group=True, record=recorder)
    result = item(outcome, "rds_security_group")
    assert result.status == "passed"
    assert "added" in result.detail and "removed at the end of the migration" in result.detail
    (added,) = outcome.added_rules
    assert added.rule_id and added.rule_id.startswith("sgr-")
    expected = IngressRule(group_id=sg_id, cidr=WORKER, port=5432, description=f"airflow-pgmigrate {MIGRATION}",
                           rule_id=added.rule_id)
    assert added == expected
    assert IngressRule.from_dict(json.loads(json.dumps(expected.to_dict()))) == expected
    # Recorded before it was added (no id yet), then again with the rule id AWS returned.
    assert recorder.calls == [[IngressRule(sg_id, WORKER, 5432, rule_description(MIGRATION))], [expected]]

    group = ec2.describe_security_groups(GroupIds=[sg_id])["SecurityGroups"][0]
    assert ingress_cidrs(ec2, sg_id) == [("tcp", 5432, 5432, WORKER)]
    assert group["IpPermissions"][0]["IpRanges"][0]["Description"] == f"airflow-pgmigrate {MIGRATION}"
    # A second precheck now finds the rule, knows it as this migration's, and adds nothing.
    again = run(clients, manage_security_group=True, record=recorder)
    assert item(again, "rds_security_group").status == "passed" and again.added_rules == []
    assert "a rule this migration added earlier" in item(again, "rds_security_group").detail

    inspector = RdsInspector(*clients)
    assert inspector.remove_ingress_rules(outcome.added_rules) == [expected]
    assert ingress_cidrs(ec2, sg_id) == []
    assert inspector.remove_ingress_rules(outcome.added_rules) == []
    assert item(run(clients), "rds_security_group").status == "failed"


def test_no_rule_is_added_where_it_cannot_be_recorded(clients: tuple[Any, Any]) -> None:
    """The destination (where rules are recorded) is unreachable, or recording fails: nothing is added."""
    rds, ec2 = clients
    sg_id = make_sg(ec2)
    make_instance(rds, "srcdb", sg_id)
    result = item(run(clients, manage_security_group=True, record=None), "rds_security_group")
    assert result.status == "failed" and "no rule was added" in result.detail and "destination" in result.detail
    assert "aws ec2 authorize-security-group-ingress" in result.fix

    def broken(rules: list[IngressRule]) -> None:
        raise RuntimeError("state schema is read-only")

    result = item(run(clients, manage_security_group=True, record=broken), "rds_security_group")
    assert result.status == "failed" and "state schema is read-only" in result.detail
    assert ingress_cidrs(ec2, sg_id) == []


def test_wider_rule_admits_the_cidr(clients: tuple[Any, Any]) -> None:
    rds, ec2 = clients
    make_instance(rds, "srcdb", make_sg(ec2, [tcp("10.0.0.0/16", 5000, 6000)]))
    result = item(run(clients, worker_cidrs=["10.0.1.0/24", "10.0.2.9/32"]), "rds_security_group")
    assert result.status == "passed"
    assert "10.0.1.0/24" in result.detail


def test_narrower_rule_does_not_admit(clients: tuple[Any, Any]) -> None:
    rds, ec2 = clients
    make_instance(rds, "srcdb", make_sg(ec2, [tcp("10.0.1.0/24")]))
    result = item(run(clients, worker_cidrs=["10.0.0.0/16"]), "rds_security_group")
    assert result.status == "failed"
    assert "10.0.0.0/16" in result.detail


def test_rule_on_another_port_does_not_admit(clients: tuple[Any, Any]) -> None:
    rds, ec2 = clients
    make_instance(rds, "srcdb", make_sg(ec2, [tcp(WORKER, 5433)]))
    result = item(run(clients), "rds_security_group")
    assert result.status == "failed"
    assert "port 5432" in result.detail


def test_all_traffic_rule_admits(clients: tuple[Any, Any]) -> None:
    rds, ec2 = clients
    make_instance(rds, "srcdb", make_sg(ec2, [{"IpProtocol": "-1", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}]))
    assert item(run(clients), "rds_security_group").status == "passed"


def test_ipv6_cidr(clients: tuple[Any, Any]) -> None:
    rds, ec2 = clients
    make_instance(rds, "srcdb", make_sg(ec2, [tcp("2001:db8::/32")]))
    assert item(run(clients, worker_cidrs=["2001:db8:1::/48"]), "rds_security_group").status == "passed"
    result = item(run(clients, worker_cidrs=["2001:db9::/48"]), "rds_security_group")
    assert result.status == "failed"
    assert "Ipv6Ranges=[{CidrIpv6=2001:db9::/48}]" in result.fix


def test_no_worker_cidrs_is_a_warning(clients: tuple[Any, Any]) -> None:
    rds, ec2 = clients
    make_instance(rds, "srcdb", make_sg(ec2, [tcp(WORKER)]))
    result = item(run(clients, worker_cidrs=[]), "rds_security_group")
    assert result.status == "warning"
    assert result.detail == "no worker CIDR blocks configured, cannot verify the security group"
    assert result.fix == "list rds.worker_cidrs"


# --------------------------------------------------------------------------- rds_clients


def test_rds_clients_from_the_environment(aws_env: str) -> None:
    rds, ec2 = rds_clients(RdsSettings(db_instance_identifier="srcdb"))
    assert rds.meta.endpoint_url == aws_env and ec2.meta.endpoint_url == aws_env
    assert rds.meta.region_name == "us-east-1"
    sg_id = make_sg(ec2)
    make_instance(rds, "srcdb", sg_id)
    assert rds.describe_db_instances()["DBInstances"][0]["DBInstanceIdentifier"] == "srcdb"
    assert ec2.describe_security_groups(GroupIds=[sg_id])["SecurityGroups"][0]["GroupId"] == sg_id


def test_rds_clients_from_an_airflow_connection(aws_env: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the amazon provider, login/password/extras of the connection feed plain boto3."""
    from airflow.sdk import BaseHook

    class Conn:
        def __init__(self) -> None:
            self.login = "AKIDFROMCONN"
            self.password = "secret-from-conn"
            self.extra_dejson = {"region_name": "eu-west-1", "endpoint_url": aws_env}

    seen: list[str] = []

    def get_connection(cls: Any, conn_id: str) -> Conn:
        seen.append(conn_id)
        return Conn()

    monkeypatch.setattr(BaseHook, "get_connection", classmethod(get_connection))
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    rds, ec2 = rds_clients(RdsSettings(db_instance_identifier="srcdb", aws_conn_id="aws_test"))
    assert seen == ["aws_test"]
    assert rds.meta.region_name == "eu-west-1" and rds.meta.endpoint_url == aws_env
    assert rds._request_signer._credentials.access_key == "AKIDFROMCONN"
    assert rds.describe_db_instances()["DBInstances"] == []
    assert ec2.describe_vpcs()["Vpcs"]
    rds2, _ = rds_clients(RdsSettings(db_instance_identifier="srcdb", aws_conn_id="aws_test", region="ap-south-1"))
    assert rds2.meta.region_name == "ap-south-1"


def test_rds_clients_prefer_the_amazon_provider(aws_env: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """With apache-airflow-providers-amazon installed, AwsBaseHook builds the clients (faked here: not installed)."""
    import sys
    import types

    import boto3

    made: list[tuple[str | None, str | None, str]] = []

    class AwsBaseHook:
        def __init__(self, aws_conn_id: str | None = None, region_name: str | None = None) -> None:
            self.aws_conn_id, self.region_name = aws_conn_id, region_name

        def get_client_type(self, client_type: str) -> Any:
            made.append((self.aws_conn_id, self.region_name, client_type))
            return boto3.session.Session(region_name=self.region_name).client(client_type)  # type: ignore[call-overload]

    names = ["airflow.providers.amazon", "airflow.providers.amazon.aws", "airflow.providers.amazon.aws.hooks",
             "airflow.providers.amazon.aws.hooks.base_aws"]
    for name in names:
        module = types.ModuleType(name)
        module.__path__ = []  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, name, module)
    sys.modules[names[-1]].AwsBaseHook = AwsBaseHook  # type: ignore[attr-defined]

    rds, ec2 = rds_clients(RdsSettings(db_instance_identifier="srcdb", aws_conn_id="aws_prod", region="us-east-1"))
    assert made == [("aws_prod", "us-east-1", "rds"), ("aws_prod", "us-east-1", "ec2")]
    assert rds.describe_db_instances()["DBInstances"] == [] and ec2.meta.service_model.service_name == "ec2"


# --------------------------------------------------------------------------- AWS errors become failed items


@pytest.mark.parametrize(("client_index", "operation", "code", "item_name", "action"), [
    (0, "DescribeDBInstances", "AccessDenied", "rds_instance", "rds:DescribeDBInstances"),
    (0, "DescribeDBParameters", "AccessDenied", "rds_logical_replication", "rds:DescribeDBParameters"),
    (1, "DescribeSecurityGroups", "UnauthorizedOperation", "rds_security_group", "ec2:DescribeSecurityGroups"),
    (1, "DescribeRouteTables", "UnauthorizedOperation", "rds_public_access", "ec2:DescribeRouteTables"),
    (1, "AuthorizeSecurityGroupIngress", "UnauthorizedOperation", "rds_security_group",
     "ec2:AuthorizeSecurityGroupIngress"),
])
def test_a_denied_call_is_a_failed_item_naming_the_action(clients: tuple[Any, Any], client_index: int,
                                                          operation: str, code: str, item_name: str,
                                                          action: str) -> None:
    rds, ec2 = clients
    make_instance(rds, "srcdb", make_sg(ec2), subnets=make_public_subnets(ec2, rds))
    inject_error(clients[client_index], operation, code)
    outcome = run(clients, manage_security_group=True, record=Recorder())
    result = item(outcome, item_name)
    assert result.status == "failed", result
    assert action in result.detail + result.fix and code in result.detail
    assert f"give the AWS identity the IAM action {action}" in result.fix
    assert action in result.objects
    if item_name == "rds_security_group":
        assert outcome.added_rules == []


def test_rules_quota_is_not_blamed_on_iam(clients: tuple[Any, Any]) -> None:
    rds, ec2 = clients
    make_instance(rds, "srcdb", make_sg(ec2))
    inject_error(ec2, "AuthorizeSecurityGroupIngress", "RulesPerSecurityGroupLimitExceeded",
                 "The maximum number of rules per security group has been reached.", status=400)
    result = item(run(clients, manage_security_group=True, record=Recorder()), "rds_security_group")
    assert result.status == "failed" and "RulesPerSecurityGroupLimitExceeded" in result.detail
    assert "quota" in result.fix and "give the AWS identity" not in result.fix
    assert "aws ec2 authorize-security-group-ingress" in result.fix


def test_no_region_is_a_failed_item_not_a_crash(aws_env: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    inspector = RdsInspector(client_factory=rds_client_factory(RdsSettings(db_instance_identifier="srcdb")))
    outcome = inspector.check(RdsSettings(db_instance_identifier="srcdb"), MIGRATION, need_logical_replication=True)
    first = item(outcome, "rds_instance")
    assert first.status == "failed" and "NoRegionError" in first.detail
    assert "rds.region" in first.fix
    assert [r.status for r in outcome.results[1:]] == ["skipped"] * 5


# --------------------------------------------------------------------------- rules by reference


def test_security_group_reference_admits_its_members(clients: tuple[Any, Any]) -> None:
    """The usual pattern in one VPC: the DB group admits the workers' own security group."""
    rds, ec2 = clients
    vpc_id = ec2.create_vpc(CidrBlock="10.1.0.0/16")["Vpc"]["VpcId"]
    workers = ec2.create_security_group(GroupName="workers", Description="w", VpcId=vpc_id)["GroupId"]
    subnet = ec2.create_subnet(VpcId=vpc_id, CidrBlock="10.1.4.0/24")["Subnet"]["SubnetId"]
    eni = ec2.create_network_interface(SubnetId=subnet, Groups=[workers])["NetworkInterface"]
    sg_id = make_sg(ec2, [{"IpProtocol": "tcp", "FromPort": 5432, "ToPort": 5432,
                           "UserIdGroupPairs": [{"GroupId": workers}]}])
    make_instance(rds, "srcdb", sg_id)
    recorder = Recorder()
    outcome = run(clients, worker_cidrs=["10.1.4.0/24"], manage_security_group=True, record=recorder)
    result = item(outcome, "rds_security_group")
    assert result.status == "passed", result
    assert f"security group {workers}" in result.detail and eni["PrivateIpAddress"] in result.detail
    assert outcome.added_rules == [] and recorder.calls == []
    # A group whose members are elsewhere does not admit the CIDR.
    assert item(run(clients, worker_cidrs=["10.1.9.0/24"]), "rds_security_group").status == "failed"


def test_managed_prefix_list_admits_its_entries(clients: tuple[Any, Any]) -> None:
    rds, ec2 = clients
    pl_id = ec2.create_managed_prefix_list(PrefixListName="office", MaxEntries=5, AddressFamily="IPv4",
                                           Entries=[{"Cidr": "203.0.0.0/16"}])["PrefixList"]["PrefixListId"]
    sg_id = make_sg(ec2, [{"IpProtocol": "tcp", "FromPort": 5432, "ToPort": 5432,
                           "PrefixListIds": [{"PrefixListId": pl_id}]}])
    make_instance(rds, "srcdb", sg_id)
    outcome = run(clients, manage_security_group=True, record=Recorder())
    result = item(outcome, "rds_security_group")
    assert result.status == "passed" and f"managed prefix list {pl_id}" in result.detail
    assert outcome.added_rules == []
    assert item(run(clients, worker_cidrs=["198.51.100.0/24"]), "rds_security_group").status == "failed"


# --------------------------------------------------------------------------- the source connection is this database


def _endpoint(rds: Any, ident: str = "srcdb") -> str:
    return str(rds.describe_db_instances(DBInstanceIdentifier=ident)["DBInstances"][0]["Endpoint"]["Address"])


def test_read_replica_is_refused_for_incremental(clients: tuple[Any, Any]) -> None:
    rds, ec2 = clients
    make_instance(rds, "primary", make_sg(ec2, [tcp(WORKER)]))
    rds.create_db_instance_read_replica(DBInstanceIdentifier="srcdb", SourceDBInstanceIdentifier="primary")
    facts = SourceFacts(_endpoint(rds), 5432, "logical", True)
    result = item(run(clients, source=facts), "rds_endpoint")
    assert result.status == "failed"
    assert "read replica of 'primary'" in result.detail and "writable primary" in result.detail
    assert "primary" in result.fix
    assert item(run(clients, source=facts, need_logical=False), "rds_endpoint").status == "warning"


def test_standby_seen_by_the_connection_is_refused(clients: tuple[Any, Any]) -> None:
    rds, ec2 = clients
    make_instance(rds, "srcdb", make_sg(ec2, [tcp(WORKER)]))
    result = item(run(clients, source=SourceFacts(_endpoint(rds), 5432, "logical", True)), "rds_endpoint")
    assert result.status == "failed" and "pg_is_in_recovery() is true" in result.detail


@pytest.mark.parametrize(("host", "words"), [
    ("orders.proxy-abcdefghij.us-east-1.rds.amazonaws.com", "RDS Proxy"),
    ("otherdb.abcdefghij.us-east-1.rds.amazonaws.com", "another RDS endpoint"),
])
def test_source_connection_elsewhere_fails(clients: tuple[Any, Any], host: str, words: str) -> None:
    rds, ec2 = clients
    make_instance(rds, "srcdb", make_sg(ec2, [tcp(WORKER)]))
    result = item(run(clients, source=SourceFacts(host, 5432, "logical", False)), "rds_endpoint")
    assert result.status == "failed" and words in result.detail
    assert _endpoint(rds) in result.fix


def test_source_connection_through_an_alias_is_a_warning(clients: tuple[Any, Any]) -> None:
    rds, ec2 = clients
    make_instance(rds, "srcdb", make_sg(ec2, [tcp(WORKER)]))
    result = item(run(clients, source=SourceFacts("127.0.0.1", 6432, "logical", False)), "rds_endpoint")
    assert result.status == "warning" and "cannot confirm" in result.detail


# --------------------------------------------------------------------------- clusters


def _cluster_parameter_group(rds: Any, name: str, family: str, value: str) -> None:
    rds.create_db_cluster_parameter_group(DBClusterParameterGroupName=name, DBParameterGroupFamily=family,
                                          Description="custom")
    rds.modify_db_cluster_parameter_group(DBClusterParameterGroupName=name, Parameters=[{
        "ParameterName": "rds.logical_replication", "ParameterValue": value, "ApplyMethod": "pending-reboot"}])


@pytest.mark.parametrize("value", ["1", "0"])
def test_multi_az_db_cluster_reads_its_cluster_parameter_group(clients: tuple[Any, Any], value: str) -> None:
    rds, ec2 = clients
    sg_id = make_sg(ec2, [tcp(WORKER)])
    _cluster_parameter_group(rds, "maz-params", "postgres15", value)
    cluster = rds.create_db_cluster(
        DBClusterIdentifier="srcdb", Engine="postgres", EngineVersion="15.4", MasterUsername="admin_user",
        MasterUserPassword="secret-password-1", DBClusterInstanceClass="db.m6gd.large", StorageType="io1",
        Iops=1000, AllocatedStorage=100, VpcSecurityGroupIds=[sg_id], DBClusterParameterGroupName="maz-params",
        PubliclyAccessible=True)["DBCluster"]
    facts = SourceFacts(cluster["Endpoint"], 5432, "logical" if value == "1" else "replica", False)
    outcome = run(clients, source=facts)
    assert "Multi-AZ DB cluster 'srcdb'" in item(outcome, "rds_instance").detail
    assert item(outcome, "rds_endpoint").status == "passed"
    assert item(outcome, "rds_security_group").status == "passed"
    result = item(outcome, "rds_logical_replication")
    if value == "1":
        assert result.status == "passed" and "maz-params" in result.detail
    else:
        assert result.status == "failed" and "cluster parameter group 'maz-params'" in result.detail
        assert "aws rds modify-db-cluster-parameter-group --db-cluster-parameter-group-name maz-params" in result.fix
        assert "aws rds reboot-db-cluster --db-cluster-identifier srcdb" in result.fix
        assert "modify-db-parameter-group" not in result.fix


def test_aurora_postgresql_instance_is_checked_not_refused(clients: tuple[Any, Any]) -> None:
    rds, ec2 = clients
    sg_id = make_sg(ec2)
    _cluster_parameter_group(rds, "aurora-params", "aurora-postgresql15", "1")
    cluster = rds.create_db_cluster(DBClusterIdentifier="orders", Engine="aurora-postgresql", EngineVersion="15.4",
                                    MasterUsername="admin_user", MasterUserPassword="secret-password-1",
                                    VpcSecurityGroupIds=[sg_id], DBClusterParameterGroupName="aurora-params")
    rds.create_db_instance(DBInstanceIdentifier="srcdb", DBInstanceClass="db.r6g.large", Engine="aurora-postgresql",
                           DBClusterIdentifier="orders", PubliclyAccessible=True)
    facts = SourceFacts(cluster["DBCluster"]["Endpoint"], 5432, "logical", False)
    outcome = run(clients, source=facts)
    statuses = {r.name: r.status for r in outcome.results}
    assert statuses == {"rds_instance": "passed", "rds_endpoint": "passed", "rds_logical_replication": "passed",
                        "rds_public_access": "passed", "rds_security_group": "failed", "rds_storage": "passed"}
    assert "aurora-params" in item(outcome, "rds_logical_replication").detail
    assert sg_id in item(outcome, "rds_security_group").detail
    reader = SourceFacts(cluster["DBCluster"]["ReaderEndpoint"], 5432, "logical", False)
    assert "reader endpoint" in item(run(clients, source=reader), "rds_endpoint").detail


# --------------------------------------------------------------------------- public access: the route


def make_public_subnets(ec2: Any, rds: Any, *, internet: bool = True) -> str:
    """A DB subnet group of two subnets whose route table does (or does not) send 0.0.0.0/0 to an internet gateway."""
    vpc_id = ec2.create_vpc(CidrBlock="10.2.0.0/16")["Vpc"]["VpcId"]
    subnets = [ec2.create_subnet(VpcId=vpc_id, CidrBlock=f"10.2.{i}.0/24", AvailabilityZone=f"us-east-1{z}")
               ["Subnet"]["SubnetId"] for i, z in ((1, "a"), (2, "b"))]
    table = ec2.create_route_table(VpcId=vpc_id)["RouteTable"]["RouteTableId"]
    for subnet in subnets:
        ec2.associate_route_table(RouteTableId=table, SubnetId=subnet)
    if internet:
        igw = ec2.create_internet_gateway()["InternetGateway"]["InternetGatewayId"]
        ec2.attach_internet_gateway(InternetGatewayId=igw, VpcId=vpc_id)
        ec2.create_route(RouteTableId=table, DestinationCidrBlock="0.0.0.0/0", GatewayId=igw)
    name = f"subnets-{uuid.uuid4().hex[:8]}"
    rds.create_db_subnet_group(DBSubnetGroupName=name, DBSubnetGroupDescription="db", SubnetIds=subnets)
    return name


@pytest.mark.parametrize("internet", [True, False])
def test_public_access_needs_a_route_to_an_internet_gateway(clients: tuple[Any, Any], internet: bool) -> None:
    rds, ec2 = clients
    make_instance(rds, "srcdb", make_sg(ec2, [tcp(WORKER)]), subnets=make_public_subnets(ec2, rds, internet=internet))
    result = item(run(clients), "rds_public_access")
    if internet:
        assert result.status == "passed" and "internet gateway igw-" in result.detail
    else:
        assert result.status == "failed" and "no route to an internet gateway" in result.detail
        assert "0.0.0.0/0" in result.fix and "rds.connect_over_internet: false" in result.fix


# --------------------------------------------------------------------------- cleanup


def test_cleanup_finds_the_rules_by_description_when_the_record_is_lost(clients: tuple[Any, Any]) -> None:
    rds, ec2 = clients
    sg_id = make_sg(ec2, [{"IpProtocol": "tcp", "FromPort": 5432, "ToPort": 5432,
                           "IpRanges": [{"CidrIp": "198.51.100.0/24", "Description": "the team's own rule"}]}])
    make_instance(rds, "srcdb", sg_id)
    settings = RdsSettings(db_instance_identifier="srcdb", worker_cidrs=[WORKER, "192.0.2.0/24"],
                           manage_security_group=True)
    inspector = RdsInspector(*clients)
    outcome = inspector.check(settings, MIGRATION, need_logical_replication=False, record=Recorder())
    assert len(outcome.added_rules) == 2
    # Another migration's rule on the same group stays.
    other = rds_rule(ec2, sg_id, "192.0.2.0/24", rule_description("another_migration"), port=5433)
    cleaned = inspector.clean_up(settings, MIGRATION, recorded=[])
    assert sorted(r.cidr for r in cleaned.removed) == ["192.0.2.0/24", WORKER]
    assert cleaned.problems == []
    assert sorted(ingress_cidrs(ec2, sg_id)) == [("tcp", 5432, 5432, "198.51.100.0/24"),
                                                 ("tcp", 5433, 5433, "192.0.2.0/24")]
    assert other


def test_cleanup_with_a_planned_record_only_removes_its_own_rule(clients: tuple[Any, Any]) -> None:
    """Killed between adding and recording the id: the planned entry (no id) and the description find the rule;
    a rule of the same CIDR and port without our description is not touched."""
    rds, ec2 = clients
    sg_id = make_sg(ec2)
    make_instance(rds, "srcdb", sg_id)
    planned = IngressRule(sg_id, WORKER, 5432, rule_description(MIGRATION))
    ec2.authorize_security_group_ingress(GroupId=sg_id, IpPermissions=[planned.ip_permission()])
    other_sg = make_sg(ec2, [tcp(WORKER)])
    stray = IngressRule(other_sg, WORKER, 5432, rule_description(MIGRATION))
    settings = RdsSettings(db_instance_identifier="srcdb", worker_cidrs=[WORKER], manage_security_group=True)
    cleaned = RdsInspector(*clients).clean_up(settings, MIGRATION, recorded=[planned, stray])
    assert [(r.group_id, r.cidr) for r in cleaned.removed] == [(sg_id, WORKER)]
    assert ingress_cidrs(ec2, sg_id) == [] and ingress_cidrs(ec2, other_sg) == [("tcp", 5432, 5432, WORKER)]
    assert set(cleaned.settled) >= {planned, stray}


def test_cleanup_reports_a_denied_revoke(clients: tuple[Any, Any]) -> None:
    rds, ec2 = clients
    sg_id = make_sg(ec2)
    make_instance(rds, "srcdb", sg_id)
    settings = RdsSettings(db_instance_identifier="srcdb", worker_cidrs=[WORKER], manage_security_group=True)
    inspector = RdsInspector(*clients)
    added = inspector.check(settings, MIGRATION, need_logical_replication=False, record=Recorder()).added_rules
    inject_error(ec2, "RevokeSecurityGroupIngress", "UnauthorizedOperation")
    cleaned = inspector.clean_up(settings, MIGRATION, recorded=added)
    assert cleaned.removed == [] and [p.action for p in cleaned.problems] == ["ec2:RevokeSecurityGroupIngress"]
    assert "give the AWS identity the IAM action ec2:RevokeSecurityGroupIngress" in cleaned.problems[0].fix()
    assert cleaned.settled == []


def rds_rule(ec2: Any, sg_id: str, cidr: str, description: str, port: int = 5432) -> str:
    response = ec2.authorize_security_group_ingress(GroupId=sg_id, IpPermissions=[
        IngressRule(sg_id, cidr, port, description).ip_permission()])
    return str(response["SecurityGroupRules"][0]["SecurityGroupRuleId"])


# --------------------------------------------------------------------------- the cleanup task in every DAG


def _config(**rds: Any) -> Any:
    from airflow_pgmigrate.config import MigrationConfig

    data: dict[str, Any] = {"name": "shop", "source": {"conn_id": "src"}, "destination": {"conn_id": "dst"}}
    if rds:
        data["rds"] = {"db_instance_identifier": "shop-prod", "worker_cidrs": [WORKER], **rds}
    return data, MigrationConfig


@pytest.mark.parametrize("types", [["schema", "full"], ["schema", "full", "incremental"], ["full"]])
@pytest.mark.parametrize("approval", ["automatic", "manual"])
def test_every_dag_that_may_add_a_rule_ends_with_the_cleanup_teardown(types: list[str], approval: str) -> None:
    from airflow.sdk import TriggerRule

    from airflow_pgmigrate.templates.migration_dag import build_migration_dag

    data, config_cls = _config(manage_security_group=True)
    dag = build_migration_dag(config_cls.from_dict({**data, "migration_types": types,
                                                    "cutover": {"approval": approval, "freeze_source": True}}))
    cleanup = dag.task_dict["remove_ingress_rules"]
    assert cleanup.is_teardown and cleanup.trigger_rule == TriggerRule.ALL_DONE_SETUP_SUCCESS
    assert not cleanup.on_failure_fail_dagrun and not cleanup.downstream_list
    others = [t for t in dag.tasks if t is not cleanup]
    assert all(cleanup in t.get_flat_relatives(upstream=False) for t in others)
    assert not any(t.is_setup for t in others)  # no setup: it runs even when the precheck failed


def test_no_cleanup_task_where_no_rule_may_be_added() -> None:
    from airflow_pgmigrate.templates.migration_dag import build_migration_dag

    for data, config_cls in (_config(), _config(manage_security_group=False)):
        assert "remove_ingress_rules" not in build_migration_dag(config_cls.from_dict(data)).task_dict


def test_trigger_form_dags_end_with_the_cleanup_teardown() -> None:
    from airflow_pgmigrate.templates.migration_dag import build_adhoc_dag, build_adhoc_precheck_dag

    for dag in (build_adhoc_dag(), build_adhoc_precheck_dag()):
        cleanup = dag.task_dict["remove_ingress_rules"]
        assert cleanup.is_teardown
        assert all(cleanup in t.get_flat_relatives(upstream=False) for t in dag.tasks if t is not cleanup)


# --------------------------------------------------------------------------- credentials without the amazon provider


def _fake_connection(monkeypatch: pytest.MonkeyPatch, extra: dict[str, Any], login: str | None = None) -> None:
    from airflow.sdk import BaseHook

    conn = SimpleNamespace(login=login, password="secret-from-conn" if login else None, extra_dejson=extra)
    monkeypatch.setattr(BaseHook, "get_connection", classmethod(lambda cls, conn_id: conn))


def test_role_arn_extra_is_assumed(aws_env: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cross-account database: the connection's role_arn is assumed through STS, not ignored."""
    _fake_connection(monkeypatch, {"role_arn": "arn:aws:iam::210987654321:role/migrator", "external_id": "x-1",
                                   "region_name": "eu-west-1"}, login="AKIDFROMCONN")
    rds, ec2 = rds_clients(RdsSettings(db_instance_identifier="srcdb", aws_conn_id="aws_prod"))
    credentials = rds._request_signer._credentials
    assert credentials.access_key.startswith("ASIA") and credentials.access_key != "AKIDFROMCONN"
    assert credentials.token
    assert rds.meta.region_name == "eu-west-1" and ec2._request_signer._credentials.access_key == credentials.access_key
    assert rds.describe_db_instances()["DBInstances"] == []


def test_profile_name_extra_is_used(aws_env: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    config = tmp_path / "aws-config"
    config.write_text("[profile migrator]\naws_access_key_id = AKIDPROFILE\naws_secret_access_key = s\n"
                      "region = ap-south-1\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    _fake_connection(monkeypatch, {"profile_name": "migrator"})
    rds, _ = rds_clients(RdsSettings(db_instance_identifier="srcdb", aws_conn_id="aws_prod"))
    assert rds._request_signer._credentials.access_key == "AKIDPROFILE"
    assert rds.meta.region_name == "ap-south-1"


def test_an_extra_only_the_provider_understands_is_a_failed_item(aws_env: str,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_connection(monkeypatch, {"assume_role_method": "assume_role_with_web_identity"})
    settings = RdsSettings(db_instance_identifier="srcdb", aws_conn_id="aws_prod")
    outcome = RdsInspector(client_factory=rds_client_factory(settings)).check(settings, MIGRATION,
                                                                             need_logical_replication=True)
    first = item(outcome, "rds_instance")
    assert first.status == "failed" and "assume_role_method" in first.detail
    assert "apache-airflow-providers-amazon" in first.fix


# --------------------------------------------------------------------------- storage (CloudWatch FreeStorageSpace)


@pytest.mark.parametrize(("free_gib", "max_allocated", "status", "words"), [
    (15, None, "passed", "15.0 GiB free of 20 GiB"),
    (3, None, "warning", "the replication slot keeps the source's WAL"),
    (0.5, None, "failed", "storage-full"),
    (0.5, 200, "passed", "storage autoscaling up to 200 GiB"),
])
def test_source_storage_for_the_wal_the_slot_keeps(clients: tuple[Any, Any], free_gib: float,
                                                   max_allocated: int | None, status: str, words: str) -> None:
    rds, ec2 = clients
    make_instance(rds, "srcdb", make_sg(ec2, [tcp(WORKER)]))
    if max_allocated:
        rds.modify_db_instance(DBInstanceIdentifier="srcdb", MaxAllocatedStorage=max_allocated, ApplyImmediately=True)
    free_space("srcdb", free_gib * GIB)
    result = item(run(clients), "rds_storage")
    assert result.status == status and words in result.detail
    if status != "passed":
        assert "--max-allocated-storage" in result.fix
    assert item(run(clients, need_logical=False), "rds_storage").status == "skipped"


def test_source_storage_without_datapoints_or_permission(clients: tuple[Any, Any]) -> None:
    import boto3

    rds, ec2 = clients
    make_instance(rds, "srcdb", make_sg(ec2, [tcp(WORKER)]))
    assert item(run(clients), "rds_storage").status == "warning"
    cloudwatch = boto3.client("cloudwatch")
    inject_error(cloudwatch, "GetMetricStatistics", "AccessDenied")
    outcome = RdsInspector(rds, ec2, cloudwatch_client=cloudwatch).check(
        RdsSettings(db_instance_identifier="srcdb"), MIGRATION, need_logical_replication=True)
    result = item(outcome, "rds_storage")
    assert result.status == "failed" and "cloudwatch:GetMetricStatistics" in result.fix


@pytest.mark.parametrize(("free_gib", "status"), [(50, "passed"), (11, "warning"), (4, "failed")])
def test_destination_space_of_an_rds_destination(clients: tuple[Any, Any], free_gib: int, status: str) -> None:
    import boto3

    rds, ec2 = clients
    make_instance(rds, "dstdb", make_sg(ec2), group=None)
    free_space("dstdb", free_gib * GIB)
    inspector = RdsInspector(rds, ec2, cloudwatch_client=boto3.client("cloudwatch"))
    result = inspector.destination_space(_endpoint(rds, "dstdb"), 10 * GIB)
    assert result is not None and result.status == status
    assert "10.0 GiB" in result.detail and f"{free_gib:.1f} GiB free" in result.detail
    # Not an RDS endpoint (or not visible with these credentials): the generic item stays.
    assert inspector.destination_space("db.example.com", 10 * GIB) is None
    assert inspector.destination_space("gone.abcdefghij.us-east-1.rds.amazonaws.com", 10 * GIB) is None


# --------------------------------------------------------------------------- response shapes: botocore's models


@pytest.mark.parametrize(("service", "shape", "members"), [
    ("rds", "DBInstance", ["Endpoint", "DbInstancePort", "Engine", "EngineVersion", "DBInstanceStatus",
                           "DBInstanceIdentifier", "PubliclyAccessible", "VpcSecurityGroups", "DBParameterGroups",
                           "DBSubnetGroup", "DBClusterIdentifier", "ReadReplicaSourceDBInstanceIdentifier",
                           "AllocatedStorage", "MaxAllocatedStorage"]),
    ("rds", "DBCluster", ["DBClusterIdentifier", "Endpoint", "ReaderEndpoint", "Port", "Engine", "EngineVersion",
                          "Status", "PubliclyAccessible", "VpcSecurityGroups", "DBClusterParameterGroup",
                          "DBClusterMembers", "ReplicationSourceIdentifier", "DBSubnetGroup", "AllocatedStorage"]),
    ("rds", "DBClusterMember", ["DBInstanceIdentifier", "IsClusterWriter", "DBClusterParameterGroupStatus"]),
    ("rds", "DBParameterGroupStatus", ["DBParameterGroupName", "ParameterApplyStatus"]),
    ("ec2", "SecurityGroupRule", ["SecurityGroupRuleId", "GroupId", "IsEgress", "CidrIpv4", "CidrIpv6",
                                  "Description", "FromPort"]),
    ("ec2", "AuthorizeSecurityGroupIngressResult", ["SecurityGroupRules"]),
    ("ec2", "RevokeSecurityGroupIngressRequest", ["GroupId", "SecurityGroupRuleIds"]),
    ("ec2", "IpPermission", ["IpRanges", "Ipv6Ranges", "PrefixListIds", "UserIdGroupPairs"]),
    ("ec2", "Route", ["DestinationCidrBlock", "DestinationIpv6CidrBlock", "GatewayId", "State"]),
])
def test_the_members_read_exist_in_botocore_models(service: str, shape: str, members: list[str]) -> None:
    import botocore.session

    model = botocore.session.get_session().get_service_model(service).shape_for(shape)
    assert set(members) <= set(model.members), set(members) - set(model.members)


def test_pending_modified_values_names_no_parameter_group() -> None:
    """The DB parameter group is never a pending modification in the API: reading one was dead code."""
    import botocore.session

    model = botocore.session.get_session().get_service_model("rds").shape_for("PendingModifiedValues")
    assert "DBParameterGroupName" not in model.members


def test_denied_cluster_calls_name_their_actions(clients: tuple[Any, Any]) -> None:
    rds, ec2 = clients
    inject_error(rds, "DescribeDBClusters", "AccessDenied")
    first = item(run(clients), "rds_instance")  # no instance of that name: the cluster lookup is denied
    assert first.status == "failed" and "rds:DescribeDBClusters" in first.fix


def test_denied_cluster_parameters_name_their_action(clients: tuple[Any, Any]) -> None:
    rds, ec2 = clients
    _cluster_parameter_group(rds, "maz-params", "postgres15", "1")
    rds.create_db_cluster(DBClusterIdentifier="srcdb", Engine="postgres", EngineVersion="15.4",
                          MasterUsername="admin_user", MasterUserPassword="secret-password-1",
                          DBClusterInstanceClass="db.m6gd.large", StorageType="io1", Iops=1000, AllocatedStorage=100,
                          VpcSecurityGroupIds=[make_sg(ec2, [tcp(WORKER)])], DBClusterParameterGroupName="maz-params")
    inject_error(rds, "DescribeDBClusterParameters", "AccessDenied")
    result = item(run(clients), "rds_logical_replication")
    assert result.status == "failed" and "rds:DescribeDBClusterParameters" in result.fix


@pytest.mark.parametrize(("operation", "action", "rule"), [
    ("GetManagedPrefixListEntries", "ec2:GetManagedPrefixListEntries", "prefix list"),
    ("DescribeNetworkInterfaces", "ec2:DescribeNetworkInterfaces", "group reference"),
])
def test_denied_rule_resolution_is_named_in_the_failure(clients: tuple[Any, Any], operation: str, action: str,
                                                        rule: str) -> None:
    rds, ec2 = clients
    if rule == "prefix list":
        pl_id = ec2.create_managed_prefix_list(PrefixListName="office", MaxEntries=5, AddressFamily="IPv4",
                                               Entries=[{"Cidr": "203.0.0.0/16"}])["PrefixList"]["PrefixListId"]
        perm: dict[str, Any] = {"PrefixListIds": [{"PrefixListId": pl_id}]}
    else:
        vpc_id = ec2.create_vpc(CidrBlock="10.3.0.0/16")["Vpc"]["VpcId"]
        perm = {"UserIdGroupPairs": [{"GroupId": ec2.create_security_group(
            GroupName="workers", Description="w", VpcId=vpc_id)["GroupId"]}]}
    make_instance(rds, "srcdb", make_sg(ec2, [{"IpProtocol": "tcp", "FromPort": 5432, "ToPort": 5432, **perm}]))
    inject_error(ec2, operation, "UnauthorizedOperation")
    result = item(run(clients), "rds_security_group")
    assert result.status == "failed" and "could not resolve every rule" in result.detail
    assert f"give the AWS identity the IAM action {action}" in result.fix


def test_cleanup_without_rule_listing_still_removes_the_recorded_ids(clients: tuple[Any, Any]) -> None:
    rds, ec2 = clients
    sg_id = make_sg(ec2)
    make_instance(rds, "srcdb", sg_id)
    settings = RdsSettings(db_instance_identifier="srcdb", worker_cidrs=[WORKER], manage_security_group=True)
    inspector = RdsInspector(*clients)
    added = inspector.check(settings, MIGRATION, need_logical_replication=False, record=Recorder()).added_rules
    inject_error(ec2, "DescribeSecurityGroupRules", "UnauthorizedOperation")
    cleaned = inspector.clean_up(settings, MIGRATION, recorded=added)
    assert cleaned.removed == added and ingress_cidrs(ec2, sg_id) == []
    assert [p.action for p in cleaned.problems] == ["ec2:DescribeSecurityGroupRules"]
