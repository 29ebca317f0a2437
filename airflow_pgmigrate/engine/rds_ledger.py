"""The record of the ingress rules a migration added, in its state on the destination (key
``added_ingress_rules``): merged across prechecks, written before each rule is added, forgotten once removed.

A rule is first recorded as planned (group, CIDR, port, description), then again with the rule id AWS returned.
Every change reads, merges and writes under a transaction-scoped advisory lock, so two prechecks never overwrite
each other's rules.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from airflow_pgmigrate.engine.connection import connect
from airflow_pgmigrate.engine.rds import IngressRule, RdsInspector
from airflow_pgmigrate.engine.state import MigrationState

if TYPE_CHECKING:
    from airflow_pgmigrate.config import RdsSettings

STATE_KEY = "added_ingress_rules"


def merge_rules(recorded: Iterable[IngressRule], new: Iterable[IngressRule]) -> list[IngressRule]:
    """``recorded`` plus ``new``; a rule with its id replaces the planned entry (no id) of the same group, CIDR and
    port; the same rule id is kept once."""
    merged: list[IngressRule] = []
    for rule in [*recorded, *new]:
        if rule.rule_id and any(r.rule_id == rule.rule_id for r in merged):
            continue
        if not rule.rule_id and any(r.key == rule.key for r in merged):
            continue
        if rule.rule_id:
            merged = [r for r in merged if r.rule_id or r.key != rule.key]
        merged.append(rule)
    return merged


def _forget(recorded: list[IngressRule], gone: Iterable[IngressRule]) -> list[IngressRule]:
    gone = list(gone)
    ids = {r.rule_id for r in gone if r.rule_id}
    planned = {r.key for r in gone if not r.rule_id}
    return [r for r in recorded if not (r.rule_id in ids if r.rule_id else r.key in planned)]


class IngressLedger:
    """The added rules of one migration, kept in its :class:`MigrationState`."""

    def __init__(self, state: MigrationState) -> None:
        self.state = state

    def read(self) -> list[IngressRule]:
        return [IngressRule.from_dict(d) for d in self.state.get(STATE_KEY) or []]

    def add(self, rules: Iterable[IngressRule]) -> None:
        """Merge ``rules`` into the record (durable when this returns)."""
        new = list(rules)
        self._update(lambda recorded: merge_rules(recorded, new))

    def forget(self, rules: Iterable[IngressRule]) -> None:
        """Drop rules that are gone from the record."""
        gone = list(rules)
        self._update(lambda recorded: _forget(recorded, gone))

    def _update(self, change: Any) -> None:
        with connect(self.state.destination) as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))",
                         (f"airflow-pgmigrate ingress {self.state.schema} {self.state.migration}",))
            self.state.ensure(conn)
            recorded = [IngressRule.from_dict(d) for d in self.state.read(conn, STATE_KEY) or []]
            self.state.write(conn, STATE_KEY, [r.to_dict() for r in change(recorded)])


def remove_added_rules(inspector: RdsInspector, settings: RdsSettings, migration_name: str,
                       ledger: IngressLedger | None) -> dict[str, Any]:
    """The end of a migration: remove every ingress rule it added (recorded, or found by its description when the
    record is lost or unreachable), then forget them. Returns what was removed and every problem with its fix."""
    problems: list[str] = []
    recorded: list[IngressRule] = []
    try:
        if ledger is None:
            raise LookupError("the destination connection is not configured")
        recorded = ledger.read()
    except Exception as exc:  # noqa: BLE001 - the description still finds the rules
        problems.append(f"the record of added rules could not be read ({exc}); rules were searched by their "
                        "description only")
    outcome = inspector.clean_up(settings, migration_name, recorded)
    problems += [f"{p.detail()}; fix: {p.fix()}" for p in outcome.problems]
    if outcome.settled and recorded and ledger is not None:
        try:
            ledger.forget(outcome.settled)
        except Exception as exc:  # noqa: BLE001 - forgetting is tidiness: a later cleanup finds nothing to remove
            problems.append(f"the record of removed rules could not be updated ({exc})")
    return {"removed_ingress_rules": [r.to_dict() for r in outcome.removed],
            "aws_problems": [p.detail() for p in outcome.problems], "problems": problems}


__all__ = ["STATE_KEY", "IngressLedger", "merge_rules", "remove_added_rules"]
