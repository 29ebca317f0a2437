"""Tables whose rows are identified by a unique index chosen as replica identity, not by a primary key.

pgcopydb's scenario: a table without primary key, a unique index over (id, created_at) set as its replica identity,
then inserts, updates of every row and a delete in one transaction during change data capture. Ours adds a key
update (a column of that index changes) and a second table whose replica identity index is not its first unique
index.
"""

from __future__ import annotations

from tests.peer.rig import assert_migrated, migrate

DDL = """
CREATE TABLE public.event_matches (id bigserial NOT NULL, created_at timestamp(6) NOT NULL DEFAULT now(),
                                   name text NOT NULL);
CREATE UNIQUE INDEX event_matches_ri ON public.event_matches (id, created_at);
ALTER TABLE public.event_matches REPLICA IDENTITY USING INDEX event_matches_ri;
INSERT INTO public.event_matches (name) SELECT 'initial-' || i FROM generate_series(1, 5) i;
CREATE TABLE public.codes (code text NOT NULL, region int NOT NULL, label text);
CREATE UNIQUE INDEX codes_a_code ON public.codes (code);
CREATE UNIQUE INDEX codes_b_region_code ON public.codes (region, code);
ALTER TABLE public.codes REPLICA IDENTITY USING INDEX codes_b_region_code;
INSERT INTO public.codes SELECT 'c' || g, g % 3, 'label ' || g FROM generate_series(1, 30) g;
"""

DML = """
BEGIN;
INSERT INTO public.event_matches (name) SELECT 'cdc-' || i FROM generate_series(1, 5) i;
UPDATE public.event_matches SET name = 'initial-updated-' || id WHERE name LIKE 'initial-%';
UPDATE public.event_matches SET name = 'cdc-updated-' || id WHERE name LIKE 'cdc-%';
DELETE FROM public.event_matches WHERE name = 'cdc-updated-10';
UPDATE public.event_matches SET created_at = created_at + interval '1 day' WHERE id = 2;
COMMIT;
UPDATE public.codes SET label = label || '!' WHERE region = 1;
UPDATE public.codes SET region = 9 WHERE code = 'c4';
DELETE FROM public.codes WHERE code IN ('c5', 'c6');
INSERT INTO public.codes VALUES ('c99', 0, NULL);
"""


def test_replica_identity_using_an_index_syncs_updates_deletes_and_key_changes(migration_env):
    migration_env.src(DDL)
    run = migrate(migration_env, changes=DML)
    assert run.cutover["verification"]["equal"] is True
    assert migration_env.dst("SELECT name FROM public.event_matches ORDER BY id") == \
        migration_env.src("SELECT name FROM public.event_matches ORDER BY id")
    assert migration_env.dst("SELECT region FROM public.codes WHERE code = 'c4'") == [(9,)]
    assert_migrated(migration_env)
