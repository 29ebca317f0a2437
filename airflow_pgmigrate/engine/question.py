"""The cutover question: the figures a person needs to decide, and the question's text.

While the question waits, the task that keeps the destination in sync records after each window what it measured
(:class:`WaitingFigures`, state key ``waiting_sync``): the lag, how fast it applied, how fast the source writes.
The question reads those, the last verification and the slot, and says in words and units what each answer does.
Every answer, with who gave it and when, is kept in the state (``cutover_answers``) for the migration report.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from airflow_pgmigrate.engine.connection import ConnectionInfo, connect
from airflow_pgmigrate.engine.definitions import definition_lines
from airflow_pgmigrate.engine.incremental.pgoutput import lsn_to_int
from airflow_pgmigrate.engine.watchdog import format_bytes

if TYPE_CHECKING:
    from airflow_pgmigrate.config import MigrationConfig
    from airflow_pgmigrate.engine.state import MigrationState

CUT_OVER = "Cut over"
KEEP_SYNCING = "Keep syncing"
ABORT = "Abort"
OPTIONS = [CUT_OVER, KEEP_SYNCING, ABORT]
#: State keys: the figures of the task that syncs while the question waits; every answer given; the deciding answer.
WAITING_KEY = "waiting_sync"
ANSWERS_KEY = "cutover_answers"


def decision_key(run_id: str) -> str:
    """The state key of the answer that ends the wait (Cut over or Abort) in one DAG run."""
    return f"cutover_decision.{run_id}"


@dataclass
class SourceActivity:
    """One reading of how far the source has written: WAL insert position and committed transactions."""

    wal_lsn: int
    commits: int
    at: float = field(default_factory=time.monotonic)

    @classmethod
    def read(cls, source: ConnectionInfo) -> SourceActivity:
        with connect(source) as conn:
            row = conn.execute("SELECT pg_current_wal_insert_lsn()::text, xact_commit FROM pg_stat_database "
                               "WHERE datname = current_database()").fetchone()
        assert row is not None
        return cls(lsn_to_int(row[0]), int(row[1] or 0))

    def rates_since(self, earlier: SourceActivity) -> tuple[float, float] | None:
        """(WAL bytes per second, commits per second) between ``earlier`` and this reading."""
        seconds = self.at - earlier.at
        if seconds <= 0.2:
            return None
        return (max(0, self.wal_lsn - earlier.wal_lsn) / seconds, max(0, self.commits - earlier.commits) / seconds)


@dataclass
class WaitingFigures:
    """What the sync beside the question measured in its latest window."""

    lag_bytes: int
    #: How far behind the source the destination is, in time (None: not measured, as for a lag read from the slot).
    lag_seconds: float | None
    applied_lsn: str
    #: WAL applied per second while a backlog was pending (None: nothing was pending long enough to measure).
    apply_bytes_per_second: float | None = None
    #: WAL the source server writes per second, and transactions its database commits per second.
    source_wal_bytes_per_second: float | None = None
    source_commits_per_second: float | None = None
    windows: int = 0
    measured_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> WaitingFigures | None:
        if not data:
            return None
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        try:
            return cls(**known)
        except TypeError:
            return None


def format_rate(value: float | None) -> str:
    return "not measured yet" if value is None else f"{format_bytes(value)}/s"


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    if seconds < 1:
        return "under a second"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def estimated_drain_seconds(figures: WaitingFigures) -> float | None:
    """How long the drain after the freeze should take: the pending WAL at the apply rate measured, else the lag
    in seconds (how far behind the source the destination is); None when neither is known."""
    if figures.lag_bytes <= 0:
        return 0.0
    if figures.apply_bytes_per_second:
        return figures.lag_bytes / figures.apply_bytes_per_second
    return figures.lag_seconds


def _verification_lines(verification: dict[str, Any] | None) -> list[str]:
    if not verification:
        return ["- **Last verification:** none yet (the cutover verifies every table before it releases the source)"]
    from airflow_pgmigrate.engine.verify import differences

    tables = verification.get("tables") or []
    differing = [t for t in tables if not t.get("equal")]
    # Partitions, sequences, large objects, materialized views and table definitions count too (the report says "NOT
    # equal" for them); the cutover brings the state over again, not the definitions.
    state = differences({k: v for k, v in verification.items() if k not in ("tables", "definitions")})
    others = definition_lines(verification.get("definitions") or []) + state
    head = (f"- **Last verification:** {len(tables)} table(s), {verification.get('rows', 0):,} rows compared in "
            f"{format_duration(verification.get('seconds'))}: ")
    if not differing and not others:
        return [head + "no difference"]
    count = max(int(verification.get("differences") or 0), len(others))
    lines = [head + f"{count:,} difference(s)" + (f" in {len(differing)} table(s)" if differing else "")]
    for table in differing[:5]:
        lines.append(f"  - {table['table']}: {table.get('missing_count', 0)} missing, {table.get('extra_count', 0)} "
                     f"extra, {table.get('different_count', 0)} different row(s)")
    lines += [f"  - {line}" for line in others[:5]]
    if state:
        lines.append("  - (the cutover sets the sequences and brings the large objects over, then verifies again)")
    return lines


def _standing(config: MigrationConfig, figures: WaitingFigures | None) -> str:
    """Whether incremental sync is delayed, judged on the figures shown (the verification before the question pauses
    sync, so the lag may have grown past the thresholds since the sync step was done)."""
    max_bytes = _size(config.incremental.max_lag_bytes)
    max_seconds = config.incremental.max_lag_seconds
    thresholds = f"thresholds: {max_seconds:g} s and {format_bytes(max_bytes)}"
    over = []
    if figures is not None and figures.lag_bytes > max_bytes:
        over.append(f"{format_bytes(figures.lag_bytes)} of WAL")
    if figures is not None and figures.lag_seconds is not None and figures.lag_seconds > max_seconds:
        over.append(f"{figures.lag_seconds:.1f} s")
    if over:
        return (f"Incremental sync of **{config.name}** is **delayed**: {' and '.join(over)} behind the source, "
                f"above the {thresholds}. Cutting over now drains that backlog while writes are stopped.")
    if figures is None or figures.lag_seconds is None:
        return f"The lag of incremental sync of **{config.name}** is not fully measured yet ({thresholds})."
    return f"Incremental sync of **{config.name}** is not delayed ({thresholds})."


def question_body(config: MigrationConfig, figures: WaitingFigures | None, verification: dict[str, Any] | None,
                  *, report_link: str = "") -> str:
    """The question in Markdown: where the migration stands, and what each answer does."""
    asked = datetime.now(UTC).strftime("%H:%M:%S")
    lines = [_standing(config, figures) + f" Figures as of {asked} UTC, when this question was asked"
             + ("; the migration report below has the latest, refreshed while the question waits." if report_link
                else "."), ""]
    if figures is None:
        lines.append("- **Lag:** not measured yet")
    else:
        drain = estimated_drain_seconds(figures)
        lines += [
            f"- **Lag:** {format_bytes(figures.lag_bytes)} of WAL, "
            + ("time behind the source not measured yet (read from the replication slot)"
               if figures.lag_seconds is None else f"{figures.lag_seconds:.1f} s behind the source")
            + f" (measured {figures.measured_at[11:19]} UTC)",
            "- **Writes on the source:** " + ("not measured yet" if figures.source_wal_bytes_per_second is None
                                              else f"{format_rate(figures.source_wal_bytes_per_second)} of WAL")
            + ("" if figures.source_commits_per_second is None
               else f", {figures.source_commits_per_second:.1f} transactions per second"),
            f"- **Apply rate:** {format_rate(figures.apply_bytes_per_second)}",
            f"- **Estimated drain at the freeze:** {format_duration(drain)}"
            + ("" if drain is None else " (the changes still pending when writes stop)"),
        ]
    lines += _verification_lines(verification)
    freeze = ("sets the source database read-only (no new sessions but the migration's, the others ended)"
              if config.cutover.freeze_source else
              "takes your answer as your word that **writes on the source have stopped**")
    lines += [
        "",
        "**What each answer does**",
        "",
        f"- **{CUT_OVER}**: {freeze}, applies the last changes, checks that no change still arrives (it stops, "
        "keeping the slot, if one does), sets the sequences, verifies every table, then drops the replication slot "
        "and the publication. The source stays intact for a rollback.",
        f"- **{KEEP_SYNCING}**: nothing changes: the destination keeps following the source and this question is "
        "open again (your answer is kept in the report). Not answering at all also keeps the destination in sync.",
        f"- **{ABORT}**: stops the migration: drops the replication slot and the publication on the source; the "
        "destination is left as it is.",
    ]
    if report_link:
        lines += ["", f"[Migration report]({report_link})"]
    return "\n".join(lines)


def _size(value: int | str) -> int:
    from airflow_pgmigrate.config import parse_size

    return parse_size(value)


def record_answer(state: MigrationState, run_id: str, answer: str, by: dict[str, Any] | None,
                  figures: WaitingFigures | None) -> dict[str, Any]:
    """Keep an answer (and who gave it) for the report; Cut over and Abort also end the wait of ``run_id``."""
    entry = {"run_id": run_id, "answer": answer, "by": (by or {}).get("name") or (by or {}).get("id") or "unknown",
             "at": datetime.now(UTC).isoformat(), "lag_bytes": figures.lag_bytes if figures else None,
             "lag_seconds": figures.lag_seconds if figures else None}
    answers = list(state.get(ANSWERS_KEY) or [])
    answers.append(entry)
    state.put(ANSWERS_KEY, answers)
    if answer != KEEP_SYNCING:
        state.put(decision_key(run_id), entry)
    return entry


def lag_from_slot(config: MigrationConfig, source: ConnectionInfo) -> WaitingFigures | None:
    """The lag read from the slot alone (before the sync beside the question has measured anything)."""
    with connect(source) as conn:
        row = conn.execute("SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), confirmed_flush_lsn)::bigint, "
                           "confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
                           (config.slot_name,)).fetchone()
    if row is None:
        return None
    return WaitingFigures(lag_bytes=int(row[0] or 0), lag_seconds=None, applied_lsn=str(row[1]))


__all__ = ["ABORT", "ANSWERS_KEY", "CUT_OVER", "KEEP_SYNCING", "OPTIONS", "SourceActivity", "WAITING_KEY",
           "WaitingFigures", "decision_key", "estimated_drain_seconds", "format_duration", "lag_from_slot",
           "question_body", "record_answer"]
