"""Migration alerts through Airflow notifiers.

An alert (lag above a threshold, retained WAL, a task that failed) is a small dict: ``kind``, ``severity``,
``message``, ``migration``, ``dag_id``, ``run_id``, ``task_id``, ``at`` and the figures behind it. It goes to every
notifier of the config's ``alerts.notifiers``: any ``BaseNotifier`` subclass (Slack, SMTP, ... from their providers)
built from its ``kwargs``, where the placeholders ``{kind}``, ``{severity}``, ``{message}``, ``{migration}``,
``{dag_id}``, ``{run_id}``, ``{task_id}`` and ``{at}`` are replaced by the alert's values, and called with the task
context plus ``pgmigrate_alert`` (the alert); or one of the built-in notifiers below, which need no other provider.
(Not Jinja: Airflow renders the migration config, notifier arguments included, when the task starts, before any
alert exists.)

A notifier that fails is logged and skipped: an alert that cannot be sent never fails the migration.
"""

from __future__ import annotations

import importlib
import json
import logging
import re
import threading
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from airflow.sdk import BaseNotifier

from airflow_pgmigrate.config import ALERT_PLACEHOLDERS, MigrationConfig, NotifierSettings, load_config
from airflow_pgmigrate.exceptions import ConfigError, Problem

#: The context key holding the alert when a notifier is called for one.
ALERT_CONTEXT_KEY = "pgmigrate_alert"

log = logging.getLogger(__name__)
_file_lock = threading.Lock()


def _from_context(context: Mapping[str, Any]) -> dict[str, Any]:
    """The alert in the context, or (used directly as a task callback) a record of the task's state."""
    alert = context.get(ALERT_CONTEXT_KEY)
    if isinstance(alert, Mapping):
        return dict(alert)
    ti = context.get("ti") or context.get("task_instance")
    exception = context.get("exception")
    return {"kind": "task_state", "severity": "warning", "dag_id": getattr(ti, "dag_id", None),
            "task_id": getattr(ti, "task_id", None), "run_id": context.get("run_id"),
            "state": str(getattr(ti, "state", "") or ""), "message": str(exception)[:1000] if exception else "",
            "at": datetime.now(UTC).isoformat()}


class AlertFileNotifier(BaseNotifier):
    """Append each alert as one JSON line to a file. Needs no provider: for tests, demos, or a log shipper.

    :param path: the file (templated); its folder is created if missing.
    """

    template_fields = ("path",)

    def __init__(self, *, path: str) -> None:
        super().__init__()
        self.path = path

    def notify(self, context: Any) -> None:
        record = _from_context(context)
        target = Path(self.path)
        target.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(record, default=str, sort_keys=True)
        with _file_lock, target.open("a", encoding="utf-8") as handle:
            handle.write(line + "\n")


class AlertLogNotifier(BaseNotifier):
    """Write each alert as one log line of the task (``level``: warning by default)."""

    def __init__(self, *, level: str = "warning") -> None:
        super().__init__()
        self.level = level

    def notify(self, context: Any) -> None:
        record = _from_context(context)
        level = getattr(logging, str(self.level).upper(), logging.WARNING)
        self.log.log(level if isinstance(level, int) else logging.WARNING,
                     "pgmigrate alert kind=%s severity=%s migration=%s task=%s message=%s", record.get("kind"),
                     record.get("severity"), record.get("migration"), record.get("task_id"), record.get("message"))


def notifier_class(spec: NotifierSettings, field_path: str = "alerts.notifiers") -> type[BaseNotifier]:
    """Import a configured notifier class; a ConfigError names the field and the fix when that is impossible."""
    module_name, _, class_name = spec.class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError([Problem(f"{field_path}.notifier", f"cannot import {spec.class_path!r}: {exc}",
                                   "install the provider that ships it, or fix the import path")]) from None
    if not (isinstance(cls, type) and issubclass(cls, BaseNotifier)):
        raise ConfigError([Problem(f"{field_path}.notifier", f"{spec.class_path!r} is not a BaseNotifier subclass",
                                   "name a notifier class (airflow.sdk.BaseNotifier)")])
    return cls


def check_notifiers(config: MigrationConfig) -> None:
    """Import every configured notifier class (at DAG parse time: a missing provider shows as a config error)."""
    for i, spec in enumerate(config.alerts.notifiers):
        notifier_class(spec, f"alerts.notifiers[{i}]")


_PLACEHOLDER_RE = re.compile(r"\{(" + "|".join(ALERT_PLACEHOLDERS) + r")\}")


