"""The migration report: one self-contained HTML file with the timeline of every step and plots of lag, throughput
and retained WAL over time (inline SVG drawn here: no JavaScript, nothing fetched from the network).

Data comes from the migration's durable state in the destination: the journal (events and progress samples, see
engine/journal.py), the full load's committed chunks, and the cutover report. The file is
``<report directory>/<migration name>.html``; the migration tasks rewrite it at their end, and
``python -m airflow_pgmigrate.engine.report CONFIG`` writes it on demand.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import sys
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from airflow_pgmigrate.engine.connection import TLS_KEYS, ConnectionInfo, connect
from airflow_pgmigrate.engine.definitions import definition_lines
from airflow_pgmigrate.engine.journal import RUNNING, Journal
from airflow_pgmigrate.engine.state import MigrationState
from airflow_pgmigrate.engine.watchdog import WATCH_KEY, format_bytes

if TYPE_CHECKING:
    from airflow_pgmigrate.config import MigrationConfig

#: Points per plotted series at most (the journal merges older samples into time buckets beyond this).
MAX_POINTS = 600
#: Individual sensor pokes listed in the report's table (the plot shows them all).
MAX_POKES_LISTED = 200


# -- where the report goes ------------------------------------------------------------------------------------------


def report_directory(config: MigrationConfig) -> Path:
    """``report.directory``, else ``$PGMIGRATE_REPORT_FOLDER``, else ``$AIRFLOW_HOME/pgmigrate_reports``."""
    if config.report.directory:
        return Path(config.report.directory).expanduser()
    if os.environ.get("PGMIGRATE_REPORT_FOLDER"):
        return Path(os.environ["PGMIGRATE_REPORT_FOLDER"]).expanduser()
    return Path(os.environ.get("AIRFLOW_HOME") or "~/airflow").expanduser() / "pgmigrate_reports"


def report_path(config: MigrationConfig) -> Path:
    return report_directory(config) / f"{config.name}.html"


def report_url(config: MigrationConfig, server: str = "") -> str:
    """The link to the report: under ``report.base_url`` when set, else the page Airflow's API server serves
    (``<server>/pgmigrate/reports/<name>.html``; ``server`` is ``[api] base_url``, or empty for a link relative
    to the Airflow UI's own address)."""
    if config.report.base_url:
        return f"{config.report.base_url.rstrip('/')}/{config.name}.html"
    return f"{server.rstrip('/')}/pgmigrate/reports/{config.name}.html"


# -- collecting -----------------------------------------------------------------------------------------------------


@dataclass
class ReportData:
    """Everything the report shows, read from the destination's state schema."""

    migration: str
    summary: dict[str, Any]
    #: Task tries and other events (not the pokes).
    events: list[dict[str, Any]] = field(default_factory=list)
    #: Sensor pokes per task, merged into at most a few hundred marks each (Journal.poke_marks).
    poke_marks: list[dict[str, Any]] = field(default_factory=list)
    #: The latest pokes, as recorded.
    last_pokes: list[dict[str, Any]] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)
    tables: list[dict[str, Any]] = field(default_factory=list)
    copy_points: list[tuple[datetime, float]] = field(default_factory=list)
    full_load: dict[str, Any] | None = None
    cutover: dict[str, Any] | None = None
    watch: dict[str, Any] | None = None
    #: Every answer to the cutover question (who, what, when), and the last verification while syncing.
    answers: list[dict[str, Any]] = field(default_factory=list)
    verification: dict[str, Any] | None = None
    #: What the sync beside the cutover question measured last (engine/question.py).
    waiting: dict[str, Any] | None = None
    generated_at: datetime = field(default_factory=lambda: datetime.now(UTC))


