"""What the RDS API says about the database the migration reads: a DB instance, an Aurora PostgreSQL instance or
cluster, or a Multi-AZ DB cluster, in one shape; and AWS errors turned into a sentence that names the fix.

Shapes follow botocore's service models (``DescribeDBInstances``, ``DescribeDBClusters``). No Airflow import here,
and boto3 is only used through the clients passed in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

DEFAULT_DB_PORT = 5432
POSTGRES_ENGINES = ("postgres", "aurora-postgresql")

#: Error codes that mean "this identity may not call this action".
_DENIED = {"AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "UnauthorizedAccess",
           "Client.UnauthorizedOperation"}
#: Error codes that mean "these credentials are not valid".
_BAD_CREDENTIALS = {"AuthFailure", "InvalidClientTokenId", "ExpiredToken", "ExpiredTokenException",
                    "UnrecognizedClientException", "SignatureDoesNotMatch", "RequestExpired"}
NOT_FOUND_CODES = {"DBInstanceNotFound", "DBInstanceNotFoundFault", "DBClusterNotFoundFault", "DBClusterNotFound"}


def error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None) or {}
    return str((response.get("Error") or {}).get("Code") or "")


def error_message(exc: BaseException) -> str:
    response = getattr(exc, "response", None) or {}
    return str((response.get("Error") or {}).get("Message") or exc)


class AwsCallFailed(Exception):
    """An AWS API call failed: the IAM action, the error code and AWS's message, and the fix in words."""

    def __init__(self, action: str, exc: BaseException) -> None:
        self.action = action
        self.code = error_code(exc) or type(exc).__name__
        self.message = error_message(exc)
        super().__init__(f"{action}: {self.code}: {self.message}")

    @property
    def denied(self) -> bool:
        return self.code in _DENIED

    def detail(self) -> str:
        return f"AWS refused {self.action} ({self.code}: {self.message})"

    def fix(self) -> str:
        if self.denied:
            return (f"give the AWS identity the IAM action {self.action} (docs/precheck.md has a policy to paste), "
                    "then run the precheck again")
        if self.code == "AwsConnectionError":
            return self.message
        if self.code in _BAD_CREDENTIALS or self.code in ("NoCredentialsError", "PartialCredentialsError",
                                                          "ProfileNotFound"):
            return ("the AWS credentials are missing, invalid or expired: check the Airflow connection "
                    "rds.aws_conn_id (access key, role_arn, profile_name) or the workers' AWS environment")
        if self.code == "NoRegionError":
            return ("no AWS region is set: write rds.region in the config (or region_name in the AWS connection's "
                    "extras, or AWS_DEFAULT_REGION for the workers)")
        if self.code in ("EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError"):
            return ("the workers cannot reach the AWS API: check their network, proxy settings and rds.region")
        if self.code == "RulesPerSecurityGroupLimitExceeded":
            return ("the security group holds as many inbound rules as its quota allows: remove unused rules, ask "
                    "AWS for a higher 'Inbound or outbound rules per security group' quota, or admit the workers "
                    "through a wider CIDR block, a managed prefix list or their own security group")
        return f"fix what AWS reports for {self.action}, then run the precheck again"


def aws_call(action: str, func: Any, **kwargs: Any) -> Any:
    """Call ``func(**kwargs)``; any failure becomes :class:`AwsCallFailed` naming the IAM ``action``."""
    try:
        return func(**kwargs)
    except Exception as exc:  # noqa: BLE001 - botocore is not imported at module level
        raise AwsCallFailed(action, exc) from exc


@dataclass
class ParameterGroupRef:
    """A parameter group as attached to the target: its name, whether it is a cluster group, its apply status."""

    name: str
    cluster: bool = False
    apply_status: str = ""


@dataclass
class RdsTarget:
    """The database the migration reads, as the RDS API describes it (instance or cluster, in one shape)."""

    kind: str  # "DB instance", "Aurora DB instance", "Aurora DB cluster", "Multi-AZ DB cluster"
    identifier: str
    engine: str
    version: str
    status: str
    address: str | None
    port: int
    public: bool
    security_groups: list[str] = field(default_factory=list)
    parameter_groups: list[ParameterGroupRef] = field(default_factory=list)
    cluster_id: str | None = None
    cluster_address: str | None = None
    reader_address: str | None = None
    writer: bool = True
    replica_of: str | None = None
    subnet_group: str | None = None
    subnet_ids: list[str] = field(default_factory=list)
    vpc_id: str | None = None
    allocated_gib: int = 0
    max_allocated_gib: int = 0

    @property
    def is_cluster(self) -> bool:
        return self.kind in ("Aurora DB cluster", "Multi-AZ DB cluster")

    @property
    def is_aurora(self) -> bool:
        return self.engine == "aurora-postgresql"

    def endpoints(self) -> set[str]:
        """Host names that reach the writer of this target."""
        return {a.lower() for a in (self.address, self.cluster_address if self.writer else None) if a}

    def reboot_command(self, region_opt: str) -> str:
        if self.kind in ("Multi-AZ DB cluster", "Multi-AZ DB cluster member"):
            return f"aws rds reboot-db-cluster --db-cluster-identifier {self.cluster_id or self.identifier}{region_opt}"
        if self.kind == "Aurora DB cluster":
            return f"aws rds reboot-db-instance --db-instance-identifier <writer instance of {self.identifier}>" \
                   f"{region_opt}"
        return f"aws rds reboot-db-instance --db-instance-identifier {self.identifier}{region_opt}"


