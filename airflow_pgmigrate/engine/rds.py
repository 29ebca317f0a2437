"""The Amazon RDS side of the precheck, through plain boto3 clients.

Checks what only the AWS API can tell: the database (a DB instance, a Multi-AZ DB cluster or Aurora PostgreSQL)
exists and runs a supported PostgreSQL, the source connection reaches its writable primary (not a read replica, a
reader endpoint or an RDS Proxy), its parameter group enables logical replication in effect, it is reachable the way
the workers connect, and its security groups admit the workers on the database port. It may add the missing ingress
rules itself: each is recorded before it is added and carries the migration's description, so the end of the
migration removes exactly those rules, even when the record was lost. Every AWS error becomes a failed item naming
the IAM action or setting and the fix. No Airflow import here; boto3 is only used through the clients given.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

from airflow_pgmigrate.engine.rds_network import IngressView, internet_routes, parse_network
from airflow_pgmigrate.engine.rds_storage import CHECK_STORAGE, check_source_storage, destination_space
from airflow_pgmigrate.engine.rds_target import (
    NOT_FOUND_CODES,
    POSTGRES_ENGINES,
    AwsCallFailed,
    RdsTarget,
    aws_call,
    error_code,
    target_from_cluster,
    target_from_instance,
)
from airflow_pgmigrate.engine.results import CheckResult, failed, passed, skipped, warning

if TYPE_CHECKING:
    from airflow_pgmigrate.config import RdsSettings

MIN_ENGINE_VERSION: tuple[int, ...] = (10, 4)
#: Logical decoding on a standby (an RDS read replica) needs PostgreSQL 16.
MIN_STANDBY_DECODING_VERSION = 16
LOGICAL_REPLICATION_PARAM = "rds.logical_replication"
RULE_DESCRIPTION_PREFIX = "airflow-pgmigrate"

CHECK_INSTANCE = "rds_instance"
CHECK_ENDPOINT = "rds_endpoint"
CHECK_LOGICAL_REPLICATION = "rds_logical_replication"
CHECK_PUBLIC_ACCESS = "rds_public_access"
CHECK_SECURITY_GROUP = "rds_security_group"
RDS_CHECKS = (CHECK_INSTANCE, CHECK_ENDPOINT, CHECK_LOGICAL_REPLICATION, CHECK_PUBLIC_ACCESS, CHECK_SECURITY_GROUP,
              CHECK_STORAGE)

_RDS_HOST = re.compile(r"\.rds\.amazonaws\.com(\.cn)?\.?$", re.IGNORECASE)
_PROXY_HOST = re.compile(r"\.proxy-[a-z0-9]+\.[a-z0-9-]+\.rds\.amazonaws\.com(\.cn)?\.?$", re.IGNORECASE)


def rule_description(migration_name: str) -> str:
    """The description every rule added for ``migration_name`` carries: how the cleanup finds it again."""
    return f"{RULE_DESCRIPTION_PREFIX} {migration_name}"[:255]


@dataclass(frozen=True)
class IngressRule:
    """A security-group ingress rule the precheck added (``rule_id`` once AWS answered): what to revoke at the end."""

    group_id: str
    cidr: str
    port: int
    description: str = ""
    rule_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> IngressRule:
        return cls(group_id=str(d["group_id"]), cidr=str(d["cidr"]), port=int(d["port"]),
                   description=str(d.get("description") or ""), rule_id=d.get("rule_id") or None)

    @property
    def key(self) -> tuple[str, str, int]:
        return self.group_id, str(ipaddress.ip_network(self.cidr, strict=False)), self.port

    def ip_permission(self) -> dict[str, Any]:
        """The EC2 ``IpPermissions`` item of this rule (IPv4 or IPv6 range as the CIDR says)."""
        network = ipaddress.ip_network(self.cidr, strict=False)
        perm: dict[str, Any] = {"IpProtocol": "tcp", "FromPort": self.port, "ToPort": self.port}
        key, cidr_key = ("Ipv6Ranges", "CidrIpv6") if network.version == 6 else ("IpRanges", "CidrIp")
        entry: dict[str, str] = {cidr_key: str(network)}
        if self.description:
            entry["Description"] = self.description
        perm[key] = [entry]
        return perm


@dataclass(frozen=True)
class SourceFacts:
    """What the source connection says about the server it reached (None: the connection failed)."""

    host: str
    port: int
    wal_level: str | None = None
    in_recovery: bool | None = None


@dataclass
class RdsCheckOutcome:
    """The RDS check results, the ingress rules added on the way, and the database endpoint when found."""

    results: list[CheckResult]
    added_rules: list[IngressRule]
    endpoint: tuple[str, int] | None


@dataclass
class CleanupOutcome:
    """What the end of the migration removed, and what it could not (each with its fix)."""

    removed: list[IngressRule] = field(default_factory=list)
    problems: list[AwsCallFailed] = field(default_factory=list)
    #: Recorded rules that are gone now (removed here or earlier): the record may forget them.
    settled: list[IngressRule] = field(default_factory=list)


def parse_engine_version(version: str) -> tuple[int, ...]:
    """``"15.4"`` -> ``(15, 4)``; ``"9.6.22"`` -> ``(9, 6, 22)``; suffixes such as ``-R2`` are ignored."""
    match = re.match(r"\s*(\d+(?:\.\d+)*)", version or "")
    if not match:
        return ()
    return tuple(int(part) for part in match.group(1).split("."))


def _authorize_command(group_id: str, cidr: str, port: int, region: str | None) -> str:
    network = ipaddress.ip_network(cidr, strict=False)
    range_key = "Ipv6Ranges=[{CidrIpv6=%s}]" if network.version == 6 else "IpRanges=[{CidrIp=%s}]"
    perm = f"IpProtocol=tcp,FromPort={port},ToPort={port},{range_key % network}"
    region_opt = f" --region {region}" if region else ""
    return f"aws ec2 authorize-security-group-ingress --group-id {group_id} --ip-permissions {shlex.quote(perm)}{region_opt}"


def _aws_failed(name: str, exc: AwsCallFailed, objects: list[str]) -> CheckResult:
    return failed(name, exc.detail(), exc.fix(), [*objects, exc.action])


RecordRules = Callable[[list[IngressRule]], None]


class RdsInspector:
    """Runs the RDS precheck items with ``rds`` and ``ec2`` boto3 clients (or a factory that makes them on first
    use, so that a missing region or credentials become a failed item), and removes added ingress rules."""

    def __init__(self, rds_client: Any = None, ec2_client: Any = None, *, cloudwatch_client: Any = None,
                 client_factory: Callable[[str], Any] | None = None) -> None:
        given = (("rds", rds_client), ("ec2", ec2_client), ("cloudwatch", cloudwatch_client))
        self._clients: dict[str, Any] = {k: v for k, v in given if v is not None}
        self._factory = client_factory

    def client(self, service: str) -> Any:
        """The boto3 client of ``service``; a failure to make it (no region, no credentials) is AwsCallFailed."""
        if service not in self._clients:
            if self._factory is None:
                raise AwsCallFailed(f"{service} client", RuntimeError(f"no {service} client was given"))
            self._clients[service] = self._make(service)
        return self._clients[service]

    def _make(self, service: str) -> Any:
        assert self._factory is not None
        try:
            return self._factory(service)
        except Exception as exc:  # noqa: BLE001 - NoRegionError and friends come from botocore
            raise AwsCallFailed(f"creating the AWS {service} client", exc) from exc

    @property
    def rds(self) -> Any:
        return self.client("rds")

    @property
    def ec2(self) -> Any:
        return self.client("ec2")

    # ------------------------------------------------------------------ lookups

    def _region(self, settings: RdsSettings) -> str | None:
        if settings.region:
            return settings.region
        client = self._clients.get("rds")
        return getattr(getattr(client, "meta", None), "region_name", None)

    def describe_target(self, identifier: str) -> RdsTarget | None:
        """The DB instance named ``identifier``, else the DB cluster of that name (Multi-AZ or Aurora); None if
        neither exists."""
        rds = self.rds
        try:
            found = aws_call("rds:DescribeDBInstances", rds.describe_db_instances, DBInstanceIdentifier=identifier)
        except AwsCallFailed as exc:
            if exc.code not in NOT_FOUND_CODES:
                raise
            found = {}
        instances = found.get("DBInstances") or []
        if instances:
            instance = dict(instances[0])
            cluster = self._cluster(str(instance["DBClusterIdentifier"])) if instance.get("DBClusterIdentifier") \
                else None
            return target_from_instance(instance, cluster)
        cluster = self._cluster(identifier)
        if cluster is None:
            return None
        return target_from_cluster(cluster, self._writer_instance(cluster))

    def _cluster(self, identifier: str) -> dict[str, Any] | None:
        try:
            found = aws_call("rds:DescribeDBClusters", self.rds.describe_db_clusters, DBClusterIdentifier=identifier)
        except AwsCallFailed as exc:
            if exc.code in NOT_FOUND_CODES:
                return None
            raise
        clusters = found.get("DBClusters") or []
        return dict(clusters[0]) if clusters else None

    def _writer_instance(self, cluster: dict[str, Any]) -> dict[str, Any] | None:
        writer = next((m for m in cluster.get("DBClusterMembers") or [] if m.get("IsClusterWriter")), None)
        if writer is None:
            return None
        found = aws_call("rds:DescribeDBInstances", self.rds.describe_db_instances,
                         DBInstanceIdentifier=writer["DBInstanceIdentifier"])
        instances = found.get("DBInstances") or []
        return dict(instances[0]) if instances else None

    def _parameter_value(self, group_name: str, parameter: str, *, cluster: bool = False) -> str | None:
        """The value of ``parameter`` in a DB (or DB cluster) parameter group (None when unset), every page read."""
        operation = "describe_db_cluster_parameters" if cluster else "describe_db_parameters"
        action = "rds:DescribeDBClusterParameters" if cluster else "rds:DescribeDBParameters"
        key = "DBClusterParameterGroupName" if cluster else "DBParameterGroupName"
        paginator = self.rds.get_paginator(operation)
        pages = aws_call(action, lambda: list(paginator.paginate(**{key: group_name})))
        for page in pages:
            for param in page.get("Parameters") or []:
                if param.get("ParameterName") == parameter:
                    value = param.get("ParameterValue")
                    return None if value is None else str(value)
        return None

    def _parameter_group_family(self, group_name: str, *, cluster: bool = False) -> str | None:
        try:
            if cluster:
                groups = self.rds.describe_db_cluster_parameter_groups(
                    DBClusterParameterGroupName=group_name).get("DBClusterParameterGroups")
            else:
                groups = self.rds.describe_db_parameter_groups(DBParameterGroupName=group_name).get(
                    "DBParameterGroups")
        except Exception:  # noqa: BLE001 - the family only improves the fix text
            return None
        return str(groups[0].get("DBParameterGroupFamily")) if groups else None

    # ------------------------------------------------------------------ items

    def check(self, settings: RdsSettings, migration_name: str, *, need_logical_replication: bool,
              source: SourceFacts | None = None, record: RecordRules | None = None) -> RdsCheckOutcome:
        """Run the RDS items. With ``settings.manage_security_group``, add missing ingress rules: each is given to
        ``record`` before it is added (and again with its rule id); without ``record`` none is added."""
        ident = settings.db_instance_identifier
        try:
            target = self.describe_target(ident)
        except AwsCallFailed as exc:
            return self._unreachable(ident, failed(CHECK_INSTANCE, f"cannot describe {ident!r}: {exc.detail()}",
                                                   exc.fix(), [ident, exc.action]), "could not be described")
        if target is None:
            region = self._region(settings)
            return self._unreachable(ident, failed(
                CHECK_INSTANCE, f"no DB instance or DB cluster {ident!r} in region {region or '(default)'}",
                "check rds.db_instance_identifier and rds.region against the RDS console (Databases list) or "
                f"`aws rds describe-db-instances --region {region or '<region>'}`; a database of another AWS account "
                "needs that account's credentials (role_arn in the AWS connection's extras)", [ident]), "not found")
        region = self._region(settings)
        results = [self._check_instance(target, region), self._check_endpoint(target, source, need_logical_replication)]
        if not need_logical_replication:
            results.append(skipped(CHECK_LOGICAL_REPLICATION, "incremental migration not selected"))
        elif target.engine not in POSTGRES_ENGINES:
            results.append(skipped(CHECK_LOGICAL_REPLICATION, f"engine is {target.engine!r}, not PostgreSQL"))
        else:
            results.append(self._guarded(CHECK_LOGICAL_REPLICATION, [ident],
                                         lambda: self._check_logical_replication(target, region, source)))
        results.append(self._guarded(CHECK_PUBLIC_ACCESS, [ident],
                                     lambda: self._check_public_access(target, settings, region)))
        added: list[IngressRule] = []
        results.append(self._guarded(CHECK_SECURITY_GROUP, [ident], lambda: self._check_security_group(
            target, settings, migration_name, region, record, added)))
        results.append(self._check_storage(target, need_logical_replication, region))
        endpoint = (target.address, target.port) if target.address else None
        return RdsCheckOutcome(results=results, added_rules=added, endpoint=endpoint)

    def _check_storage(self, target: RdsTarget, incremental: bool, region: str | None) -> CheckResult:
        if "cloudwatch" not in self._clients and self._factory is None:
            return skipped(CHECK_STORAGE, "no CloudWatch client was given")
        return self._guarded(CHECK_STORAGE, [target.identifier], lambda: check_source_storage(
            self.client("cloudwatch"), target, incremental, region))

    def destination_space(self, host: str, data_bytes: int) -> CheckResult | None:
        """``destination_space`` read from CloudWatch when the destination is an RDS instance visible with these
        credentials; None otherwise."""
        if "cloudwatch" not in self._clients and self._factory is None:
            return None
        try:
            return destination_space(self.rds, self.client("cloudwatch"), host, data_bytes)
        except AwsCallFailed as exc:
            return _aws_failed("destination_space", exc, [])

    @staticmethod
    def _guarded(name: str, objects: list[str], run: Callable[[], CheckResult]) -> CheckResult:
        try:
            return run()
        except AwsCallFailed as exc:
            return _aws_failed(name, exc, objects)

    @staticmethod
    def _unreachable(ident: str, first: CheckResult, why: str) -> RdsCheckOutcome:
        reason = f"{ident!r} {why}"
        return RdsCheckOutcome([first, *(skipped(n, reason) for n in RDS_CHECKS[1:])], [], None)

    def _check_instance(self, target: RdsTarget, region: str | None) -> CheckResult:
        ident, version = target.identifier, target.version
        region_opt = f" --region {region}" if region else ""
        what = f"{target.kind} {ident!r}"
        if target.engine not in POSTGRES_ENGINES:
            return failed(CHECK_INSTANCE, f"{what} runs engine {target.engine!r}, not PostgreSQL",
                          "point rds.db_instance_identifier at an RDS for PostgreSQL DB instance or Multi-AZ DB "
                          "cluster, or an Aurora PostgreSQL cluster", [ident])
        parsed = parse_engine_version(version)
        minimum = ".".join(map(str, MIN_ENGINE_VERSION))
        if not parsed or parsed < MIN_ENGINE_VERSION:
            command = "modify-db-cluster --db-cluster-identifier" if target.is_cluster else \
                "modify-db-instance --db-instance-identifier"
            return failed(CHECK_INSTANCE, f"{what} runs PostgreSQL {version}, older than {minimum}",
                          f"upgrade it: aws rds {command} {ident} --engine-version <a version >= {minimum}> "
                          f"--allow-major-version-upgrade --apply-immediately{region_opt}", [ident])
        if target.status != "available":
            wait = "db-cluster-available --db-cluster-identifier" if target.is_cluster else \
                "db-instance-available --db-instance-identifier"
            return warning(CHECK_INSTANCE, f"{what} (PostgreSQL {version}) is {target.status!r}, not available",
                           f"wait until the RDS console shows it Available: aws rds wait {wait} {ident}{region_opt}",
                           [ident])
        return passed(CHECK_INSTANCE, f"{what} runs {target.engine} {version} and is available")

    def _check_endpoint(self, target: RdsTarget, source: SourceFacts | None, incremental: bool) -> CheckResult:
        """The source connection reaches this database's writable primary (item 7 of the RDS side)."""
        ident = target.identifier
        endpoint = f"{target.cluster_address or target.address}:{target.port}"
        if source is None:
            return skipped(CHECK_ENDPOINT, "the source connection is not known")
        host = source.host.lower().rstrip(".")
        severity = failed if incremental else warning
        if _PROXY_HOST.search(host):
            return severity(CHECK_ENDPOINT, f"the source connection goes to the RDS Proxy endpoint {host}: a proxy "
                            "refuses replication connections (the incremental sync's slot) and may switch sessions "
                            "between server connections",
                            f"point the source connection at the database endpoint {endpoint}", [host])
        replica = self._replica_problem(target, source)
        if replica:
            return severity(CHECK_ENDPOINT, replica + ": the publication, the replication slot (before PostgreSQL "
                            f"{MIN_STANDBY_DECODING_VERSION}) and the cutover's freeze need the writable primary",
                            f"point rds.db_instance_identifier and the source connection at the primary "
                            f"({target.replica_of or 'the writer of the cluster'}), endpoint of the writer", [ident])
        if target.reader_address and host == target.reader_address.lower():
            return severity(CHECK_ENDPOINT, f"the source connection goes to the reader endpoint {host} of cluster "
                            f"{target.cluster_id!r}", f"use the cluster (writer) endpoint {endpoint}", [host])
        if host in target.endpoints():
            if source.port != target.port:
                return failed(CHECK_ENDPOINT, f"the source connection uses port {source.port}, the database listens "
                              f"on {target.port}", f"set the source connection's port to {target.port}", [host])
            return passed(CHECK_ENDPOINT, f"the source connection reaches {target.kind} {ident!r} at its endpoint "
                          f"{host}:{source.port}" + (", a writable primary" if source.in_recovery is False else ""))
        if _RDS_HOST.search(host):
            return failed(CHECK_ENDPOINT, f"the source connection goes to {host}, another RDS endpoint than "
                          f"{target.kind} {ident!r} ({endpoint})",
                          f"point the source connection at {endpoint}, or rds.db_instance_identifier at the "
                          "database the connection reaches", [host, ident])
        return warning(CHECK_ENDPOINT, f"cannot confirm that the source connection's host {host} (an address, an "
                       f"alias or a tunnel) is {target.kind} {ident!r} ({endpoint})",
                       f"make sure {host}:{source.port} leads to {endpoint}; the RDS checks are about that database",
                       [host, ident])

    @staticmethod
    def _replica_problem(target: RdsTarget, source: SourceFacts) -> str:
        if target.replica_of:
            return f"{target.kind} {target.identifier!r} is a read replica of {target.replica_of!r}"
        if not target.writer:
            return f"{target.kind} {target.identifier!r} is a reader of cluster {target.cluster_id!r}"
        if source.in_recovery:
            return "the source server is a standby (pg_is_in_recovery() is true)"
        return ""

    def _check_logical_replication(self, target: RdsTarget, region: str | None,
                                   source: SourceFacts | None) -> CheckResult:
        ident = target.identifier
        region_opt = f" --region {region}" if region else ""
        reboot = target.reboot_command(region_opt)
        if not target.parameter_groups:
            return failed(CHECK_LOGICAL_REPLICATION, f"{target.kind} {ident!r} reports no parameter group",
                          "attach a custom parameter group with rds.logical_replication=1 and reboot", [ident])
        live = source.wal_level if source is not None else None
        problems: list[str] = []
        fixes: list[str] = []
        objects: list[str] = []
        notes: list[str] = []
        for group in target.parameter_groups:
            value = self._parameter_value(group.name, LOGICAL_REPLICATION_PARAM, cluster=group.cluster)
            kind = "cluster parameter group" if group.cluster else "parameter group"
            if value != "1":
                objects.append(group.name)
                shown = "not set (default 0)" if value is None else repr(value)
                problems.append(f"{LOGICAL_REPLICATION_PARAM} is {shown} in {kind} {group.name!r}")
                fixes += self._set_parameter_fix(target, group.name, group.cluster, region_opt, reboot)
            elif live is not None and live != "logical":
                objects.append(group.name)
                problems.append(f"{LOGICAL_REPLICATION_PARAM}=1 in {kind} {group.name!r} is not in effect yet: the "
                                f"source runs with wal_level={live} (ParameterApplyStatus "
                                f"{group.apply_status or 'n/a'})")
                fixes.append(f"reboot to apply it (console: Actions > Reboot): {reboot}")
            elif live is None and group.apply_status not in ("", "in-sync"):
                notes.append(f"{kind} {group.name!r} is {group.apply_status!r} and the source's wal_level could not "
                             "be read")
            elif group.apply_status not in ("", "in-sync"):
                notes.append(f"{kind} {group.name!r} is {group.apply_status!r} for other parameters (wal_level is "
                             "logical already)")
        if problems:
            return failed(CHECK_LOGICAL_REPLICATION, "; ".join(problems), "\n".join(dict.fromkeys(fixes)),
                          [ident, *objects])
        names = ", ".join(g.name for g in target.parameter_groups)
        if notes and live is None:
            return warning(CHECK_LOGICAL_REPLICATION, f"{LOGICAL_REPLICATION_PARAM}=1 in {names}, but " +
                           "; ".join(notes), f"fix the source connection; if wal_level is not logical, {reboot}",
                           [ident])
        return passed(CHECK_LOGICAL_REPLICATION, f"{LOGICAL_REPLICATION_PARAM}=1 and in effect ({names}"
                      + (", wal_level=logical on the source" if live else "") + ")"
                      + (f"; {'; '.join(notes)}" if notes else ""))

    def _set_parameter_fix(self, target: RdsTarget, name: str, cluster: bool, region_opt: str,
                           reboot: str) -> list[str]:
        noun, flag = ("db-cluster-parameter-group", "--db-cluster-parameter-group-name") if cluster else \
            ("db-parameter-group", "--db-parameter-group-name")
        set_param = (f"aws rds modify-{noun} {flag} {{group}} --parameters ParameterName={LOGICAL_REPLICATION_PARAM},"
                     f"ParameterValue=1,ApplyMethod=pending-reboot{region_opt}")
        if not name.startswith("default."):
            where = "Parameter groups" if not cluster else "Parameter groups (DB cluster parameter group)"
            return [f"set {LOGICAL_REPLICATION_PARAM}=1 in {name!r} (console: RDS > {where} > {name} > Edit), "
                    "then reboot:", set_param.format(group=name), reboot]
        family = self._parameter_group_family(name, cluster=cluster) or "<family of the default group, e.g. postgres15>"
        custom = f"{target.cluster_id or target.identifier}-pgmigrate"[:255]
        if cluster:
            attach = (f"aws rds modify-db-cluster --db-cluster-identifier {target.cluster_id or target.identifier} "
                      f"--db-cluster-parameter-group-name {custom} --apply-immediately{region_opt}")
        else:
            attach = (f"aws rds modify-db-instance --db-instance-identifier {target.identifier} "
                      f"--db-parameter-group-name {custom} --apply-immediately{region_opt}")
        return [f"the default group {name!r} cannot be modified: create a custom group, set the parameter, attach it "
                "and reboot (console: RDS > Parameter groups > Create; then Modify the database):",
                f"aws rds create-{noun} {flag} {custom} --db-parameter-group-family {family} "
                f"--description 'logical replication for migration'{region_opt}",
                set_param.format(group=custom), attach, reboot]

    def _find_subnets(self, target: RdsTarget) -> None:
        """A cluster names its DB subnet group only: read its subnets (a group AWS no longer knows has none)."""
        if target.subnet_ids or not target.subnet_group:
            return
        try:
            found = aws_call("rds:DescribeDBSubnetGroups", self.rds.describe_db_subnet_groups,
                             DBSubnetGroupName=target.subnet_group)
        except AwsCallFailed as exc:
            if exc.code == "DBSubnetGroupNotFoundFault":
                return
            raise
        for group in found.get("DBSubnetGroups") or []:
            target.subnet_ids = [str(s["SubnetIdentifier"]) for s in group.get("Subnets") or []]
            target.vpc_id = group.get("VpcId")

    def _check_public_access(self, target: RdsTarget, settings: RdsSettings, region: str | None) -> CheckResult:
        ident = target.identifier
        if not settings.connect_over_internet:
            return passed(CHECK_PUBLIC_ACCESS, f"workers connect privately (publicly accessible: {target.public})")
        region_opt = f" --region {region}" if region else ""
        if not target.public:
            command = (f"aws rds modify-db-cluster --db-cluster-identifier {ident}" if target.kind ==
                       "Multi-AZ DB cluster" else f"aws rds modify-db-instance --db-instance-identifier {ident}")
            return failed(CHECK_PUBLIC_ACCESS,
                          f"{target.kind} {ident!r} is not publicly accessible but rds.connect_over_internet is true",
                          "console: Modify > Connectivity > Public access: Publicly accessible; or "
                          f"{command} --publicly-accessible --apply-immediately{region_opt} (or set "
                          "rds.connect_over_internet: false when the workers reach the VPC privately)", [ident])
        self._find_subnets(target)
        if not target.subnet_ids:
            return passed(CHECK_PUBLIC_ACCESS, f"{target.kind} {ident!r} is publicly accessible (its subnets were "
                          "not reported, their routes not checked)")
        routes = internet_routes(self.ec2, target.subnet_ids, target.vpc_id)
        private = [s for s in target.subnet_ids if not routes.get(s)]
        if private:
            return failed(CHECK_PUBLIC_ACCESS,
                          f"{target.kind} {ident!r} is publicly accessible, but subnet(s) {', '.join(private)} of its "
                          f"subnet group {target.subnet_group!r} have no route to an internet gateway: its public "
                          "address cannot be reached from the internet when it runs (or fails over) there",
                          "add a route 0.0.0.0/0 to the VPC's internet gateway in those subnets' route tables "
                          "(console: VPC > Route tables > Edit routes), e.g. aws ec2 create-route --route-table-id "
                          f"<rtb-id> --destination-cidr-block 0.0.0.0/0 --gateway-id <igw-id>{region_opt}; or set "
                          "rds.connect_over_internet: false when the workers reach the VPC privately",
                          [ident, *private])
        gateways = ", ".join(sorted({str(g) for g in routes.values()}))
        return passed(CHECK_PUBLIC_ACCESS, f"{target.kind} {ident!r} is publicly accessible and its subnets route to "
                      f"the internet gateway {gateways}")

    def _check_security_group(self, target: RdsTarget, settings: RdsSettings, migration_name: str,
                              region: str | None, record: RecordRules | None, added: list[IngressRule]) -> CheckResult:
        ident, port = target.identifier, target.port
        if not settings.worker_cidrs:
            return warning(CHECK_SECURITY_GROUP, "no worker CIDR blocks configured, cannot verify the security group",
                           "list rds.worker_cidrs", [ident])
        group_ids = target.security_groups
        if not group_ids:
            return failed(CHECK_SECURITY_GROUP, f"{target.kind} {ident!r} has no active VPC security group",
                          "attach a VPC security group: console Modify > Connectivity > Security group", [ident])
        described = aws_call("ec2:DescribeSecurityGroups", self.ec2.describe_security_groups, GroupIds=group_ids)
        view = IngressView(self.ec2, list(described.get("SecurityGroups") or []), port)
        ours = rule_description(migration_name)
        admitted: dict[str, str] = {}
        missing: list[str] = []
        for cidr in settings.worker_cidrs:
            net = parse_network(cidr)
            if net is None:
                return failed(CHECK_SECURITY_GROUP, f"worker CIDR {cidr!r} is not a CIDR block",
                              "fix rds.worker_cidrs", [cidr])
            found = view.admission(net)
            if found is None:
                missing.append(str(net))
            else:
                admitted[str(net)] = f"{found.group_id} by {found.via}" + (
                    ", a rule this migration added earlier (removed at its end)" if found.description == ours else "")
        groups_text = ", ".join(group_ids)
        admitted_text = "; ".join(f"{c}: {how}" for c, how in admitted.items())
        unresolved = "".join(f"; could not resolve every rule: {p.detail()}" for p in view.problems)
        if not missing:
            return passed(CHECK_SECURITY_GROUP, f"security group(s) {groups_text} admit every worker CIDR on port "
                          f"{port} ({admitted_text})")
        if not settings.manage_security_group:
            commands = [_authorize_command(group_ids[0], cidr, port, region) for cidr in missing]
            return failed(CHECK_SECURITY_GROUP,
                          f"worker CIDR(s) {', '.join(missing)} not admitted on port {port} by the security group(s) "
                          f"{groups_text} of {target.kind} {ident!r}{unresolved}",
                          "add an inbound rule (console: EC2 > Security Groups > "
                          f"{group_ids[0]} > Edit inbound rules: PostgreSQL, TCP {port}), or set "
                          "rds.manage_security_group: true to let the migration add and later remove it:\n"
                          + "\n".join(commands + [p.fix() for p in view.problems]),
                          [*missing, *group_ids])
        return self._add_rules(target, group_ids[0], missing, ours, region, record, added, admitted_text)

    def _add_rules(self, target: RdsTarget, group_id: str, missing: list[str], description: str, region: str | None,
                   record: RecordRules | None, added: list[IngressRule], admitted_text: str) -> CheckResult:
        """Record each missing rule, add it, record it again with its rule id; never add what cannot be recorded."""
        port = target.port
        planned = [IngressRule(group_id, cidr, port, description) for cidr in missing]
        commands = "\n".join(_authorize_command(group_id, r.cidr, port, region) for r in planned)
        if record is None:
            return failed(CHECK_SECURITY_GROUP,
                          f"worker CIDR(s) {', '.join(missing)} not admitted on port {port}, and no rule was added: "
                          "the migration records each rule it adds in the destination's state before adding it, and "
                          "the destination cannot be reached",
                          "fix the destination connection and run the precheck again, or add the rule(s) by hand:\n"
                          + commands, [*missing, group_id])
        try:
            record(planned)
        except Exception as exc:  # noqa: BLE001 - any failure to record means: add nothing
            return failed(CHECK_SECURITY_GROUP, f"no rule was added: recording the rule(s) to add for "
                          f"{', '.join(missing)} in the destination's state failed: {exc}",
                          "fix the destination (its state schema must be writable) and run the precheck again, or "
                          "add the rule(s) by hand:\n" + commands, [*missing, group_id])
        errors: list[AwsCallFailed] = []
        for rule in planned:
            try:
                response = aws_call("ec2:AuthorizeSecurityGroupIngress", self.ec2.authorize_security_group_ingress,
                                    GroupId=group_id, IpPermissions=[rule.ip_permission()])
            except AwsCallFailed as exc:
                if exc.code != "InvalidPermission.Duplicate":  # appeared meanwhile: admitted, and not ours
                    errors.append(exc)
                continue
            ids = [str(r["SecurityGroupRuleId"]) for r in response.get("SecurityGroupRules") or []
                   if r.get("SecurityGroupRuleId")]
            added.append(replace(rule, rule_id=ids[0] if ids else None))
        if added:
            try:
                record(added)
            except Exception:  # noqa: BLE001 - the planned record and the rule's description still find them
                pass
        if errors:
            done = f" (added: {', '.join(r.cidr for r in added)})" if added else ""
            return failed(CHECK_SECURITY_GROUP, f"could not add ingress rule(s) to {group_id}{done}: "
                          + "; ".join(e.detail() for e in errors),
                          "\n".join(dict.fromkeys(e.fix() for e in errors)) + "\nor add the rule(s) by hand:\n"
                          + commands, [*missing, group_id, *{e.action for e in errors}])
        return passed(CHECK_SECURITY_GROUP,
                      f"added ingress rule(s) for {', '.join(r.cidr for r in added) or ', '.join(missing)} on port "
                      f"{port} to {group_id} (removed at the end of the migration)"
                      + (f"; already admitted: {admitted_text}" if admitted_text else ""))

    # ------------------------------------------------------------------ cleanup

    def find_rules(self, group_ids: Iterable[str], description: str) -> list[IngressRule]:
        """Inbound rules of ``group_ids`` whose description is exactly ``description`` (how the migration marks
        the rules it adds), with their rule ids."""
        ids = sorted(set(group_ids))
        if not ids:
            return []
        paginator = self.ec2.get_paginator("describe_security_group_rules")
        pages = aws_call("ec2:DescribeSecurityGroupRules", lambda: list(paginator.paginate(
            Filters=[{"Name": "group-id", "Values": ids}])))
        found: list[IngressRule] = []
        for page in pages:
            for rule in page.get("SecurityGroupRules") or []:
                cidr = rule.get("CidrIpv4") or rule.get("CidrIpv6")
                if rule.get("IsEgress") or rule.get("Description") != description or not cidr:
                    continue
                found.append(IngressRule(str(rule["GroupId"]), str(cidr), int(rule.get("FromPort") or 0),
                                         description, str(rule["SecurityGroupRuleId"])))
        return found

    def remove_ingress_rules(self, rules: Iterable[IngressRule]) -> list[IngressRule]:
        """Revoke rules the precheck added: by rule id when known, else the rule of that group, CIDR and port that
        carries the rule's description. A rule (or group) already gone is skipped; returns the rules revoked."""
        revoked: list[IngressRule] = []
        for rule in rules:
            for exact in self._exact(rule):
                if self._revoke(exact):
                    revoked.append(exact)
        return revoked

    def _exact(self, rule: IngressRule) -> list[IngressRule]:
        if rule.rule_id:
            return [rule]
        if not rule.description:
            return []  # a rule without our mark could be anyone's: never revoked by its CIDR alone
        try:
            candidates = self.find_rules([rule.group_id], rule.description)
        except AwsCallFailed as exc:
            if exc.code == "InvalidGroup.NotFound":
                return []
            raise
        return [c for c in candidates if c.key == rule.key]

    def _revoke(self, rule: IngressRule) -> bool:
        try:
            aws_call("ec2:RevokeSecurityGroupIngress", self.ec2.revoke_security_group_ingress,
                     GroupId=rule.group_id, SecurityGroupRuleIds=[rule.rule_id])
        except AwsCallFailed as exc:
            if exc.code in ("InvalidPermission.NotFound", "InvalidGroup.NotFound", "InvalidSecurityGroupRuleId.NotFound"):
                return False
            raise
        return True

    def clean_up(self, settings: RdsSettings, migration_name: str, recorded: list[IngressRule]) -> CleanupOutcome:
        """Remove every rule this migration added: those recorded, and those found by their description in the
        database's security groups (the record may have been lost). Never raises for an AWS error."""
        outcome = CleanupOutcome()
        groups = {r.group_id for r in recorded}
        try:
            target = self.describe_target(settings.db_instance_identifier)
            groups.update(target.security_groups if target else [])
        except AwsCallFailed as exc:
            outcome.problems.append(exc)
        try:
            found = self.find_rules(groups, rule_description(migration_name))
        except AwsCallFailed as exc:
            outcome.problems.append(exc)
            found = []
        known_ids = {r.rule_id for r in recorded if r.rule_id}
        exact = [r for r in recorded if r.rule_id] + [r for r in found if r.rule_id not in known_ids]
        for rule in exact:
            try:
                if self._revoke(rule):
                    outcome.removed.append(rule)
                outcome.settled.append(rule)
            except AwsCallFailed as exc:
                outcome.problems.append(exc)
        covered = {r.key for r in exact}
        if not any(p.action == "ec2:DescribeSecurityGroupRules" for p in outcome.problems):
            # A planned rule without id whose rule was not found by its description was never added (or is gone).
            outcome.settled += [r for r in recorded if not r.rule_id]
        else:
            outcome.settled += [r for r in recorded if not r.rule_id and r.key in covered]
        return outcome


__all__ = [
    "CHECK_ENDPOINT",
    "CHECK_INSTANCE",
    "CHECK_LOGICAL_REPLICATION",
    "CHECK_PUBLIC_ACCESS",
    "CHECK_SECURITY_GROUP",
    "CHECK_STORAGE",
    "MIN_ENGINE_VERSION",
    "RDS_CHECKS",
    "CleanupOutcome",
    "IngressRule",
    "RdsCheckOutcome",
    "RdsInspector",
    "SourceFacts",
    "error_code",
    "parse_engine_version",
    "rule_description",
]
