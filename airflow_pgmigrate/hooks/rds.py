"""boto3 clients for the RDS precheck, built from an Airflow AWS connection or from the environment.

The amazon provider's ``AwsBaseHook`` is used when it is installed (it knows every credential flavour: roles,
profiles, web identity); otherwise plain boto3 reads the connection's login/password/extras, and boto3 itself
honours the standard environment (``AWS_ENDPOINT_URL``, ``AWS_DEFAULT_REGION``, ``AWS_ACCESS_KEY_ID`` ...).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow_pgmigrate.config import RdsSettings

log = logging.getLogger(__name__)


def _provider_clients(settings: RdsSettings) -> tuple[Any, Any] | None:
    """Clients through the amazon provider's AwsBaseHook, or None when the provider is not installed."""
    try:
        from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return None
    hook = AwsBaseHook(aws_conn_id=settings.aws_conn_id, region_name=settings.region)
    log.info("RDS precheck: AWS clients from connection %r through the amazon provider", settings.aws_conn_id)
    return hook.get_client_type("rds"), hook.get_client_type("ec2")


def _connection_kwargs(conn_id: str) -> dict[str, Any]:
    """boto3 session/client arguments from an Airflow connection: login, password and a few extras."""
    from airflow.sdk import BaseHook

    conn = BaseHook.get_connection(conn_id)
    extra = conn.extra_dejson if isinstance(getattr(conn, "extra_dejson", None), dict) else {}
    kwargs: dict[str, Any] = {}
    if conn.login:
        kwargs["aws_access_key_id"] = conn.login
    if conn.password:
        kwargs["aws_secret_access_key"] = conn.password
    if extra.get("aws_session_token"):
        kwargs["aws_session_token"] = extra["aws_session_token"]
    if extra.get("region_name"):
        kwargs["region_name"] = extra["region_name"]
    if extra.get("endpoint_url"):
        kwargs["endpoint_url"] = extra["endpoint_url"]
    return kwargs


def rds_clients(settings: RdsSettings) -> tuple[Any, Any]:
    """``(rds_client, ec2_client)`` for ``settings``: via the amazon provider when possible, else plain boto3."""
    if settings.aws_conn_id:
        clients = _provider_clients(settings)
        if clients is not None:
            return clients
    import boto3

    kwargs: dict[str, Any] = _connection_kwargs(settings.aws_conn_id) if settings.aws_conn_id else {}
    if settings.region:
        kwargs["region_name"] = settings.region
    endpoint_url = kwargs.pop("endpoint_url", None)
    session = boto3.session.Session(
        aws_access_key_id=kwargs.get("aws_access_key_id"),
        aws_secret_access_key=kwargs.get("aws_secret_access_key"),
        aws_session_token=kwargs.get("aws_session_token"),
        region_name=kwargs.get("region_name"),
    )
    client_kwargs: dict[str, Any] = {"endpoint_url": endpoint_url} if endpoint_url else {}
    log.info("RDS precheck: boto3 clients (connection %r, region %s, key id %s, endpoint %s)",
             settings.aws_conn_id, session.region_name, "from connection" if "aws_access_key_id" in kwargs
             else "from environment", endpoint_url or "default")
    return session.client("rds", **client_kwargs), session.client("ec2", **client_kwargs)


__all__ = ["rds_clients"]