def _full_load_chunks(conn: psycopg.Connection, config: MigrationConfig) -> tuple[list[dict[str, Any]],
                                                                                 list[tuple[datetime, float]]]:
    table = sql.Identifier(config.state_schema, "full_load_chunks")
    exists = conn.execute("SELECT to_regclass(%s)", (table.as_string(conn),)).fetchone()
    if not exists or exists[0] is None:
        return [], []
    rows = conn.execute(sql.SQL(
        "SELECT table_name, min(done_at - seconds * interval '1 second'), max(done_at), sum(rows)::bigint, "
        "sum(bytes)::bigint, count(*) FROM {} WHERE migration = %s GROUP BY table_name ORDER BY 2").format(table),
        (config.name,)).fetchall()
    tables = [{"table": r[0], "started_at": r[1], "finished_at": r[2], "rows": r[3], "bytes": r[4], "chunks": r[5]}
              for r in rows]
    points = conn.execute(sql.SQL(
        "SELECT done_at, bytes / greatest(seconds, 0.001) / 1048576.0 FROM {} WHERE migration = %s "
        "ORDER BY done_at LIMIT %s").format(table), (config.name, MAX_POINTS)).fetchall()
    return tables, [(p[0], float(p[1])) for p in points]


def collect(config: MigrationConfig, destination: ConnectionInfo, conn: psycopg.Connection) -> ReportData:
    """Read the report's data through an open connection to the destination."""
    journal = Journal(config.state_schema, config.name)
    state = MigrationState(destination, config.state_schema, config.name)
    tables, points = _full_load_chunks(conn, config)
    summary = {
        "migration": config.name,
        "types": ", ".join(config.migration_types),
        "source": config.source.conn_id + (f" (database {config.source.database})" if config.source.database else ""),
        "destination": config.destination.conn_id
        + (f" (database {config.destination.database})" if config.destination.database else ""),
        "slot": config.slot_name if config.wants("incremental") else None,
        "state_schema": config.state_schema,
    }
    return ReportData(migration=config.name, summary=summary, events=journal.events(conn),
                      poke_marks=journal.poke_marks(conn), last_pokes=journal.last_pokes(conn, MAX_POKES_LISTED),
                      samples=journal.samples(conn, MAX_POINTS), tables=tables, copy_points=points,
                      full_load=state.read(conn, "full_load"), cutover=state.read(conn, "cutover"),
                      watch=state.read(conn, WATCH_KEY), answers=state.read(conn, "cutover_answers") or [],
                      verification=state.read(conn, "verification"), waiting=state.read(conn, "waiting_sync"))


# -- the timeline -------------------------------------------------------------------------------------------------


@dataclass
class TimelineRow:
    """One line of the timeline: a task, a sensor's pokes, a table of the full load or a cutover phase."""

    step: str
    kind: str
    started_at: datetime
    finished_at: datetime | None
    outcome: str
    detail: str = ""
    marks: list[tuple[datetime, datetime | None, str]] = field(default_factory=list)
    run_id: str | None = None

    @property
    def seconds(self) -> float | None:
        if self.finished_at is None:
            return None
        return max(0.0, (self.finished_at - self.started_at).total_seconds())


def _detail_text(detail: dict[str, Any]) -> str:
    keep = [f"{k}={v}" for k, v in detail.items() if k not in ("error",) and v not in (None, "", [], {})]
    if detail.get("error"):
        keep.append(f"error: {detail['error']}")
    return " ".join(keep)


def _parse_time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            return None
    return None


