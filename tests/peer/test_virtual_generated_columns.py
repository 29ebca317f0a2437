"""PostgreSQL 18 sources: a table with REPLICA IDENTITY FULL and a VIRTUAL generated column (PostgreSQL 18's default
kind). Virtual columns cannot be published, and PostgreSQL 18 then refuses UPDATE and DELETE on such a table once it
is in a publication: publishing it would break the source's own writes. The precheck fails naming the table and the
fix, and the full load refuses before it creates the publication."""

from __future__ import annotations

import pytest

from airflow_pgmigrate.engine.full_load import run_full_load
from airflow_pgmigrate.engine.publication import PublicationError
from airflow_pgmigrate.engine.schema import migrate_schema
from tests.peer.test_unit_edge_cases import databases, postgresql_18  # noqa: F401 - the PostgreSQL 18 servers

VIRTUAL = """
CREATE TABLE public.measures (a int, doubled int GENERATED ALWAYS AS (a * 2) VIRTUAL);
ALTER TABLE public.measures REPLICA IDENTITY FULL;
INSERT INTO public.measures VALUES (1), (2);
CREATE TABLE public.keyed (id int PRIMARY KEY, doubled int GENERATED ALWAYS AS (id * 2) VIRTUAL);
INSERT INTO public.keyed VALUES (1);
"""


def test_a_virtual_generated_column_under_replica_identity_full_is_refused_before_the_source_breaks(
        postgresql_18, monkeypatch):  # noqa: F811 - the fixture imported above
    with databases(postgresql_18, monkeypatch, "virtual18") as env:
        env.src(VIRTUAL)
        report = env.precheck()
        (item,) = [r for r in report.failures if r.name == "primary_keys"]
        assert "public.measures" in item.detail and "VIRTUAL generated column" in item.detail, item.detail
        assert "public.keyed" not in item.detail
        assert 'ALTER TABLE "public"."measures" ADD PRIMARY KEY' in item.fix, item.fix
        # Without incremental sync nothing is published: nothing to refuse.
        assert not [r for r in env.precheck(migration_types=["schema", "full"]).failures if r.name == "primary_keys"]
        config = env.config()
        migrate_schema(config, env.source_info(), env.destination_info(), "pre_data")
        with pytest.raises(PublicationError, match=r"public\.measures .*VIRTUAL generated column"):
            run_full_load(config, env.source_info(), env.destination_info())
        assert env.src("SELECT count(*) FROM pg_publication") == [(0,)]
        env.src("UPDATE public.measures SET a = a + 10; DELETE FROM public.measures WHERE a = 12")
        assert env.src("SELECT a, doubled FROM public.measures") == [(11, 22)]
