"""The teardown that ends every migration DAG which may add security-group ingress rules."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from airflow_pgmigrate.config import MigrationConfig
from airflow_pgmigrate.operators.rds import IngressCleanupOperator

CLEANUP_TASK_ID = "remove_ingress_rules"


def add_ingress_cleanup(config: MigrationConfig | None, task_config: Any, tasks: Iterable[Any], *,
                        precheck_only: bool = False) -> dict[str, Any]:
    """Add ``remove_ingress_rules`` after every task of ``tasks`` as a teardown: it runs once all of them are done,
    whether they succeeded, failed or were skipped by an abort, and the DAG run's state stays that of the migration's
    own tasks. Only when the config may add rules (``rds.manage_security_group``); ``config=None`` (a config given in
    the trigger form) always adds it, and the task finds nothing to do at run time. ``precheck_only``: a DAG that only
    prechecks keeps the rules while the migration is in progress elsewhere. Returns {task_id: task} or {}."""
    if config is not None and (config.rds is None or not config.rds.manage_security_group):
        return {}
    tasks = list(tasks)
    leaves = [t for t in tasks if not t.downstream_list]
    cleanup = IngressCleanupOperator(task_id=CLEANUP_TASK_ID, config=task_config, retries=2,
                                     keep_while_migrating=precheck_only).as_teardown()
    for leaf in leaves:
        leaf >> cleanup
    return {CLEANUP_TASK_ID: cleanup}


__all__ = ["CLEANUP_TASK_ID", "add_ingress_cleanup"]
