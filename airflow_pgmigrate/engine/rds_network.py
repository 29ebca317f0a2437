"""How the workers reach an RDS database: which security-group rule admits a worker CIDR block (a CIDR range, a
managed prefix list, or a reference to a security group the workers are members of), and whether the subnets of a
publicly accessible database route to an internet gateway.

Every AWS call goes through :func:`aws_call`, so a refused call names its IAM action. No Airflow import here.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from airflow_pgmigrate.engine.rds_target import AwsCallFailed, aws_call

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_network(cidr: str) -> Network | None:
    try:
        return ipaddress.ip_network(cidr.strip(), strict=False)
    except (ValueError, AttributeError):
        return None


def _inside(inner: Network, outer: Network) -> bool:
    return inner.version == outer.version and inner.subnet_of(outer)  # type: ignore[arg-type]


def permission_covers_port(perm: dict[str, Any], port: int) -> bool:
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


@dataclass(frozen=True)
class Admission:
    """Why a worker CIDR block may connect: the group, the rule's source in words, and the rule's description."""

    group_id: str
    via: str
    description: str = ""


class IngressView:
    """The inbound rules of the database's security groups, read once, with prefix lists and referenced groups
    resolved on demand. AWS calls that fail are kept in ``problems`` (the rules they concern count as not
    admitting)."""

    def __init__(self, ec2: Any, groups: list[dict[str, Any]], port: int) -> None:
        self.ec2 = ec2
        self.groups = groups
        self.port = port
        self.problems: list[AwsCallFailed] = []
        self._prefix_lists: dict[str, list[Network]] = {}
        self._members: dict[str, list[Address]] = {}

    def admission(self, worker: Network) -> Admission | None:
        """The first rule admitting every address of ``worker`` on the port (CIDR, prefix list, group reference)."""
        for group in self.groups:
            group_id = str(group.get("GroupId"))
            for perm in group.get("IpPermissions") or []:
                if permission_covers_port(perm, self.port):
                    found = self._admitted_by(group_id, perm, worker)
                    if found is not None:
                        return found
        return None

    def _admitted_by(self, group_id: str, perm: dict[str, Any], worker: Network) -> Admission | None:
        ranges = [(r.get("CidrIp", ""), r) for r in perm.get("IpRanges") or []]
        ranges += [(r.get("CidrIpv6", ""), r) for r in perm.get("Ipv6Ranges") or []]
        for cidr, entry in ranges:
            net = parse_network(cidr)
            if net is not None and _inside(worker, net):
                return Admission(group_id, f"CIDR {net}", str(entry.get("Description") or ""))
        for entry in perm.get("PrefixListIds") or []:
            pl_id = str(entry.get("PrefixListId"))
            net = next((n for n in self._prefix_list(pl_id) if _inside(worker, n)), None)
            if net is not None:
                return Admission(group_id, f"managed prefix list {pl_id} (entry {net})",
                                 str(entry.get("Description") or ""))
        for pair in perm.get("UserIdGroupPairs") or []:
            ref = str(pair.get("GroupId") or "")
            member = next((a for a in self._group_members(ref) if a in worker), None) if ref else None
            if member is not None:
                return Admission(group_id, f"security group {ref} (its network interface {member} is in {worker})",
                                 str(pair.get("Description") or ""))
        return None

    def _prefix_list(self, pl_id: str) -> list[Network]:
        if pl_id not in self._prefix_lists:
            nets: list[Network] = []
            try:
                paginator = self.ec2.get_paginator("get_managed_prefix_list_entries")
                pages = aws_call("ec2:GetManagedPrefixListEntries", lambda: list(paginator.paginate(
                    PrefixListId=pl_id)))
            except AwsCallFailed as exc:
                self.problems.append(exc)
                pages = []
            for page in pages:
                nets += [n for n in (parse_network(str(e.get("Cidr", ""))) for e in page.get("Entries") or []) if n]
            self._prefix_lists[pl_id] = nets
        return self._prefix_lists[pl_id]

    def _group_members(self, group_id: str) -> list[Address]:
        """Private addresses of the network interfaces in a security group (the workers, when it is theirs)."""
        if group_id not in self._members:
            addresses: list[Address] = []
            try:
                paginator = self.ec2.get_paginator("describe_network_interfaces")
                pages = aws_call("ec2:DescribeNetworkInterfaces", lambda: list(paginator.paginate(
                    Filters=[{"Name": "group-id", "Values": [group_id]}])))
            except AwsCallFailed as exc:
                self.problems.append(exc)
                pages = []
            for page in pages:
                for eni in page.get("NetworkInterfaces") or []:
                    ips = [p.get("PrivateIpAddress") for p in eni.get("PrivateIpAddresses") or []]
                    ips += [eni.get("PrivateIpAddress")] + [p.get("Ipv6Address") for p in eni.get("Ipv6Addresses")
                                                            or []]
                    addresses += [ipaddress.ip_address(ip) for ip in dict.fromkeys(ips) if ip]
            self._members[group_id] = addresses
        return self._members[group_id]


def _internet_gateway(table: dict[str, Any]) -> str | None:
    for route in table.get("Routes") or []:
        default = route.get("DestinationCidrBlock") == "0.0.0.0/0" or route.get("DestinationIpv6CidrBlock") == "::/0"
        gateway = str(route.get("GatewayId") or "")
        if default and gateway.startswith("igw-") and route.get("State") != "blackhole":
            return gateway
    return None


def internet_routes(ec2: Any, subnet_ids: list[str], vpc_id: str | None) -> dict[str, str | None]:
    """Subnet -> the internet gateway its default route goes to (None: no route to the internet).

    A subnet without a route table of its own uses the VPC's main route table.
    """
    explicit = aws_call("ec2:DescribeRouteTables", ec2.describe_route_tables,
                        Filters=[{"Name": "association.subnet-id", "Values": subnet_ids}])
    found: dict[str, str | None] = {}
    for table in explicit.get("RouteTables") or []:
        for assoc in table.get("Associations") or []:
            if assoc.get("SubnetId") in subnet_ids:
                found[str(assoc["SubnetId"])] = _internet_gateway(table)
    rest = [s for s in subnet_ids if s not in found]
    if rest and vpc_id:
        main = aws_call("ec2:DescribeRouteTables", ec2.describe_route_tables,
                        Filters=[{"Name": "vpc-id", "Values": [vpc_id]}, {"Name": "association.main", "Values": ["true"]}])
        gateway = next((_internet_gateway(t) for t in main.get("RouteTables") or []), None)
        found.update(dict.fromkeys(rest, gateway))
    return found


__all__ = ["Admission", "IngressView", "Network", "internet_routes", "parse_network", "permission_covers_port"]
