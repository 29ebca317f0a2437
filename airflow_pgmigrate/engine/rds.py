"""The Amazon RDS side of the precheck, through plain boto3 clients.

Checks what only the AWS API can tell: the instance exists and runs a supported PostgreSQL, its parameter group
enables logical replication (and no reboot is pending), it is reachable the way the workers connect, and its
security groups admit the workers on the database port. It may add the missing ingress rules itself, recording
them so the end of the migration removes them again. No Airflow import here; boto3 is only used through the
clients passed in.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from airflow_pgmigrate.engine.results import CheckResult, failed, passed, skipped, warning

if TYPE_CHECKING:
    from airflow_pgmigrate.config import RdsSettings

MIN_ENGINE_VERSION: tuple[int, ...] = (10, 4)
LOGICAL_REPLICATION_PARAM = "rds.logical_replication"
DEFAULT_DB_PORT = 5432
RULE_DESCRIPTION_PREFIX = "airflow-pgmigrate"

CHECK_INSTANCE = "rds_instance"
CHECK_LOGICAL_REPLICATION = "rds_logical_replication"
CHECK_PUBLIC_ACCESS = "rds_public_access"
CHECK_SECURITY_GROUP = "rds_security_group"

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class IngressRule:
    """A security-group ingress rule the precheck added: what to revoke at the end of the migration."""

    group_id: str
    cidr: str
    port: int
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> IngressRule:
        return cls(group_id=str(d["group_id"]), cidr=str(d["cidr"]), port=int(d["port"]),
                   description=str(d.get("description") or ""))

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


@dataclass
class RdsCheckOutcome:
    """The four RDS check results, the ingress rules added on the way, and the instance endpoint when found."""

    results: list[CheckResult]
    added_rules: list[IngressRule]
    endpoint: tuple[str, int] | None


def parse_engine_version(version: str) -> tuple[int, ...]:
    """``"15.4"`` -> ``(15, 4)``; ``"9.6.22"`` -> ``(9, 6, 22)``; suffixes such as ``-R2`` are ignored."""
    match = re.match(r"\s*(\d+(?:\.\d+)*)", version or "")
    if not match:
        return ()
    return tuple(int(part) for part in match.group(1).split("."))


def _error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return str((response.get("Error") or {}).get("Code") or "")


def _error_message(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return str((response.get("Error") or {}).get("Message") or exc)


def _network(cidr: str) -> _Network | None:
    try:
        return ipaddress.ip_network(cidr.strip(), strict=False)
    except (ValueError, AttributeError):
        return None


def _permission_covers_port(perm: dict[str, Any], port: int) -> bool:
    protocol = str(perm.get("IpProtocol", "")).lower()
    if protocol in ("-1", "all"):
        return True
    if protocol not in ("tcp", "6"):
        return False
    from_port, to_port = perm.get("FromPort"), perm.get("ToPort")
    if from_port is None or to_port is None:
        return False
    if int(from_port) == -1 and int(to_port) == -1:
        return True
    return int(from_port) <= port <= int(to_port)


def _permission_networks(perm: dict[str, Any]) -> list[_Network]:
    cidrs = [r.get("CidrIp", "") for r in perm.get("IpRanges") or []]
    cidrs += [r.get("CidrIpv6", "") for r in perm.get("Ipv6Ranges") or []]
    return [net for net in (_network(c) for c in cidrs if c) if net is not None]


def _admitted(worker: _Network, groups: list[dict[str, Any]], port: int) -> str | None:
    """The id of a security group admitting ``worker`` on ``port``, or None."""
    for group in groups:
        for perm in group.get("IpPermissions") or []:
            if not _permission_covers_port(perm, port):
                continue
            for rule_net in _permission_networks(perm):
                if rule_net.version == worker.version and worker.subnet_of(rule_net):  # type: ignore[arg-type]
                    return str(group.get("GroupId"))
    return None


def _authorize_command(group_id: str, cidr: str, port: int, region: str | None) -> str:
    network = ipaddress.ip_network(cidr, strict=False)
    range_key = "Ipv6Ranges=[{CidrIpv6=%s}]" if network.version == 6 else "IpRanges=[{CidrIp=%s}]"
    perm = f"IpProtocol=tcp,FromPort={port},ToPort={port},{range_key % network}"
    region_opt = f" --region {region}" if region else ""
    return f"aws ec2 authorize-security-group-ingress --group-id {group_id} --ip-permissions {shlex.quote(perm)}{region_opt}"


class RdsInspector:
    """Runs the RDS precheck items with an ``rds`` and an ``ec2`` boto3 client, and removes added ingress rules."""

    def __init__(self, rds_client: Any, ec2_client: Any) -> None:
        self.rds = rds_client
        self.ec2 = ec2_client

    # ------------------------------------------------------------------ helpers

    def _region(self, settings: RdsSettings) -> str | None:
        meta = getattr(self.rds, "meta", None)
        return settings.region or getattr(meta, "region_name", None)

    def _describe_instance(self, identifier: str) -> dict[str, Any]:
        response = self.rds.describe_db_instances(DBInstanceIdentifier=identifier)
        instances = response.get("DBInstances") or []
        if not instances:
            raise LookupError(identifier)
        return dict(instances[0])

    def _parameter_value(self, group_name: str, parameter: str) -> str | None:
        """The value of ``parameter`` in a DB parameter group (None when unset), reading every page."""
        paginator = self.rds.get_paginator("describe_db_parameters")
        for page in paginator.paginate(DBParameterGroupName=group_name):
            for param in page.get("Parameters") or []:
                if param.get("ParameterName") == parameter:
                    value = param.get("ParameterValue")
                    return None if value is None else str(value)
        return None

    def _parameter_group_family(self, group_name: str) -> str | None:
        try:
            groups = self.rds.describe_db_parameter_groups(DBParameterGroupName=group_name).get("DBParameterGroups")
        except Exception:  # noqa: BLE001 - the family only improves the fix text
            return None
        return str(groups[0].get("DBParameterGroupFamily")) if groups else None

    # ------------------------------------------------------------------ items

    def check(self, settings: RdsSettings, migration_name: str, *, need_logical_replication: bool) -> RdsCheckOutcome:
        """Run the four RDS items; add missing ingress rules when ``settings.manage_security_group`` allows it."""
        ident = settings.db_instance_identifier
        region = self._region(settings)
        try:
            instance = self._describe_instance(ident)
        except Exception as exc:  # noqa: BLE001 - botocore is not imported at module level
            code = _error_code(exc)
            not_found = isinstance(exc, LookupError) or code in ("DBInstanceNotFound", "DBInstanceNotFoundFault")
            if not_found:
                detail = f"no DB instance {ident!r} in region {region or '(default)'}"
                fix = ("check rds.db_instance_identifier and rds.region against the RDS console (Databases list) "
                       f"or `aws rds describe-db-instances --region {region or '<region>'}`")
            else:
                detail = f"cannot describe DB instance {ident!r} in region {region or '(default)'}: {code or exc}"
                fix = ("give the AWS identity rds:DescribeDBInstances, rds:DescribeDBParameters, "
                       "ec2:DescribeSecurityGroups (and ec2:AuthorizeSecurityGroupIngress / "
                       f"ec2:RevokeSecurityGroupIngress to manage rules); error: {_error_message(exc)}")
            why = f"DB instance {ident!r} not found" if not_found else f"DB instance {ident!r} could not be described"
            return RdsCheckOutcome(
                results=[
                    failed(CHECK_INSTANCE, detail, fix, [ident]),
                    skipped(CHECK_LOGICAL_REPLICATION, why),
                    skipped(CHECK_PUBLIC_ACCESS, why),
                    skipped(CHECK_SECURITY_GROUP, why),
                ],
                added_rules=[],
                endpoint=None,
            )

        endpoint_info = instance.get("Endpoint") or {}
        port = int(endpoint_info.get("Port") or instance.get("DbInstancePort") or DEFAULT_DB_PORT)
        address = endpoint_info.get("Address")
        endpoint = (str(address), port) if address else None
        is_postgres = str(instance.get("Engine", "")).lower() == "postgres"

        results = [self._check_instance(instance, region)]
        if not need_logical_replication:
            results.append(skipped(CHECK_LOGICAL_REPLICATION, "incremental migration not selected"))
        elif not is_postgres:
            results.append(skipped(CHECK_LOGICAL_REPLICATION, f"engine is {instance.get('Engine')!r}, not postgres"))
        else:
            results.append(self._check_logical_replication(instance, region))
        results.append(self._check_public_access(instance, settings, region))
        sg_result, added = self._check_security_group(instance, settings, migration_name, port, region)
        results.append(sg_result)
        return RdsCheckOutcome(results=results, added_rules=added, endpoint=endpoint)

    def _check_instance(self, instance: dict[str, Any], region: str | None) -> CheckResult:
        ident = str(instance.get("DBInstanceIdentifier"))
        engine = str(instance.get("Engine", ""))
        version = str(instance.get("EngineVersion", ""))
        status = str(instance.get("DBInstanceStatus", ""))
        region_opt = f" --region {region}" if region else ""
        if engine.lower() != "postgres":
            return failed(CHECK_INSTANCE, f"DB instance {ident!r} runs engine {engine!r}, not postgres",
                          "point rds.db_instance_identifier at an RDS for PostgreSQL instance "
                          "(Aurora and other engines are not supported)", [ident])
        parsed = parse_engine_version(version)
        minimum = ".".join(map(str, MIN_ENGINE_VERSION))
        if not parsed or parsed < MIN_ENGINE_VERSION:
            return failed(CHECK_INSTANCE, f"DB instance {ident!r} runs PostgreSQL {version}, older than {minimum}",
                          f"upgrade it: aws rds modify-db-instance --db-instance-identifier {ident} "
                          f"--engine-version <a version >= {minimum}> --allow-major-version-upgrade "
                          f"--apply-immediately{region_opt}", [ident])
        if status != "available":
            return warning(CHECK_INSTANCE, f"DB instance {ident!r} (PostgreSQL {version}) is {status!r}, not available",
                           "wait until the RDS console shows it Available: "
                           f"aws rds wait db-instance-available --db-instance-identifier {ident}{region_opt}", [ident])
        return passed(CHECK_INSTANCE, f"DB instance {ident!r} runs PostgreSQL {version} and is available")

    def _check_logical_replication(self, instance: dict[str, Any], region: str | None) -> CheckResult:
        ident = str(instance.get("DBInstanceIdentifier"))
        region_opt = f" --region {region}" if region else ""
        reboot = f"aws rds reboot-db-instance --db-instance-identifier {ident}{region_opt}"
        pending_group = (instance.get("PendingModifiedValues") or {}).get("DBParameterGroupName")
        groups = list(instance.get("DBParameterGroups") or [])
        if not groups:
            return failed(CHECK_LOGICAL_REPLICATION, f"DB instance {ident!r} reports no DB parameter group",
                          "attach a custom DB parameter group with rds.logical_replication=1 and reboot", [ident])
        problems: list[str] = []
        fixes: list[str] = []
        objects: list[str] = []
        found: list[str] = []
        for group in groups:
            name = str(group.get("DBParameterGroupName"))
            apply_status = str(group.get("ParameterApplyStatus") or "")
            value = self._parameter_value(name, LOGICAL_REPLICATION_PARAM)
            set_param = (f"aws rds modify-db-parameter-group --db-parameter-group-name {{group}} --parameters "
                         f"ParameterName={LOGICAL_REPLICATION_PARAM},ParameterValue=1,ApplyMethod=pending-reboot"
                         f"{region_opt}")
            if value != "1":
                objects.append(name)
                shown = "not set (default 0)" if value is None else repr(value)
                problems.append(f"{LOGICAL_REPLICATION_PARAM} is {shown} in parameter group {name!r}")
                if name.startswith("default."):
                    family = self._parameter_group_family(name) or "<family of the default group, e.g. postgres15>"
                    custom = f"{ident}-pgmigrate"[:255]
                    fixes += [
                        (f"the default group {name!r} cannot be modified: create a custom group, set the parameter, "
                         "attach it and reboot (console: RDS > Parameter groups > Create; then Modify the instance):"),
                        (f"aws rds create-db-parameter-group --db-parameter-group-name {custom} "
                         f"--db-parameter-group-family {family} --description 'logical replication for migration'"
                         f"{region_opt}"),
                        set_param.format(group=custom),
                        (f"aws rds modify-db-instance --db-instance-identifier {ident} --db-parameter-group-name "
                         f"{custom} --apply-immediately{region_opt}"),
                        reboot,
                    ]
                else:
                    fixes += [
                        (f"set {LOGICAL_REPLICATION_PARAM}=1 in {name!r} (console: RDS > Parameter groups > {name} > "
                         "Edit), then reboot:"),
                        set_param.format(group=name),
                        reboot,
                    ]
            elif apply_status == "pending-reboot" or pending_group:
                objects.append(name)
                problems.append(f"{LOGICAL_REPLICATION_PARAM}=1 in parameter group {name!r} is set but pending a "
                                f"reboot (ParameterApplyStatus {apply_status or 'n/a'})")
                fixes.append(f"reboot the instance to apply it (console: Actions > Reboot): {reboot}")
            else:
                found.append(name)
        if problems:
            return failed(CHECK_LOGICAL_REPLICATION, "; ".join(problems), "\n".join(dict.fromkeys(fixes)),
                          [ident, *objects])
        return passed(CHECK_LOGICAL_REPLICATION,
                      f"{LOGICAL_REPLICATION_PARAM}=1 and applied (parameter group {', '.join(found)})")

    def _check_public_access(self, instance: dict[str, Any], settings: RdsSettings, region: str | None) -> CheckResult:
        ident = str(instance.get("DBInstanceIdentifier"))
        public = bool(instance.get("PubliclyAccessible"))
        if not settings.connect_over_internet:
            return passed(CHECK_PUBLIC_ACCESS, f"workers connect privately (publicly accessible: {public})")
        if public:
            return passed(CHECK_PUBLIC_ACCESS, f"DB instance {ident!r} is publicly accessible")
        region_opt = f" --region {region}" if region else ""
        return failed(CHECK_PUBLIC_ACCESS,
                      f"DB instance {ident!r} is not publicly accessible but rds.connect_over_internet is true",
                      "console: Modify > Connectivity > Public access: Publicly accessible; or "
                      f"aws rds modify-db-instance --db-instance-identifier {ident} --publicly-accessible "
                      f"--apply-immediately{region_opt} (or set rds.connect_over_internet: false when the workers "
                      "reach the VPC privately)", [ident])

    def _check_security_group(self, instance: dict[str, Any], settings: RdsSettings, migration_name: str,
                              port: int, region: str | None) -> tuple[CheckResult, list[IngressRule]]:
        ident = str(instance.get("DBInstanceIdentifier"))
        if not settings.worker_cidrs:
            return warning(CHECK_SECURITY_GROUP, "no worker CIDR blocks configured, cannot verify the security group",
                           "list rds.worker_cidrs", [ident]), []
        group_ids = [str(g["VpcSecurityGroupId"]) for g in instance.get("VpcSecurityGroups") or []
                     if g.get("Status") == "active" and g.get("VpcSecurityGroupId")]
        if not group_ids:
            return failed(CHECK_SECURITY_GROUP, f"DB instance {ident!r} has no active VPC security group",
                          "attach a VPC security group: console Modify > Connectivity > Security group, or "
                          f"aws rds modify-db-instance --db-instance-identifier {ident} "
                          "--vpc-security-group-ids <sg-id> --apply-immediately", [ident]), []
        groups = list(self.ec2.describe_security_groups(GroupIds=group_ids).get("SecurityGroups") or [])

        admitted: dict[str, str] = {}
        missing: list[str] = []
        for cidr in settings.worker_cidrs:
            net = _network(cidr)
            if net is None:
                return failed(CHECK_SECURITY_GROUP, f"worker CIDR {cidr!r} is not a CIDR block",
                              "fix rds.worker_cidrs", [cidr]), []
            group_id = _admitted(net, groups, port)
            if group_id:
                admitted[str(net)] = group_id
            else:
                missing.append(str(net))
        groups_text = ", ".join(group_ids)
        if not missing:
            return passed(CHECK_SECURITY_GROUP, f"security group(s) {groups_text} admit every worker CIDR "
                                                f"({', '.join(admitted)}) on port {port}"), []
        if not settings.manage_security_group:
            commands = [_authorize_command(group_ids[0], cidr, port, region) for cidr in missing]
            return failed(CHECK_SECURITY_GROUP,
                          f"worker CIDR(s) {', '.join(missing)} not admitted on port {port} by the security group(s) "
                          f"{groups_text} of DB instance {ident!r}",
                          "add an inbound rule (console: EC2 > Security Groups > "
                          f"{group_ids[0]} > Edit inbound rules: PostgreSQL, TCP {port}), or set "
                          "rds.manage_security_group: true to let the migration add and later remove it:\n"
                          + "\n".join(commands),
                          [*missing, *group_ids]), []

        target = group_ids[0]
        description = f"{RULE_DESCRIPTION_PREFIX} {migration_name}"[:255]
        added: list[IngressRule] = []
        errors: list[str] = []
        for cidr in missing:
            rule = IngressRule(group_id=target, cidr=cidr, port=port, description=description)
            try:
                self.ec2.authorize_security_group_ingress(GroupId=target, IpPermissions=[rule.ip_permission()])
            except Exception as exc:  # noqa: BLE001 - botocore is not imported at module level
                if _error_code(exc) == "InvalidPermission.Duplicate":
                    continue  # appeared meanwhile: admitted, and not ours to remove
                errors.append(f"{cidr}: {_error_code(exc) or exc}: {_error_message(exc)}")
                continue
            added.append(rule)
        if errors:
            commands = [_authorize_command(target, c, port, region) for c in missing
                        if c not in {r.cidr for r in added}]
            return failed(CHECK_SECURITY_GROUP,
                          f"could not add ingress rule(s) to {target}: {'; '.join(errors)}"
                          + (f" (added: {', '.join(r.cidr for r in added)})" if added else ""),
                          "give the AWS identity ec2:AuthorizeSecurityGroupIngress, or run:\n" + "\n".join(commands),
                          [*missing, target]), added
        return passed(CHECK_SECURITY_GROUP,
                      f"added ingress rule(s) for {', '.join(r.cidr for r in added) or ', '.join(missing)} on port "
                      f"{port} to {target} (will be removed at the end of the migration)"
                      + (f"; already admitted: {', '.join(admitted)}" if admitted else "")), added

    # ------------------------------------------------------------------ cleanup

    def remove_ingress_rules(self, rules: Iterable[IngressRule]) -> list[IngressRule]:
        """Revoke rules the precheck added. A rule (or group) already gone is skipped; returns the rules revoked."""
        revoked: list[IngressRule] = []
        for rule in rules:
            perm = rule.ip_permission()
            for key in ("IpRanges", "Ipv6Ranges"):
                for entry in perm.get(key, []):
                    entry.pop("Description", None)
            try:
                response = self.ec2.revoke_security_group_ingress(GroupId=rule.group_id, IpPermissions=[perm])
            except Exception as exc:
                if _error_code(exc) in ("InvalidPermission.NotFound", "InvalidGroup.NotFound"):
                    continue
                raise
            if (response or {}).get("UnknownIpPermissions"):
                continue  # AWS reports a rule that was not there instead of failing
            revoked.append(rule)
        return revoked


__all__ = [
    "CHECK_INSTANCE",
    "CHECK_LOGICAL_REPLICATION",
    "CHECK_PUBLIC_ACCESS",
    "CHECK_SECURITY_GROUP",
    "MIN_ENGINE_VERSION",
    "IngressRule",
    "RdsCheckOutcome",
    "RdsInspector",
    "parse_engine_version",
]
