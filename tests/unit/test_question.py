"""The cutover question's text: figures in words and units, what each answer does, no Python repr."""

from __future__ import annotations

from airflow_pgmigrate.config import MigrationConfig
from airflow_pgmigrate.engine.question import WaitingFigures, estimated_drain_seconds, question_body

CONFIG = MigrationConfig.from_dict({"name": "shop", "source": {"conn_id": "a"}, "destination": {"conn_id": "b"},
                                    "cutover": {"freeze_source": True}})


def test_the_question_shows_the_figures_in_units_and_what_each_answer_does():
    figures = WaitingFigures(lag_bytes=3 * 1048576, lag_seconds=1.25, applied_lsn="0/3000000",
                             apply_bytes_per_second=12 * 1048576, source_wal_bytes_per_second=524288,
                             source_commits_per_second=41.5, measured_at="2026-12-05T06:40:12+00:00")
    verification = {"equal": False, "rows": 12345, "differences": 2, "seconds": 3.2,
                    "tables": [{"table": "public.orders", "equal": False, "missing_count": 1, "extra_count": 0,
                                "different_count": 1}, {"table": "public.customers", "equal": True}]}
    body = question_body(CONFIG, figures, verification, report_link="/pgmigrate/reports/shop.html")
    for words in ("**Lag:** 3.0 MB of WAL, 1.2 s behind the source (measured 06:40:12 UTC)",
                  "**Writes on the source:** 512.0 KB/s of WAL, 41.5 transactions per second",
                  "**Apply rate:** 12.0 MB/s", "**Estimated drain at the freeze:** under a second",
                  "**Last verification:** 2 table(s), 12,345 rows compared in 3 s: 2 difference(s) in 1 table(s)",
                  "public.orders: 1 missing, 0 extra, 1 different row(s)",
                  "**Cut over**: sets the source database read-only", "**Keep syncing**: nothing changes",
                  "**Abort**: stops the migration", "[Migration report](/pgmigrate/reports/shop.html)"):
        assert words in body, body
    assert "{" not in body and "applied_lsn" not in body


def test_before_anything_is_measured_the_question_says_so():
    body = question_body(CONFIG, None, None)
    assert "**Lag:** not measured yet" in body
    assert "**Last verification:** none yet" in body


def test_the_drain_estimate_uses_the_apply_rate_measured_else_the_lag_in_seconds():
    assert estimated_drain_seconds(WaitingFigures(0, 0.0, "0/0")) == 0.0
    assert estimated_drain_seconds(WaitingFigures(10_000_000, 4.0, "0/0", apply_bytes_per_second=1_000_000)) == 10
    assert estimated_drain_seconds(WaitingFigures(10_000_000, 4.0, "0/0")) == 4.0
