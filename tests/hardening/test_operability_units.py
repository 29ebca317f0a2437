"""Operability without servers: the alerts/watchdog/report config, the alert and watchdog rules, the notifiers, the
report page and the DAG template's wiring."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from airflow_pgmigrate.config import MigrationConfig
from airflow_pgmigrate.engine.report import ReportData, render_html, report_path, report_url, timeline
from airflow_pgmigrate.engine.watchdog import WalRetention, Watch, stop_message
from airflow_pgmigrate.exceptions import ConfigError

pytestmark = [pytest.mark.hardening]

BASE: dict[str, Any] = {"name": "shop", "source": {"conn_id": "src"}, "destination": {"conn_id": "dst"}}
MB = 1024 * 1024


def _config(**sections: Any) -> MigrationConfig:
    return MigrationConfig.from_dict({**BASE, **sections})


def _fields(**sections: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        _config(**sections)
    return info.value.fields


# -- config -------------------------------------------------------------------------------------------------------


def test_defaults_warn_on_retained_wal_and_alert_on_failure_but_never_stop_or_drop():
    config = _config()
    assert config.incremental.retained_wal_warn_bytes == 5 * 1024**3
    assert config.incremental.retained_wal_stop_bytes is None and config.incremental.drop_slot_on_stop is False
    assert config.alerts.on_task_failure is True and config.alerts.notifiers == []
    assert config.alerts.lag_seconds == 300.0 and config.alerts.lag_bytes_limit is None
    assert config.report.enabled is True and config.report.directory is None


def test_a_full_operability_config_round_trips():
    config = _config(alerts={"notifiers": [{"notifier": "file", "kwargs": {"path": "/tmp/a.jsonl"}},
                                           {"notifier": "airflow.providers.slack.notifications.slack.SlackNotifier",
                                            "kwargs": {"slack_conn_id": "slack", "channel": "#db",
                                                       "text": "{severity}: {message}"}}],
                             "lag_seconds": 60, "lag_bytes": "256MB"},
                     incremental={"retained_wal_warn": "2GB", "retained_wal_stop": "20GB", "drop_slot_on_stop": True},
                     report={"directory": "/srv/reports", "base_url": "https://reports.example.com/pgmigrate"})
    assert config.alerts.notifiers[0].class_path.endswith("AlertFileNotifier")
    assert config.alerts.lag_bytes_limit == 256 * MB and config.incremental.retained_wal_stop_bytes == 20 * 1024**3
    assert MigrationConfig.from_dict(config.to_dict()) == config
    assert report_url(config) == "https://reports.example.com/pgmigrate/shop.html"
    assert report_path(config) == Path("/srv/reports/shop.html")


@pytest.mark.parametrize("sections, field", [
    ({"incremental": {"retained_wal_warn": "lots"}}, "incremental.retained_wal_warn"),
    ({"incremental": {"retained_wal_warn": "10KB"}}, "incremental.retained_wal_warn"),
    ({"incremental": {"retained_wal_warn": "2GB", "retained_wal_stop": "1GB"}}, "incremental.retained_wal_stop"),
    ({"incremental": {"retained_wal_stop": "5GB"}}, "incremental.retained_wal_stop"),  # not above the 5GB warning
    ({"incremental": {"drop_slot_on_stop": True}}, "incremental.drop_slot_on_stop"),
    ({"incremental": {"retained_wal_stop": True}}, "incremental.retained_wal_stop"),
    ({"alerts": {"lag_seconds": 0}}, "alerts.lag_seconds"),
    ({"alerts": {"lag_bytes": "a lot"}}, "alerts.lag_bytes"),
    ({"alerts": {"on_task_failure": "yes"}}, "alerts.on_task_failure"),
    ({"alerts": {"notifiers": [{"notifier": "slack please"}]}}, "alerts.notifiers[0].notifier"),
    ({"alerts": {"notifiers": [{"kwargs": {}}]}}, "alerts.notifiers[0].notifier"),
    ({"alerts": {"notifiers": [{"notifier": "file"}]}}, "alerts.notifiers[0].kwargs"),
    ({"alerts": {"notifiers": [{"notifier": "log", "kwargs": {"path": "/x"}}]}}, "alerts.notifiers[0].kwargs['path']"),
    ({"alerts": {"notifiers": [{"notifier": "a.B", "kwargs": {"password": "pw"}}]}},
     "alerts.notifiers[0].kwargs['password']"),
    ({"alerts": {"notifiers": [{"notifier": "a.B", "kwargs": {"api_key": "k"}}]}},
     "alerts.notifiers[0].kwargs['api_key']"),
    ({"alerts": {"notifiers": [{"notifier": "a.B", "kwargs": {"1x": 1}}]}}, "alerts.notifiers[0].kwargs['1x']"),
    ({"alerts": {"notifiers": [{"notifier": "a.B", "kwargs": {"text": "{{ pgmigrate_alert.message }}"}}]}},
     "alerts.notifiers[0].kwargs['text']"),
    ({"alerts": {"notifiers": "file"}}, "alerts.notifiers"),
    ({"alerts": {"notifer": []}}, "alerts.notifer"),
    ({"report": {"base_url": "reports.example.com"}}, "report.base_url"),
    ({"report": {"directory": " "}}, "report.directory"),
])
def test_bad_operability_settings_name_the_field(sections, field):
    assert field in _fields(**sections)


def test_a_connection_id_is_not_mistaken_for_a_secret():
    config = _config(alerts={"notifiers": [{"notifier": "a.b.WebhookNotifier",
                                            "kwargs": {"slack_webhook_conn_id": "hook", "token_conn_id": "t"}}]})
    assert config.alerts.notifiers[0].kwargs["slack_webhook_conn_id"] == "hook"


# -- the rules --------------------------------------------------------------------------------------------------


def _retention(size: int | None, status: str | None = "reserved") -> WalRetention:
    return WalRetention(slot="pgmigrate_shop", exists=True, retained_bytes=size, wal_status=status,
                        safe_wal_size=None if status is None else 10 * MB)


def test_lag_alerts_once_per_crossing_and_once_when_it_recovers():
    watch = Watch(_config(alerts={"lag_seconds": 30, "lag_bytes": "1MB"}))
    kinds = [[a.kind for a in watch.lag(lag_bytes, lag_s)] for lag_bytes, lag_s in
             [(10, 0.0), (2 * MB, 1.0), (3 * MB, 40.0), (100, 31.0), (100, 2.0), (100, 1.0), (5 * MB, 0.0)]]
    assert kinds == [[], ["lag_high"], [], [], ["lag_recovered"], [], ["lag_high"]]


def test_retained_wal_levels_alert_on_the_way_up_and_recover_once():
    watch = Watch(_config(incremental={"retained_wal_warn": "2MB", "retained_wal_stop": "6MB"}))
    seen = []
    for size in (MB, 3 * MB, 4 * MB, 7 * MB, 5 * MB, MB, MB):
        verdict, alerts = watch.wal(_retention(size))
        seen.append((verdict.level, verdict.stop, [a.kind for a in alerts]))
    assert seen == [("ok", False, []), ("warn", False, ["retained_wal_warn"]), ("warn", False, []),
                    ("stop", True, ["retained_wal_stop"]), ("warn", False, []),
                    ("ok", False, ["retained_wal_recovered"]), ("ok", False, [])]


def test_above_the_stop_limit_a_draining_sync_goes_on_and_a_losing_one_stops():
    watch = Watch(_config(incremental={"retained_wal_warn": "2MB", "retained_wal_stop": "6MB"}),
                  {"wal_level": "stop", "retained_wal_bytes": 20 * MB})
    draining = watch.wal(_retention(12 * MB))[0]
    assert draining.level == "stop" and not draining.stop and draining.shrinking
    assert "going on" in draining.message
    losing = watch.wal(_retention(13 * MB))[0]
    assert losing.level == "stop" and losing.stop
    first_check = Watch(_config(incremental={"retained_wal_stop": "6GB"})).wal(_retention(7 * 1024**3))[0]
    assert first_check.stop, "with nothing to compare with, above the limit means stop"


def test_a_lost_or_unreserved_slot_and_a_missing_one():
    config = _config(incremental={"retained_wal_warn": "2MB"})
    lost, alerts = Watch(config).wal(_retention(None, "lost"))
    assert lost.level == "lost" and lost.stop and [a.kind for a in alerts] == ["slot_lost"]
    assert "fresh full load" in stop_message(config, lost)
    unreserved, alerts = Watch(config).wal(_retention(MB // 2, "unreserved"))
    assert unreserved.level == "warn" and "wal_status=unreserved" in alerts[0].message
    missing, alerts = Watch(config, {"wal_level": "warn"}).wal(WalRetention("pgmigrate_shop", exists=False))
    assert missing.level == "missing" and not missing.stop and alerts == []


def test_the_stop_message_says_how_much_and_both_ways_on():
    config = _config(incremental={"retained_wal_warn": "2MB", "retained_wal_stop": "6MB"})
    verdict = Watch(config).wal(_retention(7 * MB))[0]
    kept = stop_message(config, verdict)
    assert "7.0 MB" in kept and "6.0 MB" in kept and "wal_status=reserved" in kept
    assert "clear this task" in kept and "SELECT pg_drop_replication_slot('pgmigrate_shop');" in kept
    assert "fresh full load" in kept
    assert "was dropped" in stop_message(config, verdict, dropped=True)


# -- notifiers --------------------------------------------------------------------------------------------------


def test_the_file_notifier_appends_one_json_line_per_alert(tmp_path):
    from airflow_pgmigrate.notifications.migration import AlertFileNotifier, send_alert

    path = tmp_path / "sub" / "alerts.jsonl"
    config = _config(alerts={"notifiers": [{"notifier": "file", "kwargs": {"path": str(path)}}]})
    assert send_alert(config, {"kind": "lag_high", "severity": "warning", "message": "lag"}, {"run_id": "r1"}) == 1
    AlertFileNotifier(path=str(path))({"run_id": "r2", "exception": ValueError("boom")})  # used as a callback
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["kind"], r["run_id"]) for r in lines] == [("lag_high", "r1"), ("task_state", "r2")]
    assert lines[0]["migration"] == "shop" and lines[1]["message"] == "boom"


def test_placeholders_in_notifier_arguments_take_the_alert_values():
    from airflow_pgmigrate.notifications.migration import fill_placeholders

    alert = {"kind": "lag_high", "message": "lag is 3 MB", "severity": "warning"}
    filled = fill_placeholders({"text": "[{severity}] {message} {unknown} {{ ds }}", "to": ["{kind}@x"], "n": 3}, alert)
    assert filled == {"text": "[warning] lag is 3 MB {unknown} {{ ds }}", "to": ["lag_high@x"], "n": 3}


def test_an_alert_that_cannot_be_sent_is_logged_and_the_others_still_go(tmp_path, caplog):
    from airflow_pgmigrate.notifications.migration import send_alert

    path = tmp_path / "alerts.jsonl"
    config = _config(alerts={"notifiers": [
        {"notifier": "tests.hardening.notifiers.BrokenNotifier", "kwargs": {"text": "{kind}"}},
        {"notifier": "no.such.module.Notifier"},
        {"notifier": "file", "kwargs": {"path": str(path)}}]})
    with caplog.at_level("WARNING"):
        delivered = send_alert(config, {"kind": "retained_wal_warn", "severity": "warning", "message": "m"}, {})
    assert delivered == 1 and len(path.read_text().splitlines()) == 1
    text = caplog.text
    assert "the alerting service is unreachable (text was 'retained_wal_warn')" in text  # templated from the alert
    assert "notifier=no.such.module.Notifier" in text and "cannot import" in text


def test_the_template_wires_failure_alerts_and_rejects_a_notifier_it_cannot_import(tmp_path):
    from airflow_pgmigrate.notifications.migration import MigrationAlertNotifier
    from airflow_pgmigrate.operators.monitoring import RecordOutcome
    from airflow_pgmigrate.templates.migration_dag import build_migration_dag, dags_from_folder

    notifiers = [{"notifier": "file", "kwargs": {"path": str(tmp_path / "a.jsonl")}}]
    dag = build_migration_dag(_config(alerts={"notifiers": notifiers}))
    for task in dag.tasks:
        kinds = [type(cb) for cb in task.on_failure_callback]
        assert MigrationAlertNotifier in kinds, task.task_id
    assert any(isinstance(cb, RecordOutcome) for cb in dag.task_dict["full_load"].on_failure_callback)
    quiet = build_migration_dag(_config(alerts={"notifiers": notifiers, "on_task_failure": False}))
    assert not any(isinstance(cb, MigrationAlertNotifier) for t in quiet.tasks for cb in t.on_failure_callback)
    assert dag.task_dict["cutover"].operator_extra_links[0].name == "Migration report"

    (tmp_path / "bad.yaml").write_text("name: bad\nsource: {conn_id: a}\ndestination: {conn_id: b}\n"
                                       "alerts: {notifiers: [{notifier: airflow.providers.nothing.Notifier}]}\n")
    dags, errors = dags_from_folder(tmp_path)
    assert not dags and errors[str(tmp_path / "bad.yaml")].fields == ["alerts.notifiers[0].notifier"]


# -- the report page ----------------------------------------------------------------------------------------------


def _report_data() -> ReportData:
    t0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    at = [t0 + timedelta(seconds=s) for s in range(0, 60, 5)]

    def event(step, kind, start, end, outcome, **detail):
        return {"run_id": "r1", "step": step, "kind": kind, "started_at": at[start], "finished_at":
                at[end] if end is not None else None, "outcome": outcome, "detail": detail}

    pokes = [event("incremental_sync", "poke", 3, 4, "delayed", transactions=5, lag_bytes=3 * MB),
             event("incremental_sync", "poke", 5, 6, "not_delayed", transactions=7, lag_bytes=10)]
    return ReportData(
        migration="shop", summary={"migration": "shop", "state_schema": "pgmigrate"},
        events=[event("precheck", "task", 0, 1, "success", try_number=1),
                event("full_load", "task", 1, 3, "success"),
                event("incremental_sync", "task", 6, 6, "success"),
                event("cutover", "task", 7, None, "running"),
                event("<script>alert(1)</script>", "task", 8, 9, "failed",
                      error="connection to rig-superuser-pw failed")],
        poke_marks=[{"run_id": "r1", "step": "incremental_sync", "started_at": p["started_at"],
                     "finished_at": p["finished_at"], "pokes": 1, "transactions": p["detail"]["transactions"],
                     "outcome": p["outcome"]} for p in pokes],
        last_pokes=pokes,
        samples=[{"kind": "incremental", "at": at[4], "lag_bytes": 3 * MB, "lag_seconds": 4.0,
                  "changes_per_second": 100.0, "bytes_per_second": None, "retained_wal_bytes": 5 * MB},
                 {"kind": "incremental", "at": at[6], "lag_bytes": 10, "lag_seconds": 0.0,
                  "changes_per_second": 300.0, "bytes_per_second": None, "retained_wal_bytes": MB}],
        tables=[{"table": "public.orders", "started_at": at[1], "finished_at": at[2], "rows": 10, "bytes": 4096,
                 "chunks": 1}],
        copy_points=[(at[2], 1.5)],
        cutover={"started_at": at[7].isoformat(), "steps": [{"step": "drain", "seconds": 2.0, "transactions": 3},
                                                            {"step": "verify", "seconds": 1.0, "equal": True}]},
        generated_at=at[-1])


def test_the_timeline_has_every_step_pokes_tables_and_cutover_phases():
    rows = timeline(_report_data())
    steps = [(r.step, r.kind, r.outcome) for r in rows]
    assert ("incremental_sync", "pokes", "success") in steps and len(rows[3].marks) == 2
    assert "pokes=2 transactions=12 last_lag=10 B" in rows[3].detail
    assert ("full_load · public.orders", "table", "copied") in steps
    assert [s for s in steps if s[0].startswith("cutover ·")] == [("cutover · drain", "phase", "done"),
                                                                  ("cutover · verify", "phase", "done")]
    assert [r.started_at for r in rows] == sorted(r.started_at for r in rows)


def test_the_page_is_self_contained_escaped_and_without_secrets():
    page = render_html(_report_data(), secrets=["rig-superuser-pw"])
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "rig-superuser-pw" not in page and "connection to *** failed" in page
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "") and "https://" not in page
    polylines = re.findall(r'<polyline[^>]*points="([^"]+)"', page)
    assert len(polylines) == 5  # lag + retained WAL, lag seconds, copy MB/s, apply changes/s
    assert all(re.fullmatch(r"[\d.]+,[\d.]+( [\d.]+,[\d.]+)*", p) for p in polylines)
    for title in ("Replication lag and retained WAL", "Full load throughput", "Incremental apply throughput"):
        assert title in page
