"""Materialized views: contents recomputed on the destination with the source's state, refreshed at cutover.

pgcopydb's matview scenarios: a ``REFRESH MATERIALIZED VIEW CONCURRENTLY`` on the source while changes stream must
show on the destination, and a view created ``WITH NO DATA`` must stay unpopulated. Ours add a view reading another
(refresh order), a view emptied on the source during sync, and verification of their contents.
"""

from __future__ import annotations

import pytest

from airflow_pgmigrate.engine.cutover import CutoverError, run_cutover
from airflow_pgmigrate.engine.verify import compare
from tests.peer.rig import Inventory, assert_migrated, migrate

VIEWS = """
CREATE TABLE public.src (id int PRIMARY KEY, val text);
INSERT INTO public.src VALUES (1, 'alpha'), (2, 'beta'), (3, 'gamma');
-- names sort the reader before the view it reads: the refresh must follow dependencies, not names
CREATE MATERIALIZED VIEW public.mv_b AS SELECT id, upper(val) AS val FROM public.src;
CREATE UNIQUE INDEX mv_b_id ON public.mv_b (id);
CREATE VIEW public.v_b AS SELECT id, val FROM public.mv_b WHERE id > 1;
CREATE MATERIALIZED VIEW public.mv_a AS SELECT count(*) AS n, string_agg(val, ',' ORDER BY id) AS vals FROM public.v_b;
CREATE MATERIALIZED VIEW public.mv_never AS SELECT id FROM public.src WITH NO DATA;
CREATE MATERIALIZED VIEW public.mv_emptied AS SELECT id FROM public.src;
"""


def test_refresh_during_sync_reaches_the_destination_and_no_data_stays_unpopulated(migration_env):
    migration_env.src(VIEWS)
    run = migrate(migration_env, cutover=False)
    after_post_data = Inventory.read(migration_env.destination_info()).matviews
    assert after_post_data[("public", "mv_never")] == (False, None), "WITH NO DATA stays unpopulated"
    assert sum(after_post_data[("public", "mv_a")][1].values()) == 1
    migration_env.src("INSERT INTO public.src VALUES (4, 'delta'), (5, 'epsilon')")
    migration_env.src("REFRESH MATERIALIZED VIEW CONCURRENTLY public.mv_b")
    migration_env.src("REFRESH MATERIALIZED VIEW public.mv_a")
    migration_env.src("REFRESH MATERIALIZED VIEW public.mv_emptied WITH NO DATA")
    report = run_cutover(run.config, migration_env.source_info(), migration_env.destination_info())
    migration_env.source.execute(f'ALTER DATABASE "{migration_env.source_db}" RESET default_transaction_read_only')
    steps = [s["step"] for s in report["steps"]]
    assert steps.index("drain") < steps.index("materialized_views") < steps.index("verify")
    actions = {v["view"]: v["action"] for v in report["materialized_views"]}
    assert actions == {"public.mv_b": "refreshed", "public.mv_a": "refreshed", "public.mv_never": "left unpopulated",
                       "public.mv_emptied": "emptied"}
    assert [v["view"] for v in report["materialized_views"]].index("public.mv_b") < \
        [v["view"] for v in report["materialized_views"]].index("public.mv_a")
    assert migration_env.dst("SELECT vals FROM public.mv_a") == [("BETA,GAMMA,DELTA,EPSILON",)]
    views = {v["view"]: v for v in report["verification"]["materialized_views"]}
    assert all(v["equal"] for v in views.values()) and views["public.mv_b"]["destination_rows"] == 5
    _, destination = assert_migrated(migration_env)
    assert destination.matviews[("public", "mv_emptied")] == (False, None)


def test_a_materialized_view_the_source_did_not_refresh_is_named_without_blocking(migration_env):
    migration_env.src(VIEWS)
    run = migrate(migration_env, cutover=False)
    migration_env.src("INSERT INTO public.src VALUES (4, 'delta')")  # mv_b on the source is now stale
    report = run_cutover(run.config, migration_env.source_info(), migration_env.destination_info())
    migration_env.source.execute(f'ALTER DATABASE "{migration_env.source_db}" RESET default_transaction_read_only')
    assert report["status"] == "completed"
    views = {v["view"]: v for v in report["verification"]["materialized_views"]}
    stale = views["public.mv_b"]
    assert stale["equal"] is True and stale["stale_on_source"] is True
    assert (stale["source_rows"], stale["destination_rows"]) == (3, 4)
    assert "older than its tables" in stale["note"] and "1 more" in stale["note"]
    assert migration_env.dst("SELECT val FROM public.mv_b WHERE id = 4") == [("DELTA",)]
    reader = views["public.mv_a"]  # reads mv_b through a view: follows the destination's refreshed mv_b
    assert reader["equal"] is True and reader["stale_on_source"] is True and "reads public.mv_b" in reader["note"]


def test_a_materialized_view_that_differs_from_a_refresh_too_stops_the_cutover(migration_env):
    migration_env.src(VIEWS)
    run = migrate(migration_env, cutover=False)
    migration_env.src("INSERT INTO public.src VALUES (4, 'delta')")
    run_cutover_config = run.config
    # A row the destination's view holds that neither the source's view nor a refresh on the source gives.
    migration_env.dst("CREATE FUNCTION public.drift() RETURNS trigger LANGUAGE plpgsql AS "
                      "$$BEGIN NEW.val := NEW.val || '!'; RETURN NEW; END$$")
    migration_env.dst("CREATE TRIGGER drift BEFORE INSERT ON public.src FOR EACH ROW EXECUTE FUNCTION public.drift()")
    migration_env.dst("ALTER TABLE public.src ENABLE ALWAYS TRIGGER drift")
    with pytest.raises(CutoverError) as info:
        run_cutover(run_cutover_config, migration_env.source_info(), migration_env.destination_info())
    migration_env.source.execute(f'ALTER DATABASE "{migration_env.source_db}" RESET default_transaction_read_only')
    assert "materialized view public.mv_b (missing 0, extra 1 row(s), and not what a refresh on the source" \
        in str(info.value)


def test_verification_reports_a_materialized_view_populated_on_one_side_only(migration_env):
    migration_env.src(VIEWS)
    run = migrate(migration_env)
    assert compare(run.config, migration_env.source_info(), migration_env.destination_info())["equal"] is True
    migration_env.dst("REFRESH MATERIALIZED VIEW public.mv_never")
    report = compare(run.config, migration_env.source_info(), migration_env.destination_info())
    assert report["equal"] is False and report["differences"] == 1
    (view,) = [v for v in report["materialized_views"] if not v["equal"]]
    assert view["view"] == "public.mv_never" and view["destination_populated"] is True


def test_a_view_reading_one_the_source_emptied_is_reported_not_a_crash(migration_env):
    migration_env.src(VIEWS)
    run = migrate(migration_env, cutover=False)
    # mv_a stays populated on the source, but reads mv_b, now emptied: it cannot be refreshed anywhere.
    migration_env.src("REFRESH MATERIALIZED VIEW public.mv_b WITH NO DATA")
    with pytest.raises(CutoverError) as info:
        run_cutover(run.config, migration_env.source_info(), migration_env.destination_info())
    migration_env.source.execute(f'ALTER DATABASE "{migration_env.source_db}" RESET default_transaction_read_only')
    actions = {v["view"]: v["action"] for v in info.value.report["materialized_views"]}
    assert actions["public.mv_b"] == "emptied"
    assert actions["public.mv_a"] == "emptied: reads public.mv_b, unpopulated on the source"
    assert "materialized view public.mv_a (populated on the source: True, on the destination: False)" in \
        str(info.value)
