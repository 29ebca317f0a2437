"""Foreign keys into a table whose rows do not migrate (``objects.exclude_data``): the destination's copy of that
table is empty, so a key from a table whose rows do migrate cannot be built there. The precheck and the schema
migration name such a key and the fix before the full load or any change of post-data, and
``schema_migration.foreign_keys_to_excluded: skip`` leaves it out, as for a key to a table not selected."""

from __future__ import annotations

import pytest

from airflow_pgmigrate.engine.full_load import run_full_load
from airflow_pgmigrate.engine.schema import SchemaMigrationError, migrate_schema

pytestmark = pytest.mark.integration

SOURCE = """
CREATE TABLE public.status (id int PRIMARY KEY, name text);
INSERT INTO public.status VALUES (1, 'draft'), (2, 'active');
CREATE TABLE public.item (id int PRIMARY KEY, status_id int CONSTRAINT item_status REFERENCES public.status (id));
INSERT INTO public.item VALUES (1, 1), (2, 2), (3, NULL);
CREATE TABLE public.status_note (id int PRIMARY KEY, status_id int REFERENCES public.status (id));
INSERT INTO public.status_note VALUES (1, 1);
CREATE TABLE public.events (id int, at date NOT NULL, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
CREATE TABLE public.events_old PARTITION OF public.events FOR VALUES FROM ('2000-01-01') TO ('2020-01-01');
CREATE TABLE public.events_new PARTITION OF public.events FOR VALUES FROM ('2020-01-01') TO ('2100-01-01');
INSERT INTO public.events VALUES (1, '2010-01-01'), (2, '2024-01-01');
CREATE TABLE public.event_ref (id int PRIMARY KEY, event_id int, event_at date,
                               CONSTRAINT event_ref_event FOREIGN KEY (event_id, event_at) REFERENCES public.events);
INSERT INTO public.event_ref VALUES (1, 1, '2010-01-01');
CREATE TRIGGER item_noop AFTER INSERT ON public.item FOR EACH ROW EXECUTE FUNCTION suppress_redundant_updates_trigger();
"""
#: status and the old events partition keep their definitions without rows; status_note goes without rows too.
OBJECTS = {"schemas": ["public"], "exclude_data": ["public.status", "public.status_note", "public.events_old"]}


def _load(env, config) -> None:
    migrate_schema(config, env.source_info(), env.destination_info(), "pre_data")
    run_full_load(config, env.source_info(), env.destination_info())


def test_a_key_into_a_table_without_rows_is_named_before_anything_changes(migration_env):
    env = migration_env
    env.src(SOURCE)
    report = env.precheck(objects=OBJECTS, migration_types=["schema", "full"])
    (item,) = [r for r in report.failures if r.name == "selected_objects"]
    assert "foreign key item_status of public.item references public.status, whose rows do not migrate " \
           "(objects.exclude_data)" in item.detail, item.detail
    assert "foreign key event_ref_event of public.event_ref references public.events" in item.detail, item.detail
    assert "status_note" not in item.detail  # both without rows: the key holds on the empty tables
    assert "add public.item to objects.exclude_data too, or set schema_migration.foreign_keys_to_excluded: skip" \
        in item.detail
    config = env.config(objects=OBJECTS, migration_types=["schema", "full"])
    _load(env, config)
    with pytest.raises(SchemaMigrationError) as info:
        migrate_schema(config, env.source_info(), env.destination_info(), "post_data")
    message = str(info.value)
    assert message.startswith("schema migration cannot start, nothing was changed"), message
    assert "foreign key item_status of public.item references public.status, whose rows do not migrate" in message
    assert "add public.item to objects.exclude_data too" in message
    assert "schema_migration.foreign_keys_to_excluded: skip" in message
    assert env.dst("SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal") == [(0,)]


def test_a_key_into_a_table_without_rows_can_be_left_out_and_is_listed(migration_env):
    env = migration_env
    env.src(SOURCE)
    overrides = {"objects": OBJECTS, "migration_types": ["schema", "full"],
                 "schema_migration": {"foreign_keys_to_excluded": "skip"}}
    assert not [r for r in env.precheck(**overrides).failures if r.name == "selected_objects"]
    config = env.config(**overrides)
    _load(env, config)
    post = migrate_schema(config, env.source_info(), env.destination_info(), "post_data")
    skipped = {s["object"]: s["reason"] for s in post.skipped}
    assert skipped["fk constraint public.item item_status"] == (
        "references public.status, whose rows do not migrate (objects.exclude_data; "
        "schema_migration.foreign_keys_to_excluded: skip)"), skipped
    assert "fk constraint public.event_ref event_ref_event" in skipped, skipped
    # The key between two tables without rows is built; the rows that migrate are all there.
    assert env.dst("SELECT conname FROM pg_constraint WHERE contype = 'f' ORDER BY 1") == [("status_note_status_id_fkey",)]
    assert env.dst("SELECT count(*) FROM public.item") == [(3,)]
    assert env.dst("SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal") == [(1,)]


def test_exclude_data_naming_a_partition_of_a_listed_table_passes_the_precheck(migration_env):
    """A partition migrates with its listed partitioned table: objects.exclude_data may name it, and does not match
    nothing."""
    env = migration_env
    env.src(SOURCE)
    overrides = {"objects": {"tables": ["public.events"], "exclude_data": ["public.events_old"]},
                 "migration_types": ["schema", "full"]}
    report = env.precheck(**overrides)
    assert not [r for r in report.failures if r.name == "selected_objects"], report.format_table()
    config = env.config(**overrides)
    _load(env, config)
    assert env.dst("SELECT (SELECT count(*) FROM public.events_old), (SELECT count(*) FROM public.events_new)") \
        == [(0, 1)]