def _active_groups(items: list[dict[str, Any]] | None) -> list[str]:
    return [str(g["VpcSecurityGroupId"]) for g in items or []
            if g.get("Status") == "active" and g.get("VpcSecurityGroupId")]


def _subnets(subnet_group: dict[str, Any] | None) -> tuple[str | None, list[str], str | None]:
    group = subnet_group or {}
    ids = [str(s["SubnetIdentifier"]) for s in group.get("Subnets") or [] if s.get("SubnetIdentifier")]
    return group.get("DBSubnetGroupName"), ids, group.get("VpcId")


def target_from_instance(instance: dict[str, Any], cluster: dict[str, Any] | None) -> RdsTarget:
    """An instance (with its cluster when it belongs to one: Aurora, or a Multi-AZ DB cluster's member)."""
    endpoint = instance.get("Endpoint") or {}
    engine = str(instance.get("Engine", "")).lower()
    subnet_name, subnet_ids, vpc_id = _subnets(instance.get("DBSubnetGroup"))
    groups = [ParameterGroupRef(str(g.get("DBParameterGroupName")), False, str(g.get("ParameterApplyStatus") or ""))
              for g in instance.get("DBParameterGroups") or []]
    target = RdsTarget(
        kind="Aurora DB instance" if engine == "aurora-postgresql" else "DB instance",
        identifier=str(instance.get("DBInstanceIdentifier")), engine=engine,
        version=str(instance.get("EngineVersion", "")), status=str(instance.get("DBInstanceStatus", "")),
        address=endpoint.get("Address"),
        port=int(endpoint.get("Port") or instance.get("DbInstancePort") or DEFAULT_DB_PORT),
        public=bool(instance.get("PubliclyAccessible")),
        security_groups=_active_groups(instance.get("VpcSecurityGroups")), parameter_groups=groups,
        replica_of=instance.get("ReadReplicaSourceDBInstanceIdentifier") or None,
        subnet_group=subnet_name, subnet_ids=subnet_ids, vpc_id=vpc_id,
        allocated_gib=int(instance.get("AllocatedStorage") or 0),
        max_allocated_gib=int(instance.get("MaxAllocatedStorage") or 0),
    )
    if cluster is not None:
        _join_cluster(target, cluster)
    return target


def _join_cluster(target: RdsTarget, cluster: dict[str, Any]) -> None:
    """The cluster holds rds.logical_replication (its cluster parameter group) and the writer endpoint."""
    target.cluster_id = str(cluster.get("DBClusterIdentifier"))
    target.cluster_address = cluster.get("Endpoint")
    target.reader_address = cluster.get("ReaderEndpoint")
    me = next((m for m in cluster.get("DBClusterMembers") or []
               if m.get("DBInstanceIdentifier") == target.identifier), None)
    if me is not None:
        target.writer = bool(me.get("IsClusterWriter"))
    status = str((me or {}).get("DBClusterParameterGroupStatus") or "")
    name = cluster.get("DBClusterParameterGroup")
    if name:
        # Both Aurora and Multi-AZ DB clusters read rds.logical_replication from the cluster parameter group.
        target.parameter_groups = [ParameterGroupRef(str(name), True, status)]
    if str(cluster.get("Engine", "")).lower() == "postgres" and target.kind == "DB instance":
        target.kind = "Multi-AZ DB cluster member"


def target_from_cluster(cluster: dict[str, Any], writer: dict[str, Any] | None) -> RdsTarget:
    """A cluster named by rds.db_instance_identifier: Multi-AZ DB cluster (engine postgres) or Aurora."""
    engine = str(cluster.get("Engine", "")).lower()
    members = cluster.get("DBClusterMembers") or []
    writer_member = next((m for m in members if m.get("IsClusterWriter")), None)
    status = str((writer_member or {}).get("DBClusterParameterGroupStatus") or "")
    name = cluster.get("DBClusterParameterGroup")
    public = cluster.get("PubliclyAccessible")
    if public is None and writer is not None:  # Aurora: public access is a setting of each instance
        public = writer.get("PubliclyAccessible")
    subnet_name, subnet_ids, vpc_id = _subnets((writer or {}).get("DBSubnetGroup"))
    return RdsTarget(
        kind="Aurora DB cluster" if engine == "aurora-postgresql" else "Multi-AZ DB cluster",
        identifier=str(cluster.get("DBClusterIdentifier")), engine=engine,
        version=str(cluster.get("EngineVersion", "")), status=str(cluster.get("Status", "")),
        address=cluster.get("Endpoint"), port=int(cluster.get("Port") or DEFAULT_DB_PORT), public=bool(public),
        security_groups=_active_groups(cluster.get("VpcSecurityGroups")),
        parameter_groups=[ParameterGroupRef(str(name), True, status)] if name else [],
        cluster_id=str(cluster.get("DBClusterIdentifier")), cluster_address=cluster.get("Endpoint"),
        reader_address=cluster.get("ReaderEndpoint"),
        replica_of=cluster.get("ReplicationSourceIdentifier") or None,
        subnet_group=subnet_name or cluster.get("DBSubnetGroup"), subnet_ids=subnet_ids, vpc_id=vpc_id,
        allocated_gib=int(cluster.get("AllocatedStorage") or 0),
    )


__all__ = ["AwsCallFailed", "DEFAULT_DB_PORT", "NOT_FOUND_CODES", "POSTGRES_ENGINES", "ParameterGroupRef",
           "RdsTarget", "aws_call", "error_code", "error_message", "target_from_cluster", "target_from_instance"]
