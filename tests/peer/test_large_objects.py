"""Large objects: copied byte for byte by the full load, with their OIDs, and compared at the end.

pgcopydb's blobs scenario imports a few images as large objects, takes a snapshot, imports them again after it, and
checks that the destination holds exactly the ones the snapshot saw. Ours imports objects of several sizes (empty,
one byte, pieces larger than the copy's 1 MB unit), one created after the snapshot, and objects changed or removed
while changes stream (logical replication does not carry large objects).
"""

from __future__ import annotations

import os

import psycopg

from tests.peer.rig import Inventory, assert_migrated, migrate

SIZES = [0, 1, 8191, 1024 * 1024 + 17, 3 * 1024 * 1024]


def import_objects(env, sizes: list[int]) -> list[int]:
    oids = []
    with psycopg.connect(**env.source_info().connect_kwargs(), autocommit=True) as conn:
        for size in sizes:
            oid = conn.execute("SELECT lo_from_bytea(0, %s)", (os.urandom(size),)).fetchone()[0]
            oids.append(int(oid))
    return oids


def test_large_objects_copy_exactly_with_their_oids(migration_env):
    migration_env.src("CREATE TABLE public.images (id serial PRIMARY KEY, image oid, name text)")
    oids = import_objects(migration_env, SIZES)
    migration_env.src("INSERT INTO public.images (image, name) SELECT unnest(%s::oid[]), 'img'", (oids,))
    run = migrate(migration_env, migration_types=["schema", "full"], cutover=False)
    assert run.full_load["large_objects"] == len(SIZES)
    source, destination = assert_migrated(migration_env)
    assert sorted(destination.large_objects) == sorted(oids)
    sizes = migration_env.dst("SELECT oid::bigint, length(lo_get(oid)) FROM pg_largeobject_metadata ORDER BY 1")
    assert sorted(s for _, s in sizes) == sorted(SIZES)


def test_large_objects_changed_during_sync_reach_the_destination(migration_env):
    migration_env.src("CREATE TABLE public.images (id serial PRIMARY KEY, image oid)")
    first, second = import_objects(migration_env, [1000, 2000])
    migration_env.src("INSERT INTO public.images (image) VALUES (%s), (%s)", (first, second))

    def changes(env) -> None:
        (third,) = import_objects(env, [5000])
        env.src("INSERT INTO public.images (image) VALUES (%s)", (third,))
        env.src("SELECT lo_put(%s, 0, '\\xdeadbeef')", (first,))
        env.src("SELECT lo_unlink(%s)", (second,))

    migrate(migration_env, changes=changes)
    source = Inventory.read(migration_env.source_info())
    assert len(source.large_objects) == 2
    assert_migrated(migration_env)
