"""Watchdogs of a running migration: the WAL our replication slot makes the source keep, and the lag alerts.

Retained WAL is ``pg_current_wal_lsn() - restart_lsn`` of the migration's slot: WAL the source cannot recycle until
the slot's consumer has confirmed it. Nothing consumes the slot during the full load, and a stopped or slow sync lets
it grow, so left alone it can fill the source's disk. Levels: ``ok``, ``warn`` (above
``incremental.retained_wal_warn``), ``stop`` (above ``incremental.retained_wal_stop``), and ``lost`` when the
source has invalidated the slot (``wal_status = 'lost'``, PostgreSQL 13+ with ``max_slot_wal_keep_size``).

A stop is demanded when the WAL is above the stop limit and has not shrunk since the previous check (kept in the
migration state): while a sync drains a backlog the retained WAL falls from one check to the next and the migration
goes on, with a warning. Alerts are sent once per crossing (a level or lag going up), with a "recovered" notice once
it falls back under the warning level. Pure logic apart from :func:`read_retention`; no Airflow here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from psycopg import sql

from airflow_pgmigrate.engine.connection import ConnectionInfo, connect
from airflow_pgmigrate.exceptions import PgMigrateError

if TYPE_CHECKING:
    from airflow_pgmigrate.config import MigrationConfig

LEVELS = ("ok", "warn", "stop")
#: The migration-state key holding the alert state across pokes, tasks and runs.
WATCH_KEY = "watch"


def format_bytes(value: int | float | None) -> str:
    """``1536`` -> ``1.5 KB``; binary units as in the config's sizes."""
    if value is None:
        return "unknown"
    amount = float(value)
    for unit in ("B", "KB", "MB", "GB"):
        if abs(amount) < 1024 or unit == "GB":
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    return f"{amount:.1f} TB"  # pragma: no cover - unreachable


@dataclass
class WalRetention:
    """What the source keeps for our slot. ``wal_status`` and ``safe_wal_size`` exist on PostgreSQL 13 and later."""

    slot: str
    exists: bool
    retained_bytes: int | None = None
    wal_status: str | None = None
    safe_wal_size: int | None = None
    active: bool | None = None
    restart_lsn: str | None = None
    current_lsn: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        parts = [f"retained_wal={format_bytes(self.retained_bytes)}"]
        if self.wal_status is not None:
            parts.append(f"wal_status={self.wal_status}")
        if self.safe_wal_size is not None:
            parts.append(f"safe_wal_size={format_bytes(self.safe_wal_size)}")
        return " ".join(parts)


def read_retention(slot: str, source: ConnectionInfo) -> WalRetention:
    """Read the slot's retained WAL on the source (one short query; columns of newer servers through to_jsonb)."""
    with connect(source) as src:
        row = src.execute(
            "SELECT pg_current_wal_lsn()::text, pg_wal_lsn_diff(pg_current_wal_lsn(), s.restart_lsn)::bigint, "
            "s.active, s.restart_lsn::text, to_jsonb(s) ->> 'wal_status', (to_jsonb(s) ->> 'safe_wal_size')::bigint "
            "FROM pg_replication_slots s WHERE s.slot_name = %s", (slot,)).fetchone()
        if row is None:
            current = src.execute("SELECT pg_current_wal_lsn()::text").fetchone()
            return WalRetention(slot=slot, exists=False, current_lsn=current[0] if current else None)
    return WalRetention(slot=slot, exists=True, current_lsn=row[0], retained_bytes=row[1], active=row[2],
                        restart_lsn=row[3], wal_status=row[4], safe_wal_size=row[5])


@dataclass
class Alert:
    """One alert: what happened, how bad, a one-line message and the figures behind it."""

    kind: str
    severity: str
    message: str
    details: dict[str, Any] = field(default_factory=dict)
    at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class WalVerdict:
    """The watchdog's reading of one check: level, whether the caller must stop, and the log line."""

    level: str
    retention: WalRetention
    stop: bool
    message: str
    shrinking: bool = False


