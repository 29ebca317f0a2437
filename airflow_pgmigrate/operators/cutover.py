"""CutoverOperator (freeze, drain, sequences, large objects, verify, release, report) and ReleaseOperator (abort)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import Context
from airflow.sdk.exceptions import AirflowFailException

from airflow_pgmigrate.engine.cutover import CutoverError, run_cutover
from airflow_pgmigrate.engine.incremental import release
from airflow_pgmigrate.engine.question import ABORT, decision_key
from airflow_pgmigrate.engine.state import MigrationState
from airflow_pgmigrate.operators.base import MigrationBaseOperator


def _rule_remover(operator: MigrationBaseOperator) -> Any:
    """Remove the ingress rules the precheck added once the cutover or the abort is done with the source, as the
    ingress cleanup does (the recorded rules, and those found by their description). Never raises: this runs after
    the slot is released, so an AWS error is logged and left to the cleanup teardown, which fails naming it."""
    config = operator.migration
    if config.rds is None:
        return None

    def remove(_recorded: list[dict[str, Any]]) -> list[Any]:
        from airflow_pgmigrate.engine.rds import RdsInspector
        from airflow_pgmigrate.engine.rds_ledger import IngressLedger, remove_added_rules
        from airflow_pgmigrate.hooks.rds import rds_client_factory

        assert config.rds is not None
        ledger = IngressLedger(MigrationState(operator.destination_info, config.state_schema, config.name))
        result = remove_added_rules(RdsInspector(client_factory=rds_client_factory(config.rds)), config.rds,
                                    config.name, ledger)
        for problem in result["problems"]:
            operator.log.warning("ingress rules not removed yet (the remove_ingress_rules task tries again): %s",
                                 problem)
        return list(result["removed_ingress_rules"])

    return remove


class CutoverOperator(MigrationBaseOperator):
    """Switch the migration over once approved: freeze the source (if configured) or take the approval as the word
    that writes stopped, drain the remaining changes, set sequences and bring over the large objects changed during
    sync, verify everything the migration moves, release the slot and publication (and the security-group rule the
    precheck added), and return the cutover report.

    A verification difference fails the task (the slot is kept) unless ``cutover.allow_differences``.
    """

    template_fields: Sequence[str] = ("config",)
    ui_color = "#f5b7b1"

    def execute(self, context: Context) -> dict[str, Any]:
        try:
            report = run_cutover(self.migration, self.source_info, self.destination_info,
                                 remove_rules=_rule_remover(self), log=lambda message: self.log.info("%s", message))
        except CutoverError as exc:
            context["ti"].xcom_push(key="cutover_report", value=exc.report)
            raise AirflowFailException(str(exc)) from None
        for line in report["next_steps"]:
            self.log.info("cutover next step: %s", line)
        return report


class ReleaseOperator(MigrationBaseOperator):
    """Abort: drop the slot and the publication, remove the security-group rule; the destination stays as it is.

    :param only_after_abort: release only when the cutover question of this DAG run was answered Abort (skip
        otherwise). Behind the question the task then runs whatever became of the sync beside it: a person who
        gives up after that sync failed must still get the slot released, or it keeps retaining WAL on the source.
    """

    template_fields: Sequence[str] = ("config",)
    ui_color = "#d7dbdd"

    def __init__(self, *, only_after_abort: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.only_after_abort = only_after_abort

    def execute(self, context: Context) -> dict[str, Any]:
        config = self.migration
        if self.only_after_abort:
            decision = MigrationState(self.destination_info, config.state_schema, config.name).get(
                decision_key(context["run_id"])) or {}
            if decision.get("answer") != ABORT:
                from airflow.sdk.exceptions import AirflowSkipException

                raise AirflowSkipException("the cutover question was not answered Abort in this DAG run: the slot "
                                           "and the publication stay")
        dropped = release(config, self.source_info, log=lambda message: self.log.info("%s", message))
        removed: list[Any] = []
        remover = _rule_remover(self)
        rules = MigrationState(self.destination_info, config.state_schema, config.name).get("added_ingress_rules")
        if remover is not None and rules:
            removed = remover(rules)
        return {**dropped, "removed_ingress_rules": removed}


__all__ = ["CutoverOperator", "ReleaseOperator"]
