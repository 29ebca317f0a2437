"""The cutover question's figures must be true: a lag above the thresholds is not "not delayed", a lag read from the
slot alone has no time behind the source (not 0 s), and a verification that found differences outside the tables
(sequences, large objects) does not read "no difference" while the report it links says "NOT equal"."""

from __future__ import annotations

import pytest

from airflow_pgmigrate.config import MigrationConfig
from airflow_pgmigrate.engine.question import WaitingFigures, lag_from_slot, question_body

pytestmark = pytest.mark.integration

CONFIG = MigrationConfig.from_dict({"name": "shop", "source": {"conn_id": "a"}, "destination": {"conn_id": "b"},
                                    "cutover": {"freeze_source": True},
                                    "incremental": {"max_lag_seconds": 5, "max_lag_bytes": "16MB"}})


def test_a_lag_above_the_thresholds_is_not_called_not_delayed():
    # The verification before the question pauses sync: on a big database the lag grows past the thresholds.
    figures = WaitingFigures(lag_bytes=900 * 1048576, lag_seconds=340.0, applied_lsn="0/3000000",
                             apply_bytes_per_second=30 * 1048576, source_wal_bytes_per_second=2 * 1048576,
                             source_commits_per_second=80.0, measured_at="2026-12-05T06:40:12+00:00")
    body = question_body(CONFIG, figures, None)
    assert "is not delayed" not in body, body
    assert "is **delayed**" in body and "900.0 MB" in body and "340.0 s" in body, body


def test_a_lag_within_the_thresholds_is_not_delayed():
    figures = WaitingFigures(lag_bytes=4096, lag_seconds=0.4, applied_lsn="0/3000000",
                             measured_at="2026-12-05T06:40:12+00:00")
    assert "is not delayed (thresholds: 5 s and 16.0 MB)" in question_body(CONFIG, figures, None)


def test_the_lag_read_from_the_slot_alone_shows_no_made_up_time_or_drain(migration_env):
    """When the sync beside the question has measured nothing yet (its worker is not free, it is retrying), the
    question falls back to the slot: bytes are known there, the time behind the source and the drain are not."""
    env = migration_env
    config = env.config(cutover={"freeze_source": True})
    env.src(f"SELECT pg_create_logical_replication_slot('{config.slot_name}', 'pgoutput')")
    env.src("CREATE TABLE public.filler (id int, pad text); "
            "INSERT INTO public.filler SELECT g, repeat('x', 500) FROM generate_series(1, 60000) g")
    figures = lag_from_slot(config, env.source_info())
    assert figures is not None and figures.lag_bytes > 16 * 1048576
    body = question_body(config, figures, None)
    assert "0.0 s behind" not in body, body
    assert "**Estimated drain at the freeze:** under a second" not in body, body
    assert "is not delayed" not in body, body
    assert "**Estimated drain at the freeze:** unknown" in body, body


def test_differences_outside_the_tables_are_named_not_hidden():
    """Before the cutover the destination's sequences lag behind the source's (the cutover sets them) and large
    objects written meanwhile are not there yet: the verification says NOT equal; so must the question."""
    verification = {
        "equal": False, "rows": 3200, "differences": 2, "seconds": 1.5,
        "tables": [{"table": "public.orders", "equal": True, "missing_count": 0, "extra_count": 0,
                    "different_count": 0, "missing": [], "extra": [], "different": []}],
        "partitions": [],
        "sequences": [{"sequence": "public.orders_id_seq", "equal": False, "direction": "ascending",
                       "problem": "behind the source (3000 against 3217)"}],
        "large_objects": {"missing_count": 1, "extra_count": 0, "different_count": 0, "other_roles_count": 0,
                          "missing": [16401], "extra": [], "different": [], "other_roles": []},
        "materialized_views": [],
    }
    body = question_body(CONFIG, None, verification)
    assert "no difference" not in body, body
    assert "2 difference(s)" in body, body
    assert "sequence public.orders_id_seq (ascending) is behind the source (3000 against 3217)" in body, body
    assert "large objects missing on the destination: 1 (oid 16401)" in body, body
