"""Free storage of RDS databases, from CloudWatch's ``FreeStorageSpace`` (the lowest value of the last hour).

The source keeps every WAL segment its replication slot has not confirmed until the cutover, so an incremental
migration can fill its disk (RDS then stops the instance: storage-full). The destination needs room for the data
the full load copies. Storage autoscaling (``MaxAllocatedStorage``) moves the limit. No Airflow import here.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from airflow_pgmigrate.engine.rds_target import (
    NOT_FOUND_CODES,
    AwsCallFailed,
    RdsTarget,
    aws_call,
    target_from_instance,
)
from airflow_pgmigrate.engine.results import CheckResult, failed, passed, skipped, warning

CHECK_STORAGE = "rds_storage"
GIB = 1024**3
#: Below this much free space (or a tenth of the allocated storage, whichever is more) the source gets a warning.
LOW_FREE_BYTES = 5 * GIB
#: Below this, RDS is about to go storage-full: a failure.
CRITICAL_FREE_BYTES = 1 * GIB
_RDS_INSTANCE_HOST = re.compile(r"^([a-z][a-z0-9-]{0,62})\.[a-z0-9]+\.[a-z0-9-]+\.rds\.amazonaws\.com(\.cn)?\.?$",
                                re.IGNORECASE)


def _gib(num: float) -> str:
    return f"{num / GIB:.1f} GiB"


def free_storage(cloudwatch: Any, dimension: str, identifier: str) -> float | None:
    """The lowest FreeStorageSpace (bytes) of the last hour, or None when CloudWatch has no datapoint."""
    now = dt.datetime.now(dt.UTC)
    stats = aws_call("cloudwatch:GetMetricStatistics", cloudwatch.get_metric_statistics, Namespace="AWS/RDS",
                     MetricName="FreeStorageSpace", Dimensions=[{"Name": dimension, "Value": identifier}],
                     StartTime=now - dt.timedelta(hours=1), EndTime=now + dt.timedelta(minutes=5), Period=300,
                     Statistics=["Minimum"])
    points = [float(p["Minimum"]) for p in stats.get("Datapoints") or [] if p.get("Minimum") is not None]
    return min(points) if points else None


def _autoscaling_command(target: RdsTarget, region_opt: str) -> str:
    suggested = max(target.allocated_gib * 2, target.allocated_gib + 100)
    return (f"aws rds modify-db-instance --db-instance-identifier {target.identifier} --max-allocated-storage "
            f"{suggested} --apply-immediately{region_opt}")


def check_source_storage(cloudwatch: Any, target: RdsTarget, incremental: bool, region: str | None) -> CheckResult:
    """Room on the source for the WAL the replication slot keeps until the cutover."""
    if not incremental:
        return skipped(CHECK_STORAGE, "no replication slot (incremental migration not selected) keeps WAL on the "
                       "source")
    if target.is_aurora:
        return passed(CHECK_STORAGE, f"{target.kind} {target.identifier!r}: Aurora storage grows by itself")
    dimension = "DBClusterIdentifier" if target.kind == "Multi-AZ DB cluster" else "DBInstanceIdentifier"
    free = free_storage(cloudwatch, dimension, target.identifier)
    region_opt = f" --region {region}" if region else ""
    what = f"{target.kind} {target.identifier!r}"
    if free is None:
        return warning(CHECK_STORAGE, f"CloudWatch has no FreeStorageSpace datapoint of {what} in the last hour",
                       "check rds.region and the instance's CloudWatch metrics (console: RDS > the database > "
                       "Monitoring); watch its free storage while the migration runs", [target.identifier])
    allocated = target.allocated_gib * GIB
    autoscaling = target.max_allocated_gib > target.allocated_gib
    detail = f"{what} has {_gib(free)} free" + (f" of {target.allocated_gib} GiB" if allocated else "") + (
        f", storage autoscaling up to {target.max_allocated_gib} GiB" if autoscaling else "")
    slot = ("the replication slot keeps the source's WAL until the cutover; when the disk fills, RDS stops the "
            "database (storage-full)")
    if free < CRITICAL_FREE_BYTES and not autoscaling:
        return failed(CHECK_STORAGE, f"{detail}: {slot}",
                      f"add storage or enable storage autoscaling: {_autoscaling_command(target, region_opt)}",
                      [target.identifier])
    if free < max(LOW_FREE_BYTES, allocated / 10) and not autoscaling:
        return warning(CHECK_STORAGE, f"{detail}: {slot}",
                       "enable storage autoscaling (or add storage) before a long incremental sync: "
                       f"{_autoscaling_command(target, region_opt)}; the sync warns at "
                       "incremental.retained_wal_warn", [target.identifier])
    return passed(CHECK_STORAGE, detail)


def destination_space(rds: Any, cloudwatch: Any, host: str, data_bytes: int) -> CheckResult | None:
    """``destination_space`` for a destination that is an RDS instance these credentials can see (None: it is
    not, or not visible here: the generic item stays)."""
    match = _RDS_INSTANCE_HOST.match(host.strip())
    if not match or ".proxy-" in host or ".cluster-" in host:
        return None
    try:
        found = aws_call("rds:DescribeDBInstances", rds.describe_db_instances, DBInstanceIdentifier=match.group(1))
    except AwsCallFailed as exc:
        if exc.code in NOT_FOUND_CODES:
            return None
        return failed("destination_space", f"cannot read the destination's storage: {exc.detail()}", exc.fix(),
                      [exc.action])
    instances = [i for i in found.get("DBInstances") or []
                 if str((i.get("Endpoint") or {}).get("Address", "")).lower() == host.strip().rstrip(".").lower()]
    if not instances:
        return None
    target = target_from_instance(dict(instances[0]), None)
    try:
        free = free_storage(cloudwatch, "DBInstanceIdentifier", target.identifier)
    except AwsCallFailed as exc:
        return failed("destination_space", f"cannot read the destination's free storage: {exc.detail()}",
                      exc.fix(), [exc.action])
    return _destination_result(target, free, data_bytes)


def _destination_result(target: RdsTarget, free: float | None, data_bytes: int) -> CheckResult:
    what = f"destination DB instance {target.identifier!r}"
    if free is None:
        return warning("destination_space", f"CloudWatch has no FreeStorageSpace datapoint of {what}; the selected "
                       f"data takes {_gib(data_bytes)}", "make sure the destination has that much free storage")
    room = free + max(0, target.max_allocated_gib - target.allocated_gib) * GIB
    detail = (f"{what} has {_gib(free)} free" + (f" (autoscaling up to {target.max_allocated_gib} GiB)"
              if target.max_allocated_gib > target.allocated_gib else "")
              + f"; the selected source data takes {_gib(data_bytes)} with indexes")
    fix = (f"add storage to {target.identifier} or enable storage autoscaling: aws rds modify-db-instance "
           f"--db-instance-identifier {target.identifier} --allocated-storage <GiB> --apply-immediately")
    if room < data_bytes:
        return failed("destination_space", detail, fix, [target.identifier])
    if room < data_bytes * 1.2:
        return warning("destination_space", detail + ": less than 20 % to spare", fix, [target.identifier])
    return passed("destination_space", detail)


__all__ = ["CHECK_STORAGE", "GIB", "check_source_storage", "destination_space", "free_storage"]
