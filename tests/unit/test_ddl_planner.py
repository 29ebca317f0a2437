"""The DDL planner without a server: which statement of a recorded text a record is, what the destination runs, what
is left alone and what stops the sync (the records are built here as the capture writes them)."""

from __future__ import annotations

from typing import Any

import pytest

from airflow_pgmigrate.config import MigrationConfig
from airflow_pgmigrate.engine.incremental.ddl import DdlPlanner, DdlRecord, DdlStop, split_search_path
from airflow_pgmigrate.engine.incremental.ddl_defaults import SourceTime
from airflow_pgmigrate.engine.names import QualifiedName


def planner(**overrides: Any) -> tuple[DdlPlanner, list[str]]:
    data = {"name": "m", "source": {"conn_id": "s"}, "destination": {"conn_id": "d"},
            "objects": {"schemas": ["app"]}, "incremental": {"ddl": "replicate"}, **overrides}
    lines: list[str] = []
    config = MigrationConfig.from_dict(data)
    return DdlPlanner(config, lambda name: name.schema == "app", lambda name, path: "app", lines.append), lines


def record(query: str, tag: str, *, ordinal: int = 1, objects: list[dict[str, Any]] | None = None,
           time: SourceTime | None = None) -> DdlRecord:
    objects = objects if objects is not None else [{"type": "table", "schema": "app", "identity": "app.orders"}]
    return DdlRecord(7, ordinal, tag, query, ["app", "public"], objects, [], None, 0x1000, [], time)


def test_the_ordinal_picks_the_command_among_the_ddl_of_the_text():
    plan, _ = planner()
    text = "INSERT INTO app.orders VALUES (1); ALTER TABLE orders ADD COLUMN a int; ALTER TABLE orders ADD COLUMN b int"
    step = plan.plan(record(text, "ALTER TABLE", ordinal=2))
    assert step is not None and step.statements == ["ALTER TABLE orders ADD COLUMN b int"]
    assert step.search_path == '"app", "public"'


def test_a_case_policy_renames_every_name_of_the_statement():
    plan, _ = planner(mapping={"name_case": "upper"})
    step = plan.plan(record("ALTER TABLE orders ADD COLUMN note text, ALTER COLUMN qty TYPE bigint", "ALTER TABLE"))
    assert step is not None
    assert step.statements == ['ALTER TABLE "APP"."ORDERS" ADD COLUMN "NOTE" text, ALTER COLUMN "QTY" TYPE bigint']
    assert step.tables == {QualifiedName("APP", "ORDERS")}


def test_grants_and_other_schemas_are_left_alone_and_said():
    plan, lines = planner()
    assert plan.plan(record("GRANT SELECT ON app.orders TO reader", "GRANT")) is None
    other = [{"type": "table", "schema": "elsewhere", "identity": "elsewhere.t"}]
    assert plan.plan(record("ALTER TABLE elsewhere.t ADD COLUMN a int", "ALTER TABLE", objects=other)) is None
    assert len(lines) == 2 and all("left_alone=7" in line for line in lines)


def test_ddl_run_by_a_do_block_stops_with_the_fix():
    plan, _ = planner()
    with pytest.raises(DdlStop) as err:
        plan.plan(record("DO $$ BEGIN EXECUTE 'ALTER TABLE app.orders ADD COLUMN a int'; END $$", "ALTER TABLE"))
    message = str(err.value)
    assert "inside a function, procedure or DO block" in message
    assert "ddl_applied_by_hand" in message and "LSN 0/1000" in message


def test_a_table_the_capture_could_not_publish_stops_naming_it():
    plan, _ = planner()
    with pytest.raises(DdlStop, match=r"new table app\.fresh could not be added to publication pgmigrate_m"):
        plan.plan(record("permission denied for publication pgmigrate_m", "NOT PUBLISHED",
                         objects=[{"type": "table", "schema": "app", "identity": "app.fresh"}]))


def test_a_clock_default_is_added_with_the_source_s_time_then_set_back():
    plan, _ = planner()
    step = plan.plan(record("ALTER TABLE orders ADD COLUMN at timestamptz DEFAULT now()", "ALTER TABLE",
                            time=SourceTime("2026-12-05 13:00:00.5+00", "UTC")))
    assert step is not None
    assert step.statements == [
        "ALTER TABLE app.orders ADD COLUMN at timestamptz DEFAULT CAST('2026-12-05 13:00:00.5+00' AS timestamptz)",
        'ALTER TABLE app.orders ALTER COLUMN "at" SET DEFAULT now()',
    ]


def test_create_index_concurrently_is_built_inside_the_destination_transaction():
    plan, _ = planner()
    step = plan.plan(record("CREATE INDEX CONCURRENTLY orders_qty_idx ON orders (qty)", "CREATE INDEX",
                            objects=[{"type": "index", "schema": "app", "identity": "app.orders_qty_idx"}]))
    assert step is not None and step.may_exist
    assert step.statements == ["CREATE INDEX orders_qty_idx ON app.orders (qty)"]


def test_search_path_is_split_with_its_quoting():
    assert split_search_path('"$user", public, "My Schema", "a""b"') == ['"$user"', "public", "My Schema", 'a"b']
