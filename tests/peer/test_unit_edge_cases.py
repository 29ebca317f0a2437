"""Unit edge cases of a clone: odd tables, odd values, odd names, each migrated whole and compared independently.

Situations a user of pgcopydb expects to clone (its ``unit`` scenarios): a table without columns, a table of only
generated columns, inheritance with rows in the parent and the children, exclusion constraints, identity columns and
standalone sequences, strings with newlines and backslashes, quotes in names, a NOT VALID check, a long partial
index, text search vectors, a function whose EXECUTE is revoked.
"""

from __future__ import annotations

import pytest

from tests.peer.rig import assert_migrated, migrate

NO_COLUMNS = """
CREATE TABLE public.nocols ();
INSERT INTO public.nocols DEFAULT VALUES; INSERT INTO public.nocols DEFAULT VALUES;
INSERT INTO public.nocols DEFAULT VALUES;
ALTER TABLE public.nocols REPLICA IDENTITY FULL;
CREATE TABLE public.gen (nb int GENERATED ALWAYS AS (1) STORED);
INSERT INTO public.gen SELECT FROM generate_series(1, 5);
ALTER TABLE public.gen REPLICA IDENTITY FULL;
"""


def test_tables_without_columns_copy_and_sync_their_rows(migration_env):
    migration_env.src(NO_COLUMNS)
    run = migrate(migration_env, changes=[
        "INSERT INTO public.nocols SELECT FROM generate_series(1, 4)",
        "DELETE FROM public.nocols WHERE ctid = (SELECT min(ctid) FROM public.nocols)",
        "INSERT INTO public.gen DEFAULT VALUES",
        "UPDATE public.gen SET nb = DEFAULT",
        "DELETE FROM public.gen WHERE ctid = (SELECT max(ctid) FROM public.gen)",
    ])
    assert run.full_load["tables"]["public.nocols"]["rows"] == 3
    assert run.full_load["tables"]["public.gen"]["rows"] == 5
    assert migration_env.dst("SELECT count(*) FROM public.nocols") == [(6,)]
    assert migration_env.dst("SELECT count(*), sum(nb) FROM public.gen") == [(5, 5)]
    assert run.cutover["verification"]["equal"] is True
    assert_migrated(migration_env)


def test_tables_without_columns_full_load_only(migration_env):
    migration_env.src(NO_COLUMNS)
    migrate(migration_env, migration_types=["schema", "full"], cutover=False)
    assert migration_env.dst("SELECT (SELECT count(*) FROM public.nocols), (SELECT count(*) FROM public.gen)") \
        == [(3, 5)]
    assert_migrated(migration_env)


@pytest.mark.parametrize("objects, named", [
    ({"tables": ["public.Orders"]}, "objects.tables: [public.Orders]"),
    ({"schemas": ["public"], "exclude": ["public.*"]}, "objects.exclude: [public.*]"),
])
def test_full_load_with_nothing_selected_says_so(migration_env, objects, named):
    from airflow_pgmigrate.engine.full_load import FullLoadError, run_full_load

    migration_env.src("CREATE TABLE public.orders (id int PRIMARY KEY)")
    config = migration_env.config(objects=objects)
    with pytest.raises(FullLoadError) as info:
        run_full_load(config, migration_env.source_info(), migration_env.destination_info())
    message = str(info.value)
    assert message.startswith("nothing selected: ") and named in message and "objects.tables" in message
    assert migration_env.src("SELECT count(*) FROM pg_publication") == [(0,)]
    assert migration_env.src("SELECT count(*) FROM pg_replication_slots WHERE database = current_database()") \
        == [(0,)]
