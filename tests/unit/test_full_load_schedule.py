"""The full load's choice of the next work: copy plus index chains first, split parts apart unless that chain waits."""

from __future__ import annotations

from airflow_pgmigrate.engine.full_load import Chunk, TablePlan, _largest_first, _next_chunk
from airflow_pgmigrate.engine.schema import TableBuild


def _plan(name: str, cost: float, parts: int, index_bytes: int = 0) -> TablePlan:
    plan = TablePlan(name, name, ["id"], ["id"], None, int(cost), 0, True, False, ["id"], cost=cost,
                     index_bytes=index_bytes)
    plan.chunks = [Chunk(f"{name}#{i}", name, i, parts) for i in range(1, parts + 1)]
    return plan


def test_a_split_table_whose_index_builds_wait_runs_its_parts_side_by_side():
    big = _plan("public.big", 3000.0, 3, index_bytes=1000)
    small = _plan("public.small", 400.0, 1, index_bytes=10)
    queue = _largest_first([(p, c) for p in (big, small) for c in p.chunks])
    assert queue[0][0] is big  # a part of big (1000 to copy, then 2000 of index builds) goes first
    first = _next_chunk(queue, {})
    # big is being written: its next part (1000 to copy) still goes before small (420 in all), so the index build
    # that waits for big's last part can start sooner.
    assert _next_chunk(queue, {big.target: 1})[0] is big
    assert first[0] is big


def test_parts_stay_apart_when_no_build_waits_or_the_other_work_is_as_long():
    big = _plan("public.big", 3000.0, 3)
    other = _plan("public.other", 400.0, 1)
    queue = _largest_first([(p, c) for p in (big, other) for c in p.chunks])
    assert _next_chunk(queue, {big.target: 1})[0] is other, "no index build waits for big: parts kept apart"

    big = _plan("public.big", 3000.0, 3, index_bytes=100)
    long = _plan("public.long", 1500.0, 1, index_bytes=10)
    queue = _largest_first([(p, c) for p in (big, long) for c in p.chunks])
    assert _next_chunk(queue, {big.target: 1})[0] is long, "other work as long as a part: parts kept apart"


def test_an_index_build_is_never_held_back_by_its_table():
    big = _plan("public.big", 3000.0, 1, index_bytes=1000)
    build = TableBuild("constraint public.big big_pkey", big.source_name, "ALTER TABLE ...")
    queue = [(big, build)]
    assert _next_chunk(queue, {big.target: 1}) == (big, build)
