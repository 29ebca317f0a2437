"""IngressCleanupOperator: the end of every migration that may add security-group ingress rules.

It runs as a teardown after every other task, on success, failure and abort alike, and removes exactly the rules
this migration added: those recorded in its state, and those found again by their description when the record is
lost or the destination cannot be reached.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import Context

from airflow_pgmigrate.engine.state import MigrationState
from airflow_pgmigrate.exceptions import PgMigrateError
from airflow_pgmigrate.operators.base import MigrationBaseOperator


class IngressCleanupOperator(MigrationBaseOperator):
    """Remove the ingress rules the precheck added for this migration (nothing to do without
    ``rds.manage_security_group``). Fails, after removing what it can, when a rule could not be removed, naming the
    missing IAM action or the setting to fix."""

    template_fields: Sequence[str] = ("config",)
    ui_color = "#d7dbdd"

    def __init__(self, *, keep_while_migrating: bool = False, **kwargs: Any) -> None:
        """``keep_while_migrating``: for a DAG that only prechecks (it shares the migration's record and rules'
        description): keep the rules while the migration's replication slot exists, as its sync needs them."""
        super().__init__(**kwargs)
        self.keep_while_migrating = keep_while_migrating

    def _migration_in_progress(self) -> bool:
        """Whether the migration's replication slot exists on the source (False when the source cannot tell)."""
        from airflow_pgmigrate.engine.connection import connect

        try:
            with connect(self.source_info) as src:
                return src.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s",
                                   (self.migration.slot_name,)).fetchone() is not None
        except Exception as exc:  # noqa: BLE001 - an unreachable source needs no network rule kept for it
            self.log.warning("ingress cleanup: cannot tell whether migration %s is in progress (%s)",
                             self.migration.name, exc)
            return False

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow_pgmigrate.engine.rds import RdsInspector
        from airflow_pgmigrate.engine.rds_ledger import IngressLedger, remove_added_rules
        from airflow_pgmigrate.hooks.rds import rds_client_factory

        config = self.migration
        if config.rds is None or not config.rds.manage_security_group:
            self.log.info("ingress cleanup migration=%s: the migration adds no ingress rule", config.name)
            return {"removed_ingress_rules": [], "problems": []}
        if self.keep_while_migrating and self._migration_in_progress():
            self.log.info("ingress cleanup migration=%s: kept, the migration is in progress (its slot %s exists) and "
                          "its own DAG removes the rules at its end", config.name, config.slot_name)
            return {"removed_ingress_rules": [], "problems": [], "kept": True}
        try:
            ledger: IngressLedger | None = IngressLedger(MigrationState(self.destination_info, config.state_schema,
                                                                        config.name))
        except Exception as exc:  # noqa: BLE001 - the rules are still found by their description
            self.log.warning("ingress cleanup: no destination for the record of added rules (%s)", exc)
            ledger = None
        inspector = RdsInspector(client_factory=rds_client_factory(config.rds))
        result = remove_added_rules(inspector, config.rds, config.name, ledger)
        for rule in result["removed_ingress_rules"]:
            self.log.info("ingress rule removed group=%s cidr=%s port=%s rule_id=%s", rule["group_id"], rule["cidr"],
                          rule["port"], rule["rule_id"])
        self.log.info("ingress cleanup migration=%s removed=%d problems=%d", config.name,
                      len(result["removed_ingress_rules"]), len(result["problems"]))
        if result["aws_problems"]:
            raise PgMigrateError(f"ingress cleanup of migration {config.name} could not remove every rule it "
                                       "added:\n" + "\n".join(f"- {p}" for p in result["problems"]))
        for problem in result["problems"]:
            self.log.warning("ingress cleanup: %s", problem)
        return result


__all__ = ["IngressCleanupOperator"]
