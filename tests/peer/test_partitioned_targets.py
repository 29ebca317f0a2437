"""Rows of a plain source table loaded and synced into a destination table partitioned differently.

pgcopydb's partitioned-target scenarios prepare the destination themselves (a table partitioned by list, with a
primary key that includes the partition key), copy the data into it, then stream inserts and a TRUNCATE, checking
that each row lands in its partition. Ours: ``migration_types: [full, incremental]`` and ``conflicting_tables:
ignore`` into the prepared tables, and a source that is partitioned itself into a plain destination table.
"""

from __future__ import annotations

from tests.peer.rig import Inventory, migrate

SOURCE = """
CREATE SCHEMA partitioned_target;
CREATE TABLE partitioned_target.events (id bigint PRIMARY KEY, bucket smallint NOT NULL, payload text);
INSERT INTO partitioned_target.events VALUES (1, 0, 'a'), (2, 1, 'b'), (3, 0, 'c');
"""

TARGET = """
CREATE SCHEMA partitioned_target;
CREATE TABLE partitioned_target.events (id bigint NOT NULL, bucket smallint NOT NULL, payload text,
                                        PRIMARY KEY (id, bucket)) PARTITION BY LIST (bucket);
CREATE TABLE partitioned_target.events_a PARTITION OF partitioned_target.events FOR VALUES IN (0);
CREATE TABLE partitioned_target.events_b PARTITION OF partitioned_target.events FOR VALUES IN (1);
"""


def buckets(env) -> list[tuple]:
    return env.dst("SELECT (SELECT count(*) FROM partitioned_target.events_a), "
                   "(SELECT count(*) FROM partitioned_target.events_b)")


def rows(info) -> list:
    tables = Inventory.read(info).tables
    return sorted((tables.get(("partitioned_target", "events_a")) or {}).items()) + \
        sorted((tables.get(("partitioned_target", "events_b")) or {}).items())


def test_load_and_sync_into_a_partitioned_target(migration_env):
    migration_env.src(SOURCE)
    migration_env.dst(TARGET)
    seen: dict[str, list] = {}

    def changes(env) -> None:
        seen["loaded"] = buckets(env)
        env.src("INSERT INTO partitioned_target.events VALUES (4, 1, 'd'), (5, 0, 'e')")
        env.src("UPDATE partitioned_target.events SET payload = 'changed' WHERE id IN (1, 2)")
        env.src("DELETE FROM partitioned_target.events WHERE id = 3")

    run = migrate(migration_env, migration_types=["full", "incremental"], conflicting_tables="ignore",
                  changes=changes)
    assert seen["loaded"] == [(2, 1)]
    assert buckets(migration_env) == [(2, 2)]
    assert run.cutover["verification"]["equal"] is True
    source = sorted(migration_env.src("SELECT id, bucket, payload FROM partitioned_target.events"))
    assert sorted(migration_env.dst("SELECT id, bucket, payload FROM partitioned_target.events")) == source


def test_truncate_reaches_a_partitioned_target(migration_env):
    migration_env.src(SOURCE)
    migration_env.dst(TARGET)
    run = migrate(migration_env, migration_types=["full", "incremental"], conflicting_tables="ignore",
                  changes=["INSERT INTO partitioned_target.events VALUES (4, 1, 'd')",
                           "TRUNCATE ONLY partitioned_target.events",
                           "INSERT INTO partitioned_target.events VALUES (9, 1, 'after the truncate')"])
    assert buckets(migration_env) == [(0, 1)]
    assert run.cutover["verification"]["equal"] is True
    assert migration_env.dst("SELECT id, bucket, payload FROM partitioned_target.events") == \
        migration_env.src("SELECT id, bucket, payload FROM partitioned_target.events")


def test_partitioned_source_into_a_plain_target(migration_env):
    migration_env.src("""
        CREATE SCHEMA partitioned_target;
        CREATE TABLE partitioned_target.events (id bigint NOT NULL, bucket smallint NOT NULL, payload text,
                                                PRIMARY KEY (id, bucket)) PARTITION BY LIST (bucket);
        CREATE TABLE partitioned_target.events_a PARTITION OF partitioned_target.events FOR VALUES IN (0);
        CREATE TABLE partitioned_target.events_b PARTITION OF partitioned_target.events FOR VALUES IN (1);
        INSERT INTO partitioned_target.events VALUES (1, 0, 'a'), (2, 1, 'b'), (3, 0, 'c');""")
    migration_env.dst("CREATE SCHEMA partitioned_target; CREATE TABLE partitioned_target.events_a (id bigint, "
                      "bucket smallint, payload text, PRIMARY KEY (id, bucket)); CREATE TABLE "
                      "partitioned_target.events_b (LIKE partitioned_target.events_a INCLUDING ALL)")
    run = migrate(migration_env, migration_types=["full", "incremental"], conflicting_tables="ignore",
                  objects={"tables": ["partitioned_target.events_a", "partitioned_target.events_b"]},
                  changes=["INSERT INTO partitioned_target.events VALUES (4, 1, 'd'), (5, 0, 'e')",
                           "UPDATE partitioned_target.events SET payload = 'x' WHERE id = 2"])
    assert run.cutover["verification"]["equal"] is True
    assert rows(migration_env.source_info()) == rows(migration_env.destination_info())