def timeline(data: ReportData) -> list[TimelineRow]:
    """The report's timeline rows, oldest first."""
    rows: list[TimelineRow] = []
    pokes: dict[tuple[str | None, str], list[dict[str, Any]]] = {}
    for mark in data.poke_marks:
        pokes.setdefault((mark["run_id"], mark["step"]), []).append(mark)
    latest = {(p["run_id"], p["step"]): p for p in data.last_pokes}
    ends: dict[tuple[str | None, str], dict[str, Any]] = {}
    for event in data.events:
        key = (event["run_id"], event["step"])
        if event["kind"] == "task" and key in pokes:
            ends[key] = event  # a sensor's end (success or failure) closes its row of pokes
            continue
        rows.append(TimelineRow(event["step"], event["kind"], event["started_at"], event["finished_at"],
                                event["outcome"], _detail_text(event["detail"] or {}), run_id=event["run_id"]))
    for key, marks in pokes.items():
        detail = (f"pokes={sum(int(m['pokes']) for m in marks)} "
                  f"transactions={sum(int(m['transactions'] or 0) for m in marks)}")
        last = latest.get(key)
        if last is not None and (last["detail"] or {}).get("lag_bytes") is not None:
            detail += f" last_lag={format_bytes(last['detail']['lag_bytes'])}"
        end = marks[-1]["finished_at"]
        outcome = last["outcome"] if last is not None else marks[-1]["outcome"]
        if key in ends:
            closing = ends[key]
            outcome = closing["outcome"]
            end = max((t for t in (end, closing["finished_at"]) if t is not None), default=None)
            error = (closing["detail"] or {}).get("error")
            if error:
                detail += f" error: {error}"
        rows.append(TimelineRow(key[1], "pokes", marks[0]["started_at"], end, outcome, detail,
                                marks=[(m["started_at"], m["finished_at"], m["outcome"]) for m in marks],
                                run_id=key[0]))
    for table in data.tables:
        rows.append(TimelineRow(f"full_load · {table['table']}", "table", table["started_at"], table["finished_at"],
                                "copied", f"rows={table['rows']} size={format_bytes(table['bytes'])} "
                                f"chunks={table['chunks']}"))
    cutover = data.cutover or {}
    started = _parse_time(cutover.get("started_at"))
    if started is not None:
        at = started
        for phase in cutover.get("steps") or []:
            end = at + timedelta(seconds=float(phase.get("seconds") or 0))
            extra = {k: v for k, v in phase.items() if k not in ("step", "seconds")}
            rows.append(TimelineRow(f"cutover · {phase.get('step')}", "phase", at, end, "done", _detail_text(extra)))
            at = end
    rows.sort(key=lambda r: r.started_at)
    return rows


# -- drawing --------------------------------------------------------------------------------------------------------

_OUTCOME_COLORS = {"success": "#2e7d32", "done": "#2e7d32", "copied": "#2e7d32", "not_delayed": "#2e7d32",
                   "delayed": "#f9a825", "failed": "#c62828", "stopped": "#c62828", "up_for_retry": "#ef6c00",
                   "unreachable": "#ef6c00", "skipped": "#9e9e9e", RUNNING: "#1565c0"}
_SERIES_COLORS = ("#1565c0", "#c62828", "#2e7d32", "#6a1b9a")


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt_time(value: datetime | None) -> str:
    return "" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _fmt_seconds(value: float | None) -> str:
    if value is None:
        return ""
    if value < 120:
        return f"{value:.1f} s"
    minutes, seconds = divmod(int(value), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{seconds:02d}s" if hours else f"{minutes}m{seconds:02d}s"


def _fmt_value(value: float) -> str:
    if value >= 1000:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.0f}"
    return f"{value:.2f}".rstrip("0").rstrip(".") if value else "0"


def _span(times: Iterable[datetime | None]) -> tuple[datetime, datetime]:
    known = [t for t in times if t is not None]
    if not known:
        now = datetime.now(UTC)
        return now - timedelta(seconds=1), now
    lo, hi = min(known), max(known)
    return lo, hi if hi > lo else lo + timedelta(seconds=1)


def gantt_svg(rows: Sequence[TimelineRow], now: datetime) -> str:
    """The timeline as bars on a common time axis, one line per row, pokes as ticks."""
    if not rows:
        return ""
    t0, t1 = _span([r.started_at for r in rows] + [r.finished_at or now for r in rows])
    label_w, width, line_h = 230, 980, 20
    plot_w = width - label_w - 10
    height = line_h * len(rows) + 30
    total = (t1 - t0).total_seconds()

    def x(t: datetime) -> float:
        return label_w + plot_w * (t - t0).total_seconds() / total

    parts = [f'<svg class="gantt" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="timeline">']
    for i, row in enumerate(rows):
        y = 4 + i * line_h
        parts.append(f'<text x="4" y="{y + 13}" font-size="11">{_esc(row.step[:36])}</text>')
        marks = row.marks or [(row.started_at, row.finished_at, row.outcome)]
        for start, end, outcome in marks:
            x0, x1 = x(start), x(end or now)
            color = _OUTCOME_COLORS.get(outcome, "#616161")
            parts.append(f'<rect x="{x0:.1f}" y="{y + 3}" width="{max(1.5, x1 - x0):.1f}" height="{line_h - 8}" '
                         f'fill="{color}"><title>{_esc(row.step)} {_esc(outcome)} {_fmt_time(start)} → '
                         f'{_fmt_time(end)}</title></rect>')
    axis_y = height - 20
    parts.append(f'<line x1="{label_w}" y1="{axis_y}" x2="{label_w + plot_w}" y2="{axis_y}" stroke="#999"/>')
    for frac in (0.0, 0.5, 1.0):
        t = t0 + (t1 - t0) * frac
        anchor = {0.0: "start", 0.5: "middle", 1.0: "end"}[frac]
        parts.append(f'<text x="{label_w + plot_w * frac:.1f}" y="{axis_y + 14}" font-size="10" '
                     f'text-anchor="{anchor}">{_esc(_fmt_time(t))}</text>')
    parts.append("</svg>")
    return "".join(parts)


