"""A batch costs the batch, not the table: the set-based statements the applier runs for a small batch against a
large table are planned as index lookups driven by the staged keys, never as a scan of the whole target table."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg import sql

from airflow_pgmigrate.engine.connection import connect
from airflow_pgmigrate.engine.incremental.apply import Applier, Batch, TableTarget
from airflow_pgmigrate.engine.incremental.pgoutput import Change
from airflow_pgmigrate.engine.names import QualifiedName

pytestmark = pytest.mark.integration

TABLE_ROWS = 200_000
BATCH_KEYS = 4_000  # 2 % of the table: a hash or merge join would read all 200 k rows for 4 k of them


class ExplainingConnection:
    """A real destination connection that EXPLAINs each statement writing the target table just before running it,
    in the same transaction and with the same settings, so the plans are those of the statements really run."""

    def __init__(self, conn: psycopg.Connection, table: str) -> None:
        self.conn = conn
        self.table = table
        self.plans: list[tuple[str, str]] = []

    def execute(self, query: Any, params: Any = None) -> psycopg.Cursor:
        text = query.as_string(self.conn) if isinstance(query, sql.Composable) else str(query)
        if text.split()[0] in ("DELETE", "UPDATE", "INSERT") or text.startswith("SELECT count(*)"):
            if self.table in text:
                plan = "\n".join(r[0] for r in self.conn.execute(sql.SQL("EXPLAIN ") + sql.SQL(text), params))
                self.plans.append((text, plan))
        return self.conn.execute(query, params)

    def cursor(self) -> psycopg.Cursor:
        return self.conn.cursor()


def apply_explained(env: Any, batch: Batch, table: str) -> list[tuple[str, str]]:
    """Apply ``batch`` on the destination as incremental sync does (replica role, one transaction) and return each
    statement writing ``table`` (a quoted qualified name) with the plan it ran under."""
    with connect(env.destination_info(), autocommit=False) as conn:
        conn.execute("SET session_replication_role = replica")
        explaining = ExplainingConnection(conn, table)
        Applier(explaining, count_rows=True).apply(batch)  # type: ignore[arg-type]
        conn.commit()
    return explaining.plans


def _target(upsert: bool) -> TableTarget:
    name = QualifiedName("public", "big")
    return TableTarget(source=name, target=name, columns=[(0, "id"), (1, "v"), (2, "body")], key=[0],
                       key_names=["id"], upsert=upsert, row_filter="v >= 0" if upsert else None)


def _key(n: int) -> bytes:
    return str(n).encode()


def _assert_lookups(plans: list[tuple[str, str]], verbs: set[str]) -> None:
    assert {text.split()[0] for text, _ in plans} >= verbs, plans
    for text, plan in plans:
        assert "Seq Scan on big" not in plan and "Hash" not in plan and "Merge" not in plan, f"{text}\n{plan}"
        assert "Nested Loop" in plan and "Index Cond: (id = s.id)" in plan, f"{text}\n{plan}"


@pytest.fixture
def big_table(migration_env):
    env = migration_env
    env.dst(f"CREATE TABLE public.big (id int PRIMARY KEY, v int NOT NULL, body text);"
            f"INSERT INTO public.big SELECT g, 0, md5(g::text) FROM generate_series(1, {TABLE_ROWS}) g")
    return env


def test_small_batch_against_large_table_is_planned_as_index_lookups(big_table):
    env = big_table
    t = _target(upsert=False)
    batch = Batch()
    for i in range(BATCH_KEYS):  # spread over the whole table
        key = 1 + i * (TABLE_ROWS // BATCH_KEYS)
        batch.add(1, t, Change("D", 1, None, [_key(key), None, None], "K"), 10)
        batch.add(1, t, Change("U", 1, [_key(key + 1), b"7", b"updated"], None), 10)
        batch.add(1, t, Change("I", 1, [_key(TABLE_ROWS + 1 + i), b"1", b"new"], None), 10)
    plans = apply_explained(env, batch, '"public"."big"')
    _assert_lookups(plans, {"DELETE", "UPDATE"})
    assert env.dst("SELECT count(*), count(*) FILTER (WHERE v = 7), count(*) FILTER (WHERE v = 1) "
                   "FROM public.big") == [(TABLE_ROWS, BATCH_KEYS, BATCH_KEYS)]


def test_small_upsert_batch_against_large_table_is_planned_as_index_lookups(big_table):
    """Row filter or conflicting_tables: ignore: UPDATE ... FROM, INSERT ... WHERE NOT EXISTS (an anti-join) and the
    DELETE of rows that left the filter, each driven by the staged keys."""
    env = big_table
    t = _target(upsert=True)
    batch = Batch()
    for i in range(BATCH_KEYS):
        key = 1 + i * (TABLE_ROWS // BATCH_KEYS)
        batch.add(1, t, Change("U", 1, [_key(key), b"-1" if i % 2 else b"7", b"moved"], None), 10)
        batch.add(1, t, Change("I", 1, [_key(TABLE_ROWS + 1 + i), b"1", b"new"], None), 10)
    plans = apply_explained(env, batch, '"public"."big"')
    _assert_lookups(plans, {"DELETE", "UPDATE", "INSERT"})
    half = BATCH_KEYS // 2
    assert env.dst("SELECT count(*), count(*) FILTER (WHERE v = 7), count(*) FILTER (WHERE v = 1) "
                   "FROM public.big") == [(TABLE_ROWS - half + BATCH_KEYS, half, BATCH_KEYS)]


def test_join_strategy_follows_the_batch_size_against_the_table(big_table):
    """Lookups are forced only while the batch is small against its table: a batch that rewrites most of a small
    table gets the session's own planner settings back (there a hash join over the table is the cheaper plan)."""
    env = big_table
    env.dst("CREATE TABLE public.small (id int PRIMARY KEY, v int NOT NULL, body text);"
            "INSERT INTO public.small SELECT g, 0, 'x' FROM generate_series(1, 1000) g")
    big, small = _target(upsert=False), TableTarget(
        source=QualifiedName("public", "small"), target=QualifiedName("public", "small"),
        columns=[(0, "id"), (1, "v"), (2, "body")], key=[0], key_names=["id"], upsert=False, row_filter=None)
    with connect(env.destination_info(), autocommit=False) as conn:
        conn.execute("SET session_replication_role = replica")
        applier = Applier(conn, count_rows=True)
        settings = "SELECT current_setting('enable_hashjoin'), current_setting('enable_mergejoin')"
        for table, rows, expected in ((big, 100, ("off", "off")), (small, 800, ("on", "on")),
                                      (big, 100, ("off", "off"))):
            batch = Batch()
            for key in range(1, rows + 1):
                batch.add(1, table, Change("U", 1, [_key(key), b"2", b"y"], None), 10)
            applier.apply(batch)
            assert conn.execute(settings).fetchone() == expected, table.target
        conn.commit()
        assert conn.execute(settings).fetchone() == ("on", "on"), "the settings last only as long as the transaction"
    assert env.dst("SELECT count(*) FROM public.small WHERE v = 2") == [(800,)]


def test_no_forced_lookups_where_the_destination_has_no_index_on_the_key(big_table):
    """A destination table whose key has no index (dropped, or never built) would be scanned once per staged key by a
    forced nested loop: the planner stays free there."""
    env = big_table
    env.dst("ALTER TABLE public.big DROP CONSTRAINT big_pkey")
    t = _target(upsert=False)
    batch = Batch()
    for key in range(1, 2001):
        batch.add(1, t, Change("U", 1, [_key(key), b"2", b"y"], None), 10)
    plans = apply_explained(env, batch, '"public"."big"')
    [(_, plan)] = plans
    assert "Hash Join" in plan or "Merge Join" in plan, plan
    assert env.dst("SELECT count(*) FROM public.big WHERE v = 2") == [(2000,)]
