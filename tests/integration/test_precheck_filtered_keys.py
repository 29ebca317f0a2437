"""A row filter on a table other tables reference: rows of theirs may point to rows the filter leaves out, and
post-data then cannot build the foreign key on the destination (after the whole full load, rolling back every
trigger and key). The precheck finds such rows on the source and names the key, the rows and the fix."""

from __future__ import annotations

import pytest

from airflow_pgmigrate.engine.full_load import run_full_load
from airflow_pgmigrate.engine.schema import migrate_schema

pytestmark = pytest.mark.integration

SOURCE = """
CREATE TABLE public.status (id int PRIMARY KEY, name text);
INSERT INTO public.status VALUES (1, 'draft'), (2, 'active');
CREATE TABLE public.item (id int PRIMARY KEY, status_id int CONSTRAINT item_status REFERENCES public.status (id));
INSERT INTO public.item VALUES (1, 1), (2, 2), (3, NULL);
"""


def test_rows_pointing_to_rows_a_filter_leaves_out_fail_the_precheck(migration_env):
    env = migration_env
    env.src(SOURCE)
    report = env.precheck(filters={"public.status": "id = 1"}, migration_types=["schema", "full"])
    (item,) = [r for r in report.failures if r.name == "row_filters"]
    assert "foreign key item_status of public.item references public.status, whose row filter leaves out rows " \
           "that rows of public.item point to" in item.detail, item.detail
    assert "filters['public.item']" in item.fix


def test_a_referencing_table_filtered_the_same_way_passes_and_migrates(migration_env):
    env = migration_env
    env.src(SOURCE)
    overrides = {"filters": {"public.status": "id = 1", "public.item": "status_id = 1 OR status_id IS NULL"},
                 "migration_types": ["schema", "full"]}
    assert env.precheck(**overrides).result("row_filters").status == "passed"
    config = env.config(**overrides)
    migrate_schema(config, env.source_info(), env.destination_info(), "pre_data")
    run_full_load(config, env.source_info(), env.destination_info())
    migrate_schema(config, env.source_info(), env.destination_info(), "post_data")
    assert env.dst("SELECT id FROM public.item ORDER BY id") == [(1,), (3,)]
    assert env.dst("SELECT conname FROM pg_constraint WHERE contype = 'f'") == [("item_status",)]
