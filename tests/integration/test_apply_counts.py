"""Every replicated UPDATE and DELETE must find its row on the destination: rows touched are counted, and a change
that matched nothing stops the sync with the table and the row it expected (never a silent no-op)."""

from __future__ import annotations

import pytest

from airflow_pgmigrate.engine.incremental import run_incremental
from airflow_pgmigrate.engine.incremental.apply import ApplyError
from tests.hardening.rig import applied_lsn, assert_same_data
from tests.integration.test_incremental import catch_up, start_migration

pytestmark = pytest.mark.integration


def _diverge(env, statement: str) -> None:
    """A write on the destination only (what a different text form of a value amounts to for the applier)."""
    env.dst(f"SET session_replication_role = replica; {statement}")


def _apply_fails(env, config) -> str:
    before = applied_lsn(env, config.name)
    with pytest.raises(ApplyError) as info:
        run_incremental(config, env.source_info(), env.destination_info(), window_seconds=10)
    assert applied_lsn(env, config.name) == before, "nothing of the batch is recorded as applied"
    return str(info.value)


@pytest.mark.parametrize("statement", ["UPDATE public.nokey SET b = 'new' WHERE a = 5",
                                       "DELETE FROM public.nokey WHERE a = 5"])
def test_keyless_change_that_matches_no_destination_row_is_an_error(migration_env, statement):
    env = migration_env
    env.src("CREATE TABLE public.nokey (a int, b text, f double precision);"
            "ALTER TABLE public.nokey REPLICA IDENTITY FULL;"
            "INSERT INTO public.nokey SELECT g, 'row ' || g, g / 3.0 FROM generate_series(1, 20) g")
    config = start_migration(env)
    catch_up(env, config)
    _diverge(env, "UPDATE public.nokey SET f = f + 1e-12 WHERE a = 5")  # a float whose text differs
    env.src(statement)
    message = _apply_fails(env, config)
    verb = statement.split()[0]
    assert f"replicated {verb} of public.nokey" in message and "touched 0" in message, message
    assert "a='5'" in message and "b='row 5'" in message and "REPLICA IDENTITY FULL" in message, message
    assert env.dst("SELECT b FROM public.nokey WHERE a = 5") == [("row 5",)]


@pytest.mark.parametrize("statement", ["UPDATE public.acc SET v = 1 WHERE id IN (3, 7)",
                                       "DELETE FROM public.acc WHERE id IN (3, 7)"])
def test_keyed_change_whose_row_is_gone_from_the_destination_is_an_error(migration_env, statement):
    env = migration_env
    env.src("CREATE TABLE public.acc (id int PRIMARY KEY, v int);"
            "INSERT INTO public.acc SELECT g, 0 FROM generate_series(1, 100) g")
    config = start_migration(env)
    catch_up(env, config)
    _diverge(env, "DELETE FROM public.acc WHERE id = 7")
    env.src(statement)
    message = _apply_fails(env, config)
    verb = statement.split()[0]
    assert f"replicated {verb} of public.acc" in message and "expected 1 row with id='7'" in message, message
    assert "touched 0" in message and "by its key" in message, message


def test_keyless_toasted_update_that_changes_nothing_is_applied(migration_env):
    """pgcopydb's xpto scenario: UPDATE t SET c1 = c1, c2 = c2 on a keyless REPLICA IDENTITY FULL table whose values
    are stored out of line: the new row comes with every value 'unchanged'."""
    env = migration_env
    env.src("CREATE TABLE public.xpto2 (c1 text, c2 text); ALTER TABLE public.xpto2 REPLICA IDENTITY FULL;"
            "ALTER TABLE public.xpto2 ALTER c1 SET STORAGE EXTERNAL, ALTER c2 SET STORAGE EXTERNAL;"
            "INSERT INTO public.xpto2 VALUES ('small', 'row')")
    config = start_migration(env)
    env.src("INSERT INTO public.xpto2 SELECT string_agg(md5(g::text), '') FROM generate_series(1, 63) g "
            "UNION ALL SELECT 'x'; UPDATE public.xpto2 SET c2 = repeat('y', 2000) WHERE c1 LIKE 'c4ca%'")
    env.src("UPDATE public.xpto2 SET c1 = c1, c2 = c2")
    env.src("UPDATE public.xpto2 SET c2 = c2 || 'z' WHERE c1 = 'small'")
    catch_up(env, config)
    assert env.dst("SELECT count(*), sum(length(c1)), sum(length(c2)) FROM public.xpto2") == \
        env.src("SELECT count(*), sum(length(c1)), sum(length(c2)) FROM public.xpto2")
    assert_same_data(env)


