"""Extensions: created on the destination before the tables that use them, in their own schema, with data whose
types and operator classes they provide; and tables that reference each other in a cycle.

pgcopydb's extensions scenario installs extensions (one in a schema of its own), loads data using them, clones,
then compares schema and data; its DDL adds three tables whose foreign keys form a cycle. PostGIS is not available
here: hstore, intarray, citext and uuid-ossp (the contrib modules PostgreSQL ships) stand in for it.
"""

from __future__ import annotations

import pytest

from tests.peer.rig import assert_migrated, migrate

DDL = """
CREATE SCHEMA foo;
CREATE EXTENSION hstore WITH SCHEMA foo;
CREATE EXTENSION intarray;
CREATE EXTENSION citext;
CREATE EXTENSION "uuid-ossp";
CREATE TABLE public.things (
    id uuid PRIMARY KEY DEFAULT uuid_generate_v4(), attrs foo.hstore, tags int[], email citext UNIQUE);
CREATE INDEX things_tags ON public.things USING gist (tags gist__int_ops);
CREATE INDEX things_attrs ON public.things USING gin (attrs);
INSERT INTO public.things (attrs, tags, email)
SELECT foo.hstore(ARRAY['k', 'n'], ARRAY['v' || g, g::text]), ARRAY[g, g % 7, 42], 'User' || g || '@Example.com'
  FROM generate_series(1, 300) g;
CREATE TABLE public.one (id int PRIMARY KEY, two_id int);
CREATE TABLE public.two (id int PRIMARY KEY, one_id int, three_id int);
CREATE TABLE public.three (id int PRIMARY KEY);
INSERT INTO public.three SELECT generate_series(1, 10);
INSERT INTO public.one SELECT g, NULL FROM generate_series(1, 10) g;
INSERT INTO public.two SELECT g, g, g FROM generate_series(1, 10) g;
UPDATE public.one SET two_id = id;
ALTER TABLE public.one ADD CONSTRAINT one_two_fk FOREIGN KEY (two_id) REFERENCES public.two (id);
ALTER TABLE public.two ADD CONSTRAINT two_one_fk FOREIGN KEY (one_id) REFERENCES public.one (id);
ALTER TABLE public.two ADD CONSTRAINT two_three_fk FOREIGN KEY (three_id) REFERENCES public.three (id);
"""

CHANGES = [
    "INSERT INTO public.things (attrs, tags, email) VALUES ('a => 1, b => NULL', '{1,2,3}', 'NEW@example.com')",
    "UPDATE public.things SET attrs = attrs OPERATOR(foo.||) 'changed => yes'::foo.hstore, tags = tags OPERATOR(public.-) 42 WHERE tags @> '{3}'",
    "DELETE FROM public.things WHERE email = 'user7@example.com'",
    "BEGIN; INSERT INTO public.three VALUES (11); INSERT INTO public.two VALUES (11, NULL, 11);"
    "INSERT INTO public.one VALUES (11, 11); UPDATE public.two SET one_id = 11 WHERE id = 11; COMMIT;",
]


def require_extensions(env) -> None:
    names = ["hstore", "intarray", "citext", "uuid-ossp", "ltree"]
    found = {r[0] for r in env.src("SELECT name FROM pg_available_extensions WHERE name = ANY(%s)", (names,))}
    if set(names) - found:
        pytest.skip(f"extensions not installed with this PostgreSQL: {sorted(set(names) - found)}")


def test_extensions_their_types_and_indexes_and_a_foreign_key_cycle(migration_env):
    require_extensions(migration_env)
    migration_env.src(DDL)
    run = migrate(migration_env, changes=CHANGES)
    assert run.cutover["verification"]["equal"] is True
    assert migration_env.dst("SELECT e.extname, n.nspname FROM pg_extension e JOIN pg_namespace n ON "
                             "n.oid = e.extnamespace WHERE extname <> 'plpgsql' ORDER BY 1") == [
        ("citext", "public"), ("hstore", "foo"), ("intarray", "public"), ("uuid-ossp", "public")]
    # The operator classes the indexes use came with the extensions, and the citext key still ignores case.
    assert migration_env.dst("SELECT count(*) FROM public.things WHERE email = 'USER8@EXAMPLE.COM'") == [(1,)]
    assert migration_env.dst("SELECT count(*) FROM pg_constraint WHERE contype = 'f'") == [(3,)]
    assert_migrated(migration_env)


def test_an_extension_used_by_a_selected_table_comes_with_it(migration_env):
    require_extensions(migration_env)
    migration_env.src(DDL + "CREATE SCHEMA other; CREATE EXTENSION ltree WITH SCHEMA other;")
    migrate(migration_env, objects={"tables": ["public.things"]}, migration_types=["schema", "full"], cutover=False)
    assert migration_env.dst("SELECT extname FROM pg_extension WHERE extname <> 'plpgsql' ORDER BY 1") == [
        ("citext",), ("hstore",), ("intarray",), ("uuid-ossp",)]
    assert migration_env.dst("SELECT count(*) FROM public.things") == [(300,)]
