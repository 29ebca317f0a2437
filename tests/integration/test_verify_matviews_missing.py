"""Verification of materialized views: one that migrates with its schema but is missing on the destination (dropped
there, or never created) is a difference, not a view nobody compares."""

from __future__ import annotations

import pytest

from airflow_pgmigrate.engine.full_load import run_full_load
from airflow_pgmigrate.engine.schema import migrate_schema
from airflow_pgmigrate.engine.verify import compare, differences

pytestmark = pytest.mark.integration


def test_a_materialized_view_missing_on_the_destination_is_a_difference(migration_env):
    env = migration_env
    env.src("CREATE TABLE public.t (id int PRIMARY KEY); INSERT INTO public.t SELECT generate_series(1, 5);"
            "CREATE MATERIALIZED VIEW public.mv AS SELECT count(*) AS n FROM public.t;"
            "CREATE MATERIALIZED VIEW public.mv_empty AS SELECT id FROM public.t WITH NO DATA;")
    config = env.config(migration_types=["schema", "full"])
    source, destination = env.source_info(), env.destination_info()
    migrate_schema(config, source, destination, "pre_data")
    run_full_load(config, source, destination)
    migrate_schema(config, source, destination, "post_data")
    assert compare(config, source, destination)["equal"] is True
    env.dst("DROP MATERIALIZED VIEW public.mv; DROP MATERIALIZED VIEW public.mv_empty")
    report = compare(config, source, destination)
    assert report["equal"] is False
    missing = {v["view"]: v for v in report["materialized_views"] if not v["equal"]}
    assert set(missing) == {"public.mv", "public.mv_empty"}, report["materialized_views"]
    assert any("materialized view public.mv " in d and "missing on the destination" in d
               for d in differences(report)), differences(report)