def test_counted_changes_that_are_right_are_applied(migration_env):
    """Where one change legitimately touches one row of several candidates, or a row whose place changed, the counts
    hold: one of two identical keyless rows updated and deleted, a row moving between partitions and back, TRUNCATE
    then inserts and updates of the same keys in one batch."""
    env = migration_env
    env.src("CREATE TABLE public.twins (a int, b text); ALTER TABLE public.twins REPLICA IDENTITY FULL;"
            "INSERT INTO public.twins VALUES (1, 'same'), (1, 'same'), (2, 'same'), (2, 'same');"
            "CREATE TABLE public.parts (id int, v int, PRIMARY KEY (id, v)) PARTITION BY RANGE (v);"
            "CREATE TABLE public.parts_lo PARTITION OF public.parts FOR VALUES FROM (0) TO (100);"
            "CREATE TABLE public.parts_hi PARTITION OF public.parts FOR VALUES FROM (100) TO (200);"
            "CREATE TABLE public.pk (id int PRIMARY KEY, note text, n int);"
            "INSERT INTO public.parts SELECT g, g FROM generate_series(1, 50) g;"
            "INSERT INTO public.pk SELECT g, 'before', 0 FROM generate_series(1, 30) g")
    config = start_migration(env)
    catch_up(env, config)
    env.src("UPDATE public.twins SET b = 'one' WHERE ctid = (SELECT min(ctid) FROM public.twins WHERE a = 1);"
            "DELETE FROM public.twins WHERE ctid = (SELECT min(ctid) FROM public.twins WHERE a = 2);"
            "UPDATE public.parts SET v = v + 100 WHERE id IN (3, 4);"
            "UPDATE public.parts SET v = v - 100 WHERE id = 4;"
            "UPDATE public.parts SET v = 5 + 100 WHERE id = 5;"
            "BEGIN; TRUNCATE public.pk; INSERT INTO public.pk SELECT g, 'after', 0 FROM generate_series(1, 10) g;"
            "UPDATE public.pk SET n = n + 1 WHERE id <= 5; DELETE FROM public.pk WHERE id = 10; COMMIT;"
            "UPDATE public.pk SET n = n + 1, note = 'again' WHERE id <= 3")
    catch_up(env, config)
    assert env.dst("SELECT a, b, count(*) FROM public.twins GROUP BY 1, 2 ORDER BY 1, 2") == \
        [(1, "one", 1), (1, "same", 1), (2, "same", 1)]
    assert env.dst("SELECT tableoid::regclass::text, id, v FROM public.parts WHERE id IN (3, 4, 5) ORDER BY id") == \
        [("parts_hi", 3, 103), ("parts_lo", 4, 4), ("parts_hi", 5, 105)]
    assert env.dst("SELECT count(*), sum(n), count(*) FILTER (WHERE note = 'again') FROM public.pk") == [(9, 8, 3)]
    assert_same_data(env)


@pytest.mark.parametrize("table", ["CREATE TABLE public.link (a int, b int, PRIMARY KEY (a, b));"
                                   "INSERT INTO public.link SELECT g, g FROM generate_series(1, 20) g",
                                   "CREATE TABLE public.link (a int, b int, big text, PRIMARY KEY (a, b));"
                                   "ALTER TABLE public.link ALTER big SET STORAGE EXTERNAL;"
                                   "INSERT INTO public.link SELECT g, g, repeat('x', 5000) FROM generate_series(1, 20) g"])
def test_update_that_sets_no_column_still_must_find_its_row(migration_env, table):
    """An UPDATE whose new row changes only key columns to themselves (or leaves only unchanged TOASTed values) writes
    no column, and still must find its row: a missing one is an error, never a silent no-op."""
    env = migration_env
    env.src(table)
    config = start_migration(env)
    catch_up(env, config)
    _diverge(env, "DELETE FROM public.link WHERE a = 7")
    env.src("UPDATE public.link SET a = a WHERE a = 7")
    message = _apply_fails(env, config)
    assert "replicated UPDATE of public.link" in message and "touched 0" in message, message