def line_chart_svg(title: str, unit: str, series: Sequence[tuple[str, Sequence[tuple[datetime, float]]]],
                   span: tuple[datetime, datetime]) -> str:
    """A line chart of one or more series over time (a polyline per series, a dot per point when they are few)."""
    series = [(name, points) for name, points in series if points]
    if not series:
        return ""
    width, height, left, right, top, bottom = 980, 210, 70, 20, 28, 36
    plot_w, plot_h = width - left - right, height - top - bottom
    t0, t1 = span
    total = max((t1 - t0).total_seconds(), 1e-6)
    top_value = max(v for _, points in series for _, v in points) or 1.0
    top_value *= 1.1

    def xy(t: datetime, v: float) -> tuple[float, float]:
        return left + plot_w * (t - t0).total_seconds() / total, top + plot_h * (1 - v / top_value)

    parts = [f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="{_esc(title)}">',
             f'<text x="{left}" y="16" font-size="13" font-weight="bold">{_esc(title)} ({_esc(unit)})</text>',
             f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#bbb"/>']
    for frac in (0.0, 0.5, 1.0):
        y = top + plot_h * (1 - frac)
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" stroke="#eee"/>'
                     f'<text x="{left - 6}" y="{y + 4:.1f}" font-size="10" text-anchor="end">'
                     f'{_fmt_value(top_value * frac)}</text>')
    for frac in (0.0, 0.5, 1.0):
        t = t0 + (t1 - t0) * frac
        anchor = {0.0: "start", 0.5: "middle", 1.0: "end"}[frac]
        parts.append(f'<text x="{left + plot_w * frac:.1f}" y="{height - 18}" font-size="10" '
                     f'text-anchor="{anchor}">{_esc(_fmt_time(t))}</text>')
    for i, (name, points) in enumerate(series):
        color = _SERIES_COLORS[i % len(_SERIES_COLORS)]
        coords = [xy(t, v) for t, v in points]
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" '
                     f'points="{" ".join(f"{px:.1f},{py:.1f}" for px, py in coords)}"/>')
        if len(coords) <= 200:
            parts += [f'<circle cx="{px:.1f}" cy="{py:.1f}" r="2.5" fill="{color}"><title>{_esc(name)} '
                      f'{v:.4g} {_esc(unit)} at {_esc(_fmt_time(t))}</title></circle>'
                      for (px, py), (t, v) in zip(coords, points, strict=True)]
        parts.append(f'<text x="{left + 8 + 200 * i}" y="{height - 4}" font-size="11" fill="{color}">■ '
                     f'{_esc(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


# -- the page -------------------------------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#212121;max-width:1040px}
h1{font-size:22px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;font-size:12px;width:100%}th,td{border:1px solid #ddd;padding:3px 6px;text-align:left;
vertical-align:top}th{background:#f5f5f5}td.num{text-align:right;white-space:nowrap}td.detail{white-space:pre-wrap}
td.run{font-size:10px;color:#757575}
.outcome{font-weight:bold}.muted{color:#757575}dl{display:grid;grid-template-columns:max-content auto;gap:2px 14px;
font-size:13px}dt{font-weight:bold}dd{margin:0}svg{display:block;margin:8px 0}
"""


def _series(samples: list[dict[str, Any]], key: str, scale: float = 1.0,
            kinds: Sequence[str] | None = None) -> list[tuple[datetime, float]]:
    return [(s["at"], float(s[key]) / scale) for s in samples
            if s.get(key) is not None and (kinds is None or s["kind"] in kinds)]


def render_html(data: ReportData, secrets: Iterable[str | None] = ()) -> str:
    """The report page. Any of ``secrets`` that slipped into an error message is replaced by ``***``."""
    rows = timeline(data)
    now = data.generated_at
    mb = 1048576.0
    lag_mb = _series(data.samples, "lag_bytes", mb, ["incremental"])
    retained_mb = _series(data.samples, "retained_wal_bytes", mb)
    lag_s = _series(data.samples, "lag_seconds", 1.0, ["incremental"])
    changes = _series(data.samples, "changes_per_second", 1.0, ["incremental"])
    all_times = [t for series in (lag_mb, retained_mb, lag_s, changes, data.copy_points) for t, _ in series]
    span = _span(all_times + [r.started_at for r in rows])
    charts = [
        line_chart_svg("Replication lag and retained WAL", "MB",
                       [("lag", lag_mb), ("retained WAL on the source", retained_mb)], span),
        line_chart_svg("Replication lag", "seconds", [("lag", lag_s)], span),
        line_chart_svg("Full load throughput", "MB/s", [("copy, per chunk", data.copy_points)], span),
        line_chart_svg("Incremental apply throughput", "changes/s", [("applied", changes)], span),
    ]
    charts = [c for c in charts if c]
    summary = dict(data.summary)
    full = data.full_load or {}
    if full.get("completed"):
        summary["full load"] = (f"{full.get('rows')} rows, {format_bytes(full.get('bytes'))} in "
                                f"{_fmt_seconds(full.get('seconds'))} ({full.get('mb_per_second')} MB/s)")
    cutover = data.cutover or {}
    if cutover:
        summary["cutover"] = f"{cutover.get('status')}" + (
            f", downtime {_fmt_seconds(cutover['downtime_seconds'])}" if cutover.get("downtime_seconds") is not None
            else "")
    latest = next((s for s in reversed(data.samples) if s["kind"] == "incremental"), None)
    if latest is not None:
        summary["latest lag"] = f"{format_bytes(latest['lag_bytes'])}, {latest['lag_seconds'] or 0:.1f} s"
    watch = data.watch or {}
    if watch.get("retained_wal_bytes") is not None:
        summary["retained WAL"] = f"{format_bytes(watch['retained_wal_bytes'])} (level {watch.get('wal_level')})"
    summary["report written"] = _fmt_time(now) + " UTC"

    out = ["<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">",
           f"<title>Migration report: {_esc(data.migration)}</title><style>{_CSS}</style></head><body>",
           f"<h1>Migration report: {_esc(data.migration)}</h1><dl>"]
    out += [f"<dt>{_esc(k)}</dt><dd>{_esc(v)}</dd>" for k, v in summary.items() if v not in (None, "")]
    out.append("</dl>")
    out += decision_sections(data)
    out.append("<h2>Timeline</h2>")
    out.append(gantt_svg(rows, now) or "<p class=\"muted\">No step recorded yet.</p>")
    out.append("<table><tr><th>step</th><th>kind</th><th>started (UTC)</th><th>finished (UTC)</th><th>duration</th>"
               "<th>outcome</th><th>detail</th><th>DAG run</th></tr>")
    for row in rows:
        color = _OUTCOME_COLORS.get(row.outcome, "#616161")
        out.append(f"<tr><td>{_esc(row.step)}</td><td>{_esc(row.kind)}</td><td>{_fmt_time(row.started_at)}</td>"
                   f"<td>{_fmt_time(row.finished_at)}</td><td class=\"num\">{_fmt_seconds(row.seconds)}</td>"
                   f"<td class=\"outcome\" style=\"color:{color}\">{_esc(row.outcome)}</td>"
                   f"<td class=\"detail\">{_esc(row.detail)}</td>"
                   f"<td class=\"run\">{_esc(row.run_id or '')}</td></tr>")
    out.append("</table><h2>Lag and throughput</h2>")
    out += charts or ["<p class=\"muted\">No sample recorded yet.</p>"]
    pokes = data.last_pokes[-MAX_POKES_LISTED:]
    if pokes:
        out.append(f"<h2>Incremental sync pokes</h2><details><summary>the last {len(pokes)}</summary><table>"
                   "<tr><th>task</th><th>started (UTC)</th><th>duration</th><th>outcome</th><th>detail</th></tr>")
        for event in pokes:
            seconds = (event["finished_at"] - event["started_at"]).total_seconds() if event["finished_at"] else None
            out.append(f"<tr><td>{_esc(event['step'])}</td><td>{_fmt_time(event['started_at'])}</td>"
                       f"<td class=\"num\">{_fmt_seconds(seconds)}</td><td>{_esc(event['outcome'])}</td>"
                       f"<td class=\"detail\">{_esc(_detail_text(event['detail'] or {}))}</td></tr>")
        out.append("</table></details>")
    out.append("<p class=\"muted\">Written by airflow-pgmigrate from the migration state in the destination "
               f"(schema {_esc(data.summary.get('state_schema'))}).</p></body></html>")
    page = "\n".join(out)
    for secret in secrets:
        if secret:
            page = page.replace(secret, "***").replace(html.escape(secret, quote=True), "***")
    return page


def _waiting_section(waiting: dict[str, Any] | None) -> list[str]:
    """The latest figures of the sync beside the cutover question (the question's own text keeps those of when it
    was asked)."""
    from airflow_pgmigrate.engine.question import WaitingFigures, estimated_drain_seconds, format_duration, format_rate

    figures = WaitingFigures.from_dict(waiting)
    if figures is None:
        return []
    rows = {
        "lag": f"{format_bytes(figures.lag_bytes)} of WAL, "
        + ("time behind the source not measured" if figures.lag_seconds is None
           else f"{figures.lag_seconds:.1f} s behind the source"),
        "writes on the source": "not measured yet" if figures.source_wal_bytes_per_second is None else
        f"{format_rate(figures.source_wal_bytes_per_second)} of WAL, "
        f"{figures.source_commits_per_second or 0:.1f} transactions per second",
        "apply rate": format_rate(figures.apply_bytes_per_second),
        "estimated drain at the freeze": format_duration(estimated_drain_seconds(figures)),
        "measured": f"{_fmt_time(_parse_time(figures.measured_at))} UTC",
    }
    return (["<h2 id=\"waiting\">While the cutover question waits</h2><dl>"]
            + [f"<dt>{_esc(k)}</dt><dd>{_esc(v)}</dd>" for k, v in rows.items()] + ["</dl>"])


def _answers_section(answers: list[dict[str, Any]]) -> list[str]:
    out = ["<h2 id=\"answers\">Cutover question: answers</h2>"]
    if not answers:
        return out + ["<p class=\"muted\">Not answered yet.</p>"]
    out.append("<table><tr><th>answered (UTC)</th><th>by</th><th>answer</th><th>lag then</th><th>DAG run</th></tr>")
    for a in answers:
        lag = "" if a.get("lag_bytes") is None else format_bytes(a["lag_bytes"]) + (
            "" if a.get("lag_seconds") is None else f", {a['lag_seconds']:.1f} s")
        out.append(f"<tr><td>{_fmt_time(_parse_time(a.get('at')))}</td><td>{_esc(a.get('by'))}</td>"
                   f"<td class=\"answer\">{_esc(a.get('answer'))}</td><td>{_esc(lag)}</td>"
                   f"<td class=\"run\">{_esc(a.get('run_id') or '')}</td></tr>")
    return out + ["</table>"]


def _verification_section(verification: dict[str, Any] | None, when: str) -> list[str]:
    if not verification:
        return []
    tables = verification.get("tables") or []
    out = [f"<h2 id=\"verification\">Verification ({_esc(when)})</h2>",
           f"<p>{len(tables)} table(s), {verification.get('rows', 0):,} rows, "
           f"{verification.get('differences', 0):,} difference(s): "
           f"{'equal' if verification.get('equal') else 'NOT equal'}.</p>",
           "<table><tr><th>table</th><th>destination</th><th>source rows</th><th>destination rows</th>"
           "<th>missing</th><th>extra</th><th>different</th><th>result</th></tr>"]
    for t in tables:
        out.append(f"<tr><td>{_esc(t.get('table'))}</td><td>{_esc(t.get('target'))}</td>"
                   f"<td class=\"num\">{t.get('source_rows', 0):,}</td><td class=\"num\">{t.get('destination_rows', 0):,}"
                   f"</td><td class=\"num\">{t.get('missing_count', 0)}</td><td class=\"num\">{t.get('extra_count', 0)}"
                   f"</td><td class=\"num\">{t.get('different_count', 0)}</td>"
                   f"<td>{'equal' if t.get('equal') else 'different'}</td></tr>")
    return out + ["</table>"] + _definitions_section(verification.get("definitions") or [])


def _definitions_section(definitions: list[dict[str, Any]]) -> list[str]:
    """Table definitions (compared when DDL is replicated): how many, and each difference in words."""
    if not definitions:
        return []
    lines = definition_lines(definitions)
    different = sum(1 for d in definitions if not d.get("equal"))
    out = [f"<p>Table definitions (columns, constraints, indexes): {len(definitions)} table(s) compared, "
           f"{different} different{'.' if not lines else ':'}</p>"]
    if lines:
        out += ["<ul>", *(f"<li>{_esc(line)}</li>" for line in lines), "</ul>"]
    return out


def decision_sections(data: ReportData) -> list[str]:
    """Who answered what, the verification (the cutover's, else the latest while syncing), the sequence values
    set at cutover, and the next steps with the rollback statement."""
    cutover = data.cutover or {}
    out = [] if cutover else _waiting_section(data.waiting)
    out += _answers_section(data.answers)
    if cutover.get("verification"):
        out += _verification_section(cutover["verification"], "at cutover, source frozen")
    else:
        out += _verification_section(data.verification, "latest, while syncing")
    sequences = cutover.get("sequences") or []
    if sequences:
        out.append("<h2 id=\"sequences\">Sequences set at cutover</h2><table><tr><th>sequence</th><th>value</th></tr>")
        out += [f"<tr><td>{_esc(q.get('sequence'))}</td><td class=\"num\">{_esc(q.get('value'))}</td></tr>"
                for q in sequences]
        out.append("</table>")
    steps = cutover.get("next_steps") or []
    if steps:
        out.append("<h2 id=\"next-steps\">Next steps and rollback</h2><ul>")
        out += [f"<li><code>{_esc(line)}</code></li>" if "ALTER DATABASE" in line else f"<li>{_esc(line)}</li>"
                for line in steps]
        out.append("</ul>")
    return out


def drop_state(config: MigrationConfig, destination: ConnectionInfo) -> str:
    """Remove the migration's own state from the destination once the migration is over: the whole state schema, or
    only this migration's rows when other migrations keep theirs there. Refused while incremental sync may still
    need it (no completed cutover and no abort recorded). Returns what was done."""
    from airflow_pgmigrate.exceptions import PgMigrateError

    schema = config.state_schema
    with connect(destination) as conn:
        state = MigrationState(destination, schema, config.name)
        cutover = state.read(conn, "cutover") or {}
        aborted = any(a.get("answer") == "Abort" for a in state.read(conn, "cutover_answers") or [])
        if config.wants("incremental") and cutover.get("status") != "completed" and not aborted:
            raise PgMigrateError(f"the state of migration {config.name} is still needed: no completed cutover and no "
                                 "abort recorded (incremental sync resumes from it); finish or abort the migration "
                                 "first")
        tables = [r[0] for r in conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace JOIN pg_attribute a ON "
            "a.attrelid = c.oid WHERE n.nspname = %s AND c.relkind = 'r' AND a.attname = 'migration'",
            (schema,)).fetchall()]
        others = any(conn.execute(sql.SQL("SELECT 1 FROM {} WHERE migration <> %s LIMIT 1").format(
            sql.Identifier(schema, t)), (config.name,)).fetchone() for t in tables)
        if others:
            for table in tables:
                conn.execute(sql.SQL("DELETE FROM {} WHERE migration = %s").format(sql.Identifier(schema, table)),
                             (config.name,))
            return f"deleted the rows of migration {config.name} from schema {schema} (other migrations use it)"
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
    return f"dropped schema {schema} from the destination"


def write_report(config: MigrationConfig, destination: ConnectionInfo, *, directory: str | Path | None = None,
                 secrets: Iterable[str | None] = ()) -> Path:
    """Collect, render and write the report (atomically: a reader never sees half a file); returns its path."""
    with connect(destination) as conn:
        data = collect(config, destination, conn)
    page = render_html(data, secrets=[destination.password, *secrets])
    target = Path(directory) / f"{config.name}.html" if directory is not None else report_path(config)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{config.name}.", suffix=".html", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(page)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


# -- on demand ------------------------------------------------------------------------------------------------------


def connection_info_from_uri(uri: str, database: str | None = None) -> ConnectionInfo:
    """A ConnectionInfo from a postgres URI (or the JSON form of an Airflow connection in an environment variable)."""
    if uri.lstrip().startswith("{"):
        data = json.loads(uri)
        extra = data.get("extra") or {}
        if isinstance(extra, str):
            extra = json.loads(extra or "{}")
        params = {k: str(v) for k, v in extra.items() if k in (*TLS_KEYS, "connect_timeout", "options")}
        return ConnectionInfo(host=data.get("host") or "localhost", port=int(data.get("port") or 5432),
                              dbname=database or data.get("schema") or "postgres", user=data.get("login") or "postgres",
                              password=data.get("password") or None, params=params)
    parsed = psycopg.conninfo.conninfo_to_dict(uri.replace("postgres://", "postgresql://", 1)
                                               if uri.startswith("postgres://") else uri)
    params = {k: str(v) for k, v in parsed.items() if k in (*TLS_KEYS, "connect_timeout", "options")}
    return ConnectionInfo(host=str(parsed.get("host") or "localhost"), port=int(parsed.get("port") or 5432),
                          dbname=database or str(parsed.get("dbname") or "postgres"),
                          user=str(parsed.get("user") or "postgres"),
                          password=str(parsed["password"]) if parsed.get("password") else None, params=params)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m airflow_pgmigrate.engine.report CONFIG [--destination URI] [--output DIR] [--drop-state]``."""
    from airflow_pgmigrate.config import MigrationConfig
    from airflow_pgmigrate.exceptions import PgMigrateError

    parser = argparse.ArgumentParser(prog="python -m airflow_pgmigrate.engine.report",
                                     description="Write the HTML report of a migration from its state in the "
                                                 "destination.")
    parser.add_argument("config", help="the migration config (YAML file)")
    parser.add_argument("--destination", help="the destination as a postgres URI; default: the environment "
                        "variable AIRFLOW_CONN_<DESTINATION CONN_ID> (as Airflow reads it)")
    parser.add_argument("--output", help="folder to write <name>.html to; default: report.directory of the config")
    parser.add_argument("--drop-state", action="store_true",
                        help="after writing the report, drop the migration's state schema from the destination "
                             "(once the migration is over: cut over or aborted); the report file stays")
    args = parser.parse_args(argv)
    try:
        config = MigrationConfig.from_yaml(args.config)
        uri = args.destination or os.environ.get(f"AIRFLOW_CONN_{config.destination.conn_id.upper()}")
        if not uri:
            parser.error(f"no destination: pass --destination postgresql://... or set "
                         f"AIRFLOW_CONN_{config.destination.conn_id.upper()}")
        info = connection_info_from_uri(uri, config.destination.database)
        path = write_report(config, info, directory=args.output)
        if args.drop_state:
            done = drop_state(config, info)
            print(f"report: {done}; the report is kept in {path}", file=sys.stderr)
    except (PgMigrateError, psycopg.Error, OSError, ValueError) as exc:
        print(f"report: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


__all__ = ["ReportData", "TimelineRow", "collect", "connection_info_from_uri", "decision_sections", "drop_state",
           "gantt_svg", "line_chart_svg", "main",
           "render_html", "report_directory", "report_path", "report_url", "timeline", "write_report"]


if __name__ == "__main__":
    sys.exit(main())
