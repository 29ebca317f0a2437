"""boto3 clients for the RDS precheck, built from an Airflow AWS connection or from the environment.

The amazon provider's ``AwsBaseHook`` is used when it is installed (it knows every credential flavour: roles,
profiles, web identity); otherwise plain boto3 reads the connection's login/password and its extras
``region_name``, ``endpoint_url``, ``aws_session_token``, ``profile_name``, ``role_arn`` (with ``external_id``,
``role_session_name``, ``assume_role_kwargs``), and boto3 itself honours the standard environment
(``AWS_ENDPOINT_URL``, ``AWS_DEFAULT_REGION``, ``AWS_ACCESS_KEY_ID`` ...). Extras this path does not understand are
named in an error rather than ignored: a silently ignored role makes a cross-account database look missing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow_pgmigrate.config import RdsSettings

log = logging.getLogger(__name__)

#: Extras of an AWS connection that plain boto3 is given here.
KNOWN_EXTRAS = frozenset({"region_name", "endpoint_url", "aws_session_token", "profile_name", "role_arn",
                          "external_id", "role_session_name", "assume_role_kwargs"})
#: Extras only the amazon provider understands (web identity, SAML, config files ...).
_PROVIDER_ONLY = ("assume_role_method", "assume_role_with_web_identity_federation", "saml_config", "idp_url",
                  "config_kwargs", "session_kwargs", "service_config", "aws_account_id", "aws_iam_role")


class AwsConnectionError(Exception):
    """The AWS connection asks for something plain boto3 cannot do here; the message names the extra and the fix."""


def _provider_hook(settings: RdsSettings) -> Any | None:
    """The amazon provider's AwsBaseHook for the connection, or None when the provider is not installed."""
    try:
        from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return None
    log.info("RDS precheck: AWS clients from connection %r through the amazon provider", settings.aws_conn_id)
    return AwsBaseHook(aws_conn_id=settings.aws_conn_id, region_name=settings.region)


def _connection_extras(conn_id: str) -> tuple[Any, dict[str, Any]]:
    from airflow.sdk import BaseHook

    conn = BaseHook.get_connection(conn_id)
    extra = conn.extra_dejson if isinstance(getattr(conn, "extra_dejson", None), dict) else {}
    unsupported = sorted(k for k in extra if k in _PROVIDER_ONLY)
    if unsupported:
        raise AwsConnectionError(
            f"the AWS connection {conn_id!r} sets {', '.join(unsupported)}, which only the amazon provider "
            "understands: pip install apache-airflow-providers-amazon on the workers, or use role_arn / "
            "profile_name / an access key")
    return conn, extra


def _assume_role(session: Any, extra: dict[str, Any], client_kwargs: dict[str, Any]) -> Any:
    """A session with the credentials of ``extra['role_arn']``, assumed through the base session's STS."""
    import boto3

    kwargs: dict[str, Any] = dict(extra.get("assume_role_kwargs") or {})
    kwargs.setdefault("RoleArn", extra["role_arn"])
    kwargs.setdefault("RoleSessionName", str(extra.get("role_session_name") or "airflow-pgmigrate"))
    if extra.get("external_id"):
        kwargs.setdefault("ExternalId", extra["external_id"])
    credentials = session.client("sts", **client_kwargs).assume_role(**kwargs)["Credentials"]
    return boto3.session.Session(aws_access_key_id=credentials["AccessKeyId"],
                                 aws_secret_access_key=credentials["SecretAccessKey"],
                                 aws_session_token=credentials["SessionToken"], region_name=session.region_name)


def _plain_session(settings: RdsSettings) -> tuple[Any, dict[str, Any]]:
    """A boto3 session (and client arguments) from the connection, the settings and the environment."""
    import boto3

    extra: dict[str, Any] = {}
    login = password = None
    if settings.aws_conn_id:
        conn, extra = _connection_extras(settings.aws_conn_id)
        login, password = conn.login or None, conn.password or None
    session = boto3.session.Session(
        aws_access_key_id=login, aws_secret_access_key=password,
        aws_session_token=extra.get("aws_session_token") if login else None,
        region_name=settings.region or extra.get("region_name") or None,
        profile_name=extra.get("profile_name") or None,
    )
    client_kwargs: dict[str, Any] = {"endpoint_url": extra["endpoint_url"]} if extra.get("endpoint_url") else {}
    if extra.get("role_arn"):
        session = _assume_role(session, extra, client_kwargs)
    log.info("RDS precheck: boto3 clients (connection %r, region %s, credentials %s, endpoint %s)",
             settings.aws_conn_id, session.region_name,
             "role " + str(extra["role_arn"]) if extra.get("role_arn") else "profile " + str(extra["profile_name"])
             if extra.get("profile_name") else "from connection" if login else "from environment",
             client_kwargs.get("endpoint_url") or "default")
    return session, client_kwargs


def rds_client_factory(settings: RdsSettings) -> Callable[[str], Any]:
    """``factory(service) -> client`` for ``settings``, making the session on first use: a missing region or bad
    credentials then surface inside the precheck, as a failed item, not before any report."""
    made: dict[str, Any] = {}

    def factory(service: str) -> Any:
        if "session" not in made:
            hook = _provider_hook(settings) if settings.aws_conn_id else None
            made["session"] = ("hook", hook, {}) if hook is not None else ("boto3", *_plain_session(settings))
        kind, source, client_kwargs = made["session"]
        if kind == "hook":
            return source.get_client_type(service)
        return source.client(service, **client_kwargs)

    return factory


def rds_clients(settings: RdsSettings) -> tuple[Any, Any]:
    """``(rds_client, ec2_client)`` for ``settings``: via the amazon provider when possible, else plain boto3."""
    factory = rds_client_factory(settings)
    return factory("rds"), factory("ec2")


__all__ = ["AwsConnectionError", "KNOWN_EXTRAS", "rds_client_factory", "rds_clients"]
