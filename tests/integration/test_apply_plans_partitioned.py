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

from airflow_pgmigrate.engine.incremental.apply import Batch, TableTarget
from airflow_pgmigrate.engine.incremental.pgoutput import Change
from airflow_pgmigrate.engine.names import QualifiedName
from tests.integration.test_apply_plans import apply_explained

pytestmark = pytest.mark.integration

PARTITIONS = 128
ROWS = 100_000
KEYS = 2_000  # 2 % of the table: below the share where lookups are forced


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
    [(_, plan)] = apply_explained(env, batch, '"public"."events"')
    assert env.dst("SELECT count(*) FROM public.events WHERE v = 7") == [(KEYS,)]
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