class RetainedWalStop(PgMigrateError):
    """The watchdog demands a stop; raised inside a step (the full load) so that its caller stops it safely."""

    def __init__(self, verdict: WalVerdict, alerts: list[Alert]) -> None:
        super().__init__(verdict.message)
        self.verdict = verdict
        self.alerts = alerts


def drop_slot_command(slot: str) -> str:
    """The SQL a user runs on the source to release the slot."""
    return sql.SQL("SELECT pg_drop_replication_slot({});").format(sql.Literal(slot)).as_string(None)


def stop_message(config: MigrationConfig, verdict: WalVerdict, *, dropped: bool = False) -> str:
    """The task's failure message for a safe stop: how much WAL, why it stopped, and the two ways on."""
    retention = verdict.retention
    slot = config.slot_name
    drop = drop_slot_command(slot)
    if verdict.level == "lost":
        return (f"the source invalidated replication slot {slot} ({retention.describe()}): the WAL it needed is gone "
                f"(max_slot_wal_keep_size), so incremental sync cannot continue. Drop the slot ({drop} on the "
                "source) and run the migration again: it restarts from a fresh full load")
    limit = format_bytes(config.incremental.retained_wal_stop_bytes)
    head = (f"retained WAL watchdog stopped migration {config.name}: slot {slot} holds "
            f"{format_bytes(retention.retained_bytes)} of WAL on the source ({retention.describe()}), above "
            f"incremental.retained_wal_stop ({limit}) and not shrinking, so the source disk would fill. ")
    if dropped:
        return head + ("The slot was dropped (incremental.drop_slot_on_stop): the source frees that WAL at its next "
                       "checkpoint. Run the migration again: it restarts from a fresh full load")
    return head + ("The slot is kept. Choose one: (1) resume quickly: make room on the source or raise "
                   "incremental.retained_wal_stop, remove what holds the WAL (a stopped or slow incremental sync, "
                   "a long-running transaction on the source), then clear this task; the sync drains the backlog and "
                   "the WAL is released as it catches up. (2) release: drop the slot (the release task, or "
                   f"{drop} on the source) so the source frees the WAL, then run the migration again: it restarts "
                   "from a fresh full load")


