"""Index lookups forced on a partitioned target whose partitions the replicated key cannot prune.

The applier turns hash and merge joins off when a batch is small against its target table, so that each staged key
is one index lookup. A destination table prepared as a partitioned table, fed from a plain source table (data only
into prepared tables, pgcopydb's partitioned-target scenario), is partitioned by a column the source's key does not
hold: there every staged key is looked up in every partition, and the forced plan costs the batch times the number
of partitions instead of the batch (measured: 8,000 keys against 400,000 rows in 256 hash partitions took 25 s with
the lookups forced and 0.9 s with the planner's own choice).
"""

from __future__ import annotations

import pytest
from psycopg import sql

from airflow_pgmigrate.engine.connection import connect
from airflow_pgmigrate.engine.incremental.apply import Applier, Batch, TableTarget
from airflow_pgmigrate.engine.incremental.pgoutput import Change
from airflow_pgmigrate.engine.names import QualifiedName

pytestmark = pytest.mark.integration

PARTITIONS = 128
ROWS = 100_000
KEYS = 2_000  # 2 % of the table: below the share where lookups are forced


class Explaining:
    """A real connection that EXPLAINs each UPDATE of the target just before running it (same transaction, same
    settings), so the plans are those of the statements really run."""

    def __init__(self, conn) -> None:
        self.conn = conn
        self.plans: list[str] = []

    def execute(self, query, params=None):
        text = query.as_string(self.conn) if isinstance(query, sql.Composable) else str(query)
        if text.startswith("UPDATE") and '"public"."events"' in text:
            self.plans.append("\n".join(r[0] for r in self.conn.execute(sql.SQL("EXPLAIN ") + sql.SQL(text), params)))
        return self.conn.execute(query, params)

    def cursor(self):
        return self.conn.cursor()


def _update_small_batch(env, partition_column: str) -> str:
    """Partition the destination table by ``partition_column``, update 2 % of its rows through the applier (the
    source's key is ``id``) and return the plan of the UPDATE."""
    env.dst("CREATE TABLE public.events (id int NOT NULL, bucket int NOT NULL, v int, PRIMARY KEY (id, bucket)) "
            f"PARTITION BY HASH ({partition_column});"
            + "".join(f"CREATE TABLE public.events_{i} PARTITION OF public.events "
                      f"FOR VALUES WITH (MODULUS {PARTITIONS}, REMAINDER {i});" for i in range(PARTITIONS))
            + f"INSERT INTO public.events SELECT g, g % 1000, 0 FROM generate_series(1, {ROWS}) g;"
            "ANALYZE public.events")
    name = QualifiedName("public", "events")
    # The source table is plain, keyed by id alone; the destination's key holds the partition column too.
    target = TableTarget(source=name, target=name, columns=[(0, "id"), (1, "bucket"), (2, "v")], key=[0],
                         key_names=["id"], upsert=False, row_filter=None)
    batch = Batch()
    for i in range(KEYS):
        key = 1 + i * (ROWS // KEYS)
        batch.add(1, target, Change("U", 1, [str(key).encode(), str(key % 1000).encode(), b"7"], None), 10)
    with connect(env.destination_info(), autocommit=False) as conn:
        conn.execute("SET session_replication_role = replica")
        explaining = Explaining(conn)
        Applier(explaining, count_rows=True).apply(batch)  # type: ignore[arg-type]
        conn.commit()
    assert env.dst("SELECT count(*) FROM public.events WHERE v = 7") == [(KEYS,)]
    [plan] = explaining.plans
    return plan


def test_small_batch_into_a_partitioned_target_does_not_probe_every_partition_per_key(migration_env):
    plan = _update_small_batch(migration_env, "bucket")
    probes = plan.count("Index Cond")
    assert not ("Nested Loop" in plan and probes >= PARTITIONS), \
        f"each of {KEYS} staged keys is looked up in all {probes} partitions:\n{plan[:1500]}"


def test_small_batch_into_a_target_partitioned_by_its_key_is_planned_as_lookups(migration_env):
    plan = _update_small_batch(migration_env, "id")
    assert "Hash Join" not in plan and "Merge Join" not in plan, plan
    assert "Index" in plan, plan