def fill_placeholders(value: Any, alert: Mapping[str, Any]) -> Any:
    """Replace ``{message}``-style placeholders in a notifier argument (strings in lists and dicts too)."""
    if isinstance(value, str):
        return _PLACEHOLDER_RE.sub(lambda m: str(alert.get(m.group(1)) or ""), value)
    if isinstance(value, list):
        return [fill_placeholders(v, alert) for v in value]
    if isinstance(value, dict):
        return {k: fill_placeholders(v, alert) for k, v in value.items()}
    return value


def _scrub(text: str, secrets: Iterable[str | None]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def known_passwords(task: Any) -> list[str | None]:
    """Passwords a migration task has already looked up (never looked up here), to keep them out of texts."""
    found: list[str | None] = []
    for name in ("source_hook", "destination_hook"):
        hook = getattr(task, "__dict__", {}).get(name)
        info = getattr(hook, "__dict__", {}).get("connection_info")
        found.append(getattr(info, "password", None))
    return found


def send_alert(config: MigrationConfig, alert: Mapping[str, Any], context: Mapping[str, Any],
               logger: logging.Logger | Any = log) -> int:
    """Send one alert to every configured notifier; returns how many took it. Never raises."""
    ti = context.get("ti") or context.get("task_instance")
    secrets = known_passwords(context.get("task"))
    record: dict[str, Any] = {"migration": config.name, "dag_id": getattr(ti, "dag_id", None),
                              "run_id": context.get("run_id"), "task_id": getattr(ti, "task_id", None),
                              **{k: v for k, v in alert.items()}}
    record["message"] = _scrub(str(record.get("message") or ""), secrets)
    logger.warning("pgmigrate alert kind=%s severity=%s migration=%s message=%s", record.get("kind"),
                   record.get("severity"), config.name, record["message"])
    delivered = 0
    for i, spec in enumerate(config.alerts.notifiers):
        try:
            kwargs = {k: fill_placeholders(v, record) for k, v in spec.kwargs.items()}
            notifier = notifier_class(spec, f"alerts.notifiers[{i}]")(**kwargs)
            notifier({**context, ALERT_CONTEXT_KEY: record})
            delivered += 1
        except Exception as exc:  # noqa: BLE001 - an alert that cannot be sent must not fail the migration
            logger.warning("pgmigrate alert not delivered kind=%s notifier=%s error=%s", record.get("kind"),
                           spec.notifier, _scrub(str(exc), secrets)[:500])
            _count("pgmigrate.alerts.failed", record)
    _count("pgmigrate.alerts.raised", record)
    return delivered


def _count(name: str, record: Mapping[str, Any]) -> None:
    try:
        from airflow.sdk.observability.stats import Stats
    except ImportError:  # pragma: no cover - older task SDK
        return
    Stats.incr(name, tags={"migration": str(record.get("migration")), "kind": str(record.get("kind"))})


def task_failed_alert(config: MigrationConfig, context: Mapping[str, Any]) -> dict[str, Any]:
    ti = context.get("ti") or context.get("task_instance")
    exception = context.get("exception")
    task_id = getattr(ti, "task_id", None)
    text = f"{type(exception).__name__}: {exception}" if isinstance(exception, BaseException) else str(exception or "")
    return {"kind": "task_failed", "severity": "critical",
            "message": f"migration {config.name}: task {task_id} failed" + (f": {text[:1000]}" if text else ""),
            "try_number": getattr(ti, "try_number", None), "at": datetime.now(UTC).isoformat()}


class MigrationAlertNotifier(BaseNotifier):
    """Send a migration alert to the notifiers of ``alerts.notifiers``.

    As a task's ``on_failure_callback`` (the DAG template wires it when ``alerts.on_task_failure``), it sends a
    ``task_failed`` alert naming the task and the error. A failing notifier is logged, never raised.

    :param config: the migration (MigrationConfig, dict or YAML path); None: the config of the task that failed.
    :param alert: the alert to send; None: a ``task_failed`` alert built from the context.
    """

    def __init__(self, *, config: MigrationConfig | Mapping[str, Any] | str | None = None,
                 alert: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.config = config
        self.alert = alert

    def notify(self, context: Any) -> None:
        try:
            config = load_config(self.config) if self.config is not None else context["task"].migration
        except Exception as exc:  # noqa: BLE001 - no config, no notifiers: nothing else to do
            self.log.warning("pgmigrate alert not sent: the migration config is not available (%s)", exc)
            return
        if self.alert is None and not config.alerts.on_task_failure:
            return
        alert = dict(self.alert) if self.alert is not None else task_failed_alert(config, context)
        send_alert(config, alert, context, self.log)


__all__ = ["ALERT_CONTEXT_KEY", "AlertFileNotifier", "AlertLogNotifier", "MigrationAlertNotifier", "check_notifiers",
           "fill_placeholders", "known_passwords", "notifier_class", "send_alert", "task_failed_alert"]