class Watch:
    """The alert state of one migration (lag level, WAL level, last retained WAL), carried between checks.

    ``state`` is the JSON kept in the migration state under :data:`WATCH_KEY`; read it before and write
    :attr:`state` back after the checks of one poke or one full-load step.
    """

    def __init__(self, config: MigrationConfig, state: dict[str, Any] | None = None) -> None:
        self.config = config
        self.state: dict[str, Any] = dict(state or {})

    # -- lag ----------------------------------------------------------------------------------------------------

    def lag(self, lag_bytes: int, lag_seconds: float) -> list[Alert]:
        """Compare a poke's lag with ``alerts.lag_seconds`` / ``alerts.lag_bytes``; alert on crossings only."""
        alerts_cfg = self.config.alerts
        limit_s, limit_b = alerts_cfg.lag_seconds, alerts_cfg.lag_bytes_limit
        over: list[str] = []
        if limit_s is not None and lag_seconds > limit_s:
            over.append(f"{lag_seconds:.1f} s > {limit_s:g} s")
        if limit_b is not None and lag_bytes > limit_b:
            over.append(f"{format_bytes(lag_bytes)} > {format_bytes(limit_b)}")
        level = "high" if over else "ok"
        previous = self.state.get("lag", "ok")
        self.state["lag"] = level
        details = {"lag_bytes": lag_bytes, "lag_seconds": lag_seconds, "threshold_seconds": limit_s,
                   "threshold_bytes": limit_b}
        name = self.config.name
        if level == "high" and previous != "high":
            return [Alert("lag_high", "warning", f"migration {name}: incremental sync lag is above the alert "
                          f"threshold ({', '.join(over)})", details)]
        if level == "ok" and previous == "high":
            return [Alert("lag_recovered", "info", f"migration {name}: incremental sync lag is back under the alert "
                          f"threshold (lag {format_bytes(lag_bytes)}, {lag_seconds:.1f} s)", details)]
        return []

    # -- retained WAL -------------------------------------------------------------------------------------------

    def wal(self, retention: WalRetention) -> tuple[WalVerdict, list[Alert]]:
        """Level of the slot's retained WAL, whether to stop, and the alerts due (once per crossing)."""
        inc = self.config.incremental
        warn, stop = inc.retained_wal_warn_bytes, inc.retained_wal_stop_bytes
        previous_level = self.state.get("wal_level", "ok")
        previous_bytes = self.state.get("retained_wal_bytes")
        retained = retention.retained_bytes
        self.state["checked_at"] = datetime.now(UTC).isoformat()
        if not retention.exists:
            self.state.update(wal_level="ok", retained_wal_bytes=None)
            return WalVerdict("missing", retention, False, f"watchdog slot={retention.slot} does not exist"), []
        if retention.wal_status == "lost":
            level = "lost"
        elif retained is None:
            level = "ok"
        elif stop is not None and retained >= stop:
            level = "stop"
        elif (warn is not None and retained >= warn) or retention.wal_status == "unreserved":
            level = "warn"
        else:
            level = "ok"
        shrinking = retained is not None and isinstance(previous_bytes, int) and retained < previous_bytes
        must_stop = level == "lost" or (level == "stop" and not shrinking)
        self.state.update(wal_level=level, retained_wal_bytes=retained)
        line = (f"watchdog slot={retention.slot} level={level} {retention.describe()} "
                f"warn={format_bytes(warn) if warn is not None else 'off'} "
                f"stop={format_bytes(stop) if stop is not None else 'off'}")
        if level == "stop" and shrinking:
            line += " shrinking=true (the sync is draining it: going on)"
        verdict = WalVerdict(level, retention, must_stop, line, shrinking)
        details = {**retention.to_dict(), "warn_bytes": warn, "stop_bytes": stop, "level": level}
        name, size = self.config.name, format_bytes(retained)
        rank = {"ok": 0, "warn": 1, "stop": 2, "lost": 3}
        alerts: list[Alert] = []
        if rank[level] > rank.get(previous_level, 0):
            if level == "warn":
                if warn is not None and (retained or 0) >= warn:
                    reason = f"above incremental.retained_wal_warn ({format_bytes(warn)})"
                else:
                    reason = "and the server may soon remove WAL it needs (wal_status=unreserved)"
                alerts.append(Alert("retained_wal_warn", "warning", f"migration {name}: slot {retention.slot} "
                                    f"holds {size} of WAL on the source, {reason}", details))
            elif level == "stop":
                action = "the migration stops" if must_stop else "the sync is draining it, the migration goes on"
                alerts.append(Alert("retained_wal_stop", "critical", f"migration {name}: slot {retention.slot} holds "
                                    f"{size} of WAL on the source, above incremental.retained_wal_stop "
                                    f"({format_bytes(stop)}): {action}", details))
            else:
                alerts.append(Alert("slot_lost", "critical", f"migration {name}: the source invalidated slot "
                                    f"{retention.slot}; restart from a fresh full load", details))
        elif level == "ok" and previous_level in ("warn", "stop"):
            alerts.append(Alert("retained_wal_recovered", "info", f"migration {name}: slot {retention.slot} holds "
                                f"{size} of WAL on the source, back under the warning level", details))
        return verdict, alerts


__all__ = ["Alert", "LEVELS", "RetainedWalStop", "WATCH_KEY", "WalRetention", "WalVerdict", "Watch", "drop_slot_command",
           "format_bytes", "read_retention", "stop_message"]
