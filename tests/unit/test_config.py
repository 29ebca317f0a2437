"""The migration config: defaults, loading (dict, YAML, load_config), every validation rule, names and row filters.

Pure unit tests: no server, no network; the only files are YAML files under ``tmp_path``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from airflow_pgmigrate.config import (
    CutoverSettings,
    Endpoint,
    MigrationConfig,
    NameMapping,
    ObjectSelection,
    RdsSettings,
    load_config,
    parse_size,
)
from airflow_pgmigrate.engine.names import NameMapper, QualifiedName, is_selected, parse_qualified_name
from airflow_pgmigrate.engine.precheck import CHECK_NAMES
from airflow_pgmigrate.engine.sqlfilter import normalize_row_filter
from airflow_pgmigrate.exceptions import ConfigError

MINIMAL: dict[str, Any] = {
    "name": "shop",
    "source": {"conn_id": "src"},
    "destination": {"conn_id": "dst"},
}

FULL: dict[str, Any] = {
    "name": "shop_to_new",
    "source": {"conn_id": "rds_shop", "database": "shop"},
    "destination": {"conn_id": "new_shop", "database": "shop"},
    "migration_types": ["schema", "full", "incremental"],
    "objects": {
        "schemas": ["sales"],
        "tables": ["public.orders", '"my.schema".items'],
        "include": ["public.log_*"],
        "exclude": ["*.tmp_*"],
        "columns": {"public.orders": ["id", "amount", "created_at"]},
    },
    "mapping": {
        "schemas": {"sales": "sales_v2"},
        "tables": {"public.orders": "orders_v2"},
        "columns": {"public.orders": {"amount": "total"}},
        "name_case": "lower",
    },
    "filters": {"public.orders": "created_at >= '2024-01-01' and amount > 0"},
    "conflicting_tables": "ignore",
    "throttling": {
        "full_load": {"queries_per_second": 500, "rows_per_second": 50000, "mb_per_second": 40},
        "incremental": {"rows_per_second": 10000, "mb_per_second": 8.5},
    },
    "retry": {"connection_failures_minutes": 120, "other_errors_minutes": 30},
    "full_load": {"parallel_jobs": 8, "split_tables_larger_than": "512MB"},
    "incremental": {"slot_prefix": "mig_", "max_lag_seconds": 2, "max_lag_bytes": "4MB"},
    "cutover": {"approval": "automatic", "freeze_source": True, "sequence_offset": 1000,
                "allow_differences": False},
    "precheck": {"skip": ["destination_space", "extensions"], "long_transaction_seconds": 60,
                 "fail_on_warning": True},
    "rds": {
        "db_instance_identifier": "shop-prod-1",
        "aws_conn_id": "aws_default",
        "region": "eu-central-1",
        "worker_cidrs": ["203.0.113.0/24", "198.51.100.7/32"],
        "manage_security_group": True,
        "connect_over_internet": False,
    },
    "state_schema": "pgmigrate_state",
}

FULL_YAML = """\
name: shop_to_new
source:
  conn_id: rds_shop
  database: shop
destination:
  conn_id: new_shop
  database: shop
migration_types: [schema, full, incremental]
objects:
  schemas: [sales]
  tables: [public.orders, '"my.schema".items']
  include: ["public.log_*"]
  exclude: ["*.tmp_*"]
  columns:
    public.orders: [id, amount, created_at]
mapping:
  schemas: {sales: sales_v2}
  tables: {public.orders: orders_v2}
  columns:
    public.orders: {amount: total}
  name_case: lower
filters:
  public.orders: "created_at >= '2024-01-01' and amount > 0"
conflicting_tables: ignore
throttling:
  full_load: {queries_per_second: 500, rows_per_second: 50000, mb_per_second: 40}
  incremental: {rows_per_second: 10000, mb_per_second: 8.5}
retry:
  connection_failures_minutes: 120
  other_errors_minutes: 30
full_load:
  parallel_jobs: 8
  split_tables_larger_than: 512MB
incremental:
  slot_prefix: mig_
  max_lag_seconds: 2
  max_lag_bytes: 4MB
cutover:
  approval: automatic
  freeze_source: true
  sequence_offset: 1000
  allow_differences: false
precheck:
  skip: [destination_space, extensions]
  long_transaction_seconds: 60
  fail_on_warning: true
rds:
  db_instance_identifier: shop-prod-1
  aws_conn_id: aws_default
  region: eu-central-1
  worker_cidrs: [203.0.113.0/24, 198.51.100.7/32]
  manage_security_group: true
  connect_over_internet: false
state_schema: pgmigrate_state
"""


def _with(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A deep copy of ``base`` with dotted-path changes applied; the value ``...`` deletes the key."""
    data = copy.deepcopy(base)
    for dotted, value in changes.items():
        *parents, leaf = dotted.split("__")
        node = data
        for part in parents:
            node = node.setdefault(part, {})
        if value is ...:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return data


def _error(data: Any) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        MigrationConfig.from_dict(data)
    return info.value


# -- valid configs ---------------------------------------------------------------------------------------------


def test_minimal_config_gets_the_documented_defaults() -> None:
    config = MigrationConfig.from_dict(MINIMAL)
    assert config.name == "shop"
    assert config.source == Endpoint(conn_id="src")
    assert config.destination == Endpoint(conn_id="dst")
    assert config.migration_types == ["schema", "full", "incremental"]
    assert all(config.wants(t) for t in ("schema", "full", "incremental"))
    assert config.conflicting_tables == "error"
    assert config.retry.connection_failures_minutes == 720
    assert config.retry.other_errors_minutes == 10
    assert config.slot_name == "pgmigrate_shop"
    assert config.publication_name == "pgmigrate_shop"
    assert config.dag_id == "pgmigrate_shop"
    assert config.objects.selects_everything
    assert config.mapping.name_case == "keep"
    assert config.filters == {}
    assert config.full_load.parallel_jobs == 4
    assert config.full_load.split_bytes is None  # auto
    assert config.incremental.max_lag_seconds == 5.0
    assert config.incremental.ddl == "stop"
    assert config.cutover == CutoverSettings()
    assert config.cutover.approval == "manual"
    assert config.precheck.skip == []
    assert config.precheck.long_transaction_seconds == 300
    assert config.rds is None
    assert config.state_schema == "pgmigrate"
    assert config.throttling.full_load.rows_per_second is None
    assert config.throttling.incremental.mb_per_second is None


def test_full_config_from_dict() -> None:
    config = MigrationConfig.from_dict(FULL)
    assert config.source.database == "shop"
    assert config.conflicting_tables == "ignore"
    assert config.objects.tables == ["public.orders", '"my.schema".items']
    assert config.mapping.name_case == "lower"
    assert config.throttling.full_load.queries_per_second == 500.0
    assert isinstance(config.throttling.full_load.queries_per_second, float)
    assert config.throttling.incremental.mb_per_second == 8.5
    assert config.retry.connection_failures_minutes == 120
    assert config.full_load.split_bytes == 512 * 1024**2
    assert config.incremental.max_lag_seconds == 2.0
    assert config.slot_name == "mig_shop_to_new"
    assert config.dag_id == "pgmigrate_shop_to_new"
    assert config.cutover.freeze_source is True
    assert config.precheck.skip == ["destination_space", "extensions"]
    assert config.rds == RdsSettings(
        db_instance_identifier="shop-prod-1", aws_conn_id="aws_default", region="eu-central-1",
        worker_cidrs=["203.0.113.0/24", "198.51.100.7/32"], manage_security_group=True,
        connect_over_internet=False)
    assert config.state_schema == "pgmigrate_state"
    assert config.row_filter(QualifiedName("public", "orders")) == "created_at >= '2024-01-01' AND amount > 0"
    assert config.row_filter(QualifiedName("public", "items")) is None


def test_full_config_from_yaml_equals_the_dict(tmp_path: Path) -> None:
    path = tmp_path / "shop.yaml"
    path.write_text(FULL_YAML, encoding="utf-8")
    assert MigrationConfig.from_yaml(path) == MigrationConfig.from_dict(FULL)
    assert MigrationConfig.from_yaml(str(path)) == MigrationConfig.from_dict(FULL)


@pytest.mark.parametrize("data", [MINIMAL, FULL], ids=["minimal", "full"])
def test_to_dict_round_trips(data: dict[str, Any]) -> None:
    config = MigrationConfig.from_dict(data)
    plain = config.to_dict()
    assert isinstance(plain, dict) and isinstance(plain["source"], dict)
    assert MigrationConfig.from_dict(plain) == config
    assert MigrationConfig.from_dict(plain).to_dict() == plain


def test_shipped_example_yaml_is_valid() -> None:
    path = Path(__file__).resolve().parents[2] / "dags" / "migrations" / "example.yaml"
    config = MigrationConfig.from_yaml(path)
    assert config.name == "example_shop"
    assert config.slot_name == "pgmigrate_example_shop"


def test_same_connection_with_another_database_is_allowed() -> None:
    config = MigrationConfig.from_dict(_with(MINIMAL, destination={"conn_id": "src", "database": "copy"}))
    assert config.destination == Endpoint(conn_id="src", database="copy")


def test_name_of_63_bytes_with_prefix_is_allowed() -> None:
    name = "a" * (63 - len("pgmigrate_"))
    assert len(MigrationConfig.from_dict(_with(MINIMAL, name=name)).slot_name) == 63


def test_building_in_python_validates_too() -> None:
    with pytest.raises(ConfigError) as info:
        RdsSettings(db_instance_identifier="db-1", manage_security_group=True)
    assert info.value.fields == ["manage_security_group"]
    config = MigrationConfig(name="py", source=Endpoint("a"), destination=Endpoint("b"))
    assert config.slot_name == "pgmigrate_py"


# -- malformed configs: one case per rule ------------------------------------------------------------------------

_BAD: list[tuple[str, dict[str, Any], str]] = [
    ("missing name", _with(MINIMAL, name=...), "name"),
    ("name upper case", _with(MINIMAL, name="Shop"), "name"),
    ("name with space", _with(MINIMAL, name="my shop"), "name"),
    ("name with semicolon", _with(MINIMAL, name="shop;drop"), "name"),
    ("name starts with digit", _with(MINIMAL, name="1shop"), "name"),
    ("name not a string", _with(MINIMAL, name=12), "name"),
    ("name too long for slot", _with(MINIMAL, name="a" * 54), "name"),
    ("name too long with custom prefix", _with(MINIMAL, name="a" * 30, incremental={"slot_prefix": "p" * 34}),
     "name"),
    ("missing source", _with(MINIMAL, source=...), "source"),
    ("missing destination conn_id", _with(MINIMAL, destination={"database": "x"}), "destination.conn_id"),
    ("empty source conn_id", _with(MINIMAL, source={"conn_id": "  "}), "source.conn_id"),
    ("source not a mapping", _with(MINIMAL, source="src"), "source"),
    ("same connection as source", _with(MINIMAL, destination={"conn_id": "src"}), "destination.conn_id"),
    ("unknown top-level field", _with(MINIMAL, migration_type=["full"]), "migration_type"),
    ("unknown nested field", _with(MINIMAL, objects={"tabels": ["public.orders"]}), "objects.tabels"),
    ("string where list expected", _with(MINIMAL, migration_types="full"), "migration_types"),
    ("invalid migration type", _with(MINIMAL, migration_types=["schema", "fulll"]), "migration_types[1]"),
    ("empty migration types", _with(MINIMAL, migration_types=[]), "migration_types"),
    ("duplicate migration type", _with(MINIMAL, migration_types=["full", "full"]), "migration_types"),
    ("conflicting_tables unknown", _with(MINIMAL, conflicting_tables="overwrite"), "conflicting_tables"),
    ("negative throttle", _with(MINIMAL, throttling={"full_load": {"rows_per_second": -5}}),
     "throttling.full_load.rows_per_second"),
    ("zero incremental throttle", _with(MINIMAL, throttling={"incremental": {"mb_per_second": 0}}),
     "throttling.incremental.mb_per_second"),
    ("retry other >= connection (both given)",
     _with(MINIMAL, retry={"connection_failures_minutes": 30, "other_errors_minutes": 30}),
     "retry.other_errors_minutes"),
    ("retry other >= default connection", _with(MINIMAL, retry={"other_errors_minutes": 800}),
     "retry.other_errors_minutes"),
    ("retry connection below default other", _with(MINIMAL, retry={"connection_failures_minutes": 10,
                                                                   "other_errors_minutes": 10}),
     "retry.other_errors_minutes"),
    ("retry connection zero", _with(MINIMAL, retry={"connection_failures_minutes": 0,
                                                    "other_errors_minutes": 0.5}),
     "retry.connection_failures_minutes"),
    ("retry connection above 1440", _with(MINIMAL, retry={"connection_failures_minutes": 2000}),
     "retry.connection_failures_minutes"),
    ("bool where int expected", _with(MINIMAL, retry={"connection_failures_minutes": True}),
     "retry.connection_failures_minutes"),
    ("bool for parallel jobs", _with(MINIMAL, full_load={"parallel_jobs": False}), "full_load.parallel_jobs"),
    ("parallel jobs out of range", _with(MINIMAL, full_load={"parallel_jobs": 0}), "full_load.parallel_jobs"),
    ("string where bool expected", _with(MINIMAL, cutover={"freeze_source": "yes"}), "cutover.freeze_source"),
    ("filter key without schema", _with(MINIMAL, filters={"orders": "id > 1"}), "filters['orders']"),
    ("mapping table key without schema", _with(MINIMAL, mapping={"tables": {"orders": "orders_v2"}}),
     "mapping.tables['orders']"),
    ("mapping column key without schema", _with(MINIMAL, mapping={"columns": {"orders": {"a": "b"}}}),
     "mapping.columns['orders']"),
    ("selected table without schema", _with(MINIMAL, objects={"tables": ["public.orders", "orders"]}),
     "objects.tables[1]"),
    ("table key with three parts", _with(MINIMAL, filters={"a.b.c": "id > 1"}), "filters['a.b.c']"),
    ("include pattern without schema", _with(MINIMAL, objects={"exclude": ["tmp_*"]}), "objects.exclude[0]"),
    ("exclude_data pattern without schema", _with(MINIMAL, objects={"exclude_data": ["audit"]}),
     "objects.exclude_data[0]"),
    ("filter that is not SQL", _with(MINIMAL, filters={"public.orders": "only the big ones"}),
     "filters['public.orders']"),
    ("empty filter", _with(MINIMAL, filters={"public.orders": "  "}), "filters['public.orders']"),
    ("filter injecting a statement", _with(MINIMAL, filters={"public.orders": "1=1; DROP TABLE x"}),
     "filters['public.orders']"),
    ("filter injecting a union", _with(MINIMAL, filters={"public.orders": "1=1) UNION (SELECT 1"}),
     "filters['public.orders']"),
    ("filter with a subquery", _with(MINIMAL, filters={"public.orders": "id IN (SELECT id FROM secrets)"}),
     "filters['public.orders']"),
    ("filter with EXISTS", _with(MINIMAL, filters={"public.orders": "EXISTS (SELECT 1)"}),
     "filters['public.orders']"),
    ("filter calling pg_sleep", _with(MINIMAL, filters={"public.orders": "pg_sleep(1) IS NOT NULL"}),
     "filters['public.orders']"),
    ("filter calling set_config", _with(MINIMAL, filters={"public.orders": "set_config('a.b', 'c', false) = 'c'"}),
     "filters['public.orders']"),
    ("two tables mapped to one name",
     _with(MINIMAL, mapping={"tables": {"public.a": "t", "public.b": "t"}}), "mapping.tables['public.b']"),
    ("two tables mapped to one name across a schema rename",
     _with(MINIMAL, mapping={"schemas": {"sales": "public"}, "tables": {"public.a": "t", "sales.b": "t"}}),
     "mapping.tables['sales.b']"),
    ("two columns mapped to one name",
     _with(MINIMAL, mapping={"columns": {"public.orders": {"a": "x", "b": "x"}}}),
     "mapping.columns['public.orders']['b']"),
    ("name_case unknown", _with(MINIMAL, mapping={"name_case": "title"}), "mapping.name_case"),
    ("destination name too long", _with(MINIMAL, mapping={"tables": {"public.a": "t" * 64}}),
     "mapping.tables['public.a']"),
    ("column listed twice", _with(MINIMAL, objects={"columns": {"public.orders": ["id", "id"]}}),
     "objects.columns['public.orders']"),
    ("empty column list", _with(MINIMAL, objects={"columns": {"public.orders": []}}),
     "objects.columns['public.orders']"),
    ("bad CIDR", _with(MINIMAL, rds={"db_instance_identifier": "db-1", "worker_cidrs": ["10.0.0.300/24"]}),
     "rds.worker_cidrs[0]"),
    ("CIDR with host bits", _with(MINIMAL, rds={"db_instance_identifier": "db-1",
                                                "worker_cidrs": ["10.0.0.0/8", "10.0.0.1/24"]}),
     "rds.worker_cidrs[1]"),
    ("manage_security_group without worker_cidrs",
     _with(MINIMAL, rds={"db_instance_identifier": "db-1", "manage_security_group": True}),
     "rds.manage_security_group"),
    ("rds without instance identifier", _with(MINIMAL, rds={"region": "us-east-1"}), "rds.db_instance_identifier"),
    ("bad rds instance identifier", _with(MINIMAL, rds={"db_instance_identifier": "db_1"}),
     "rds.db_instance_identifier"),
    ("bad rds region", _with(MINIMAL, rds={"db_instance_identifier": "db-1", "region": "Frankfurt"}), "rds.region"),
    ("unknown precheck skip name", _with(MINIMAL, precheck={"skip": ["wal_levle"]}), "precheck.skip[0]"),
    ("long transaction seconds below 1", _with(MINIMAL, precheck={"long_transaction_seconds": 0}),
     "precheck.long_transaction_seconds"),
    ("bad size string", _with(MINIMAL, full_load={"split_tables_larger_than": "huge"}),
     "full_load.split_tables_larger_than"),
    ("split size below 1MB", _with(MINIMAL, full_load={"split_tables_larger_than": "10KB"}),
     "full_load.split_tables_larger_than"),
    ("bad lag size", _with(MINIMAL, incremental={"max_lag_bytes": "lots"}), "incremental.max_lag_bytes"),
    ("size with a bare binary suffix", _with(MINIMAL, incremental={"max_lag_bytes": "16iB"}),
     "incremental.max_lag_bytes"),
    ("non-positive lag seconds", _with(MINIMAL, incremental={"max_lag_seconds": 0}), "incremental.max_lag_seconds"),
    ("slot prefix with upper case", _with(MINIMAL, incremental={"slot_prefix": "PG-"}), "incremental.slot_prefix"),
    ("negative sequence offset", _with(MINIMAL, cutover={"sequence_offset": -1}), "cutover.sequence_offset"),
    ("sequence offset beyond bigint", _with(MINIMAL, cutover={"sequence_offset": 2**63}), "cutover.sequence_offset"),
    ("NaN lag seconds", _with(MINIMAL, incremental={"max_lag_seconds": float("nan")}), "incremental.max_lag_seconds"),
    ("infinite lag seconds", _with(MINIMAL, incremental={"max_lag_seconds": float("inf")}),
     "incremental.max_lag_seconds"),
    ("NaN throttle", _with(MINIMAL, throttling={"full_load": {"mb_per_second": float("nan")}}),
     "throttling.full_load.mb_per_second"),
    ("infinite retry window", _with(MINIMAL, retry={"other_errors_minutes": float("-inf")}),
     "retry.other_errors_minutes"),
    ("approval unknown", _with(MINIMAL, cutover={"approval": "auto"}), "cutover.approval"),
    ("section given as a list", _with(MINIMAL, objects=["public.orders"]), "objects"),
    ("state schema too long", _with(MINIMAL, state_schema="s" * 64), "state_schema"),
    ("ddl mode unknown", _with(MINIMAL, incremental={"ddl": "apply"}), "incremental.ddl"),
    ("ddl replicated through a publication of someone else's",
     _with(MINIMAL, incremental={"ddl": "replicate", "publication": "their_pub"}), "incremental.ddl"),
]


@pytest.mark.parametrize(("data", "field"), [(d, f) for _, d, f in _BAD], ids=[i for i, _, _ in _BAD])
def test_malformed_config_is_reported_with_field_and_fix(data: dict[str, Any], field: str) -> None:
    error = _error(data)
    assert field in error.fields, str(error)
    problem = next(p for p in error.problems if p.field == field)
    assert problem.message.strip()
    assert problem.fix.strip()
    assert field in str(error)


@pytest.mark.parametrize(("data", "field", "hint"), [
    (_with(MINIMAL, migration_type=["full"]), "migration_type", "migration_types"),
    (_with(MINIMAL, objects={"tabels": []}), "objects.tabels", "'tables'"),
    (_with(MINIMAL, migration_types=["fulll"]), "migration_types[0]", "'full'"),
    (_with(MINIMAL, conflicting_tables="ignored"), "conflicting_tables", "'ignore'"),
    (_with(MINIMAL, precheck={"skip": ["wal_levle"]}), "precheck.skip[0]", "'wal_level'"),
    (_with(MINIMAL, precheck={"skip": ["zzz"]}), "precheck.skip[0]", "source_connection"),
], ids=["top-level field", "nested field", "migration type", "conflict mode", "precheck item", "no close match"])
def test_misspelling_gets_a_hint(data: dict[str, Any], field: str, hint: str) -> None:
    error = _error(data)
    (problem,) = [p for p in error.problems if p.field == field]
    assert hint in problem.fix


def test_every_precheck_item_but_the_connections_can_be_skipped() -> None:
    names = [n for n in CHECK_NAMES if not n.endswith("_connection")]
    config = MigrationConfig.from_dict(_with(MINIMAL, precheck={"skip": names}))
    assert config.precheck.skip == names


def test_all_mistakes_are_reported_at_once() -> None:
    data = {
        "name": "Bad Name",
        "source": {"conn_id": "src"},
        "destination": {"conn_id": "dst"},
        "migration_types": ["fulll"],
        "objects": {"tabels": ["public.orders"]},
        "filters": {"orders": "id > 1", "public.items": "1=1; DROP TABLE x"},
        "conflicting_tables": "overwrite",
        "retry": {"other_errors_minutes": 800},
        "full_load": {"parallel_jobs": True},
        "rds": {"db_instance_identifier": "db-1", "worker_cidrs": ["nonsense"]},
        "precheck": {"skip": ["wal_levle"]},
        "extra_field": 1,
    }
    error = _error(data)
    expected = {
        "name", "migration_types[0]", "objects.tabels", "filters['orders']", "filters['public.items']",
        "conflicting_tables", "retry.other_errors_minutes", "full_load.parallel_jobs", "rds.worker_cidrs[0]",
        "precheck.skip[0]", "extra_field",
    }
    assert expected <= set(error.fields)
    assert len(set(error.fields)) >= 4
    assert all(p.fix for p in error.problems)
    assert f"({len(error.problems)} problem(s))" in str(error)


def test_a_config_that_is_not_a_mapping() -> None:
    error = _error(["name", "shop"])
    assert error.fields == ["(config)"]
    assert error.problems[0].fix


# -- YAML files and load_config ----------------------------------------------------------------------------------


def test_yaml_unreadable_path(tmp_path: Path) -> None:
    path = tmp_path / "missing.yaml"
    with pytest.raises(ConfigError) as info:
        MigrationConfig.from_yaml(path)
    assert info.value.fields == ["(file)"]
    assert "cannot read" in info.value.problems[0].message
    assert info.value.problems[0].fix
    assert info.value.source == str(path)


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("name: shop\nsource:\n  conn_id: src\ndestination: [dst\nmigration_types: [full]\n",
                    encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        MigrationConfig.from_yaml(path)
    (problem,) = info.value.problems
    assert problem.field == "(file)"
    assert "is not valid YAML at line" in problem.message
    assert problem.fix


def test_yaml_syntax_error_line_number(tmp_path: Path) -> None:
    path = tmp_path / "tab.yaml"
    path.write_text("name: shop\nsource:\n\tconn_id: src\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        MigrationConfig.from_yaml(path)
    assert "line 3" in info.value.problems[0].message


@pytest.mark.parametrize("text", ["- name: shop\n- source: x\n", "", "just a string\n"],
                         ids=["list", "empty", "scalar"])
def test_yaml_that_is_not_a_mapping(tmp_path: Path, text: str) -> None:
    path = tmp_path / "odd.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        MigrationConfig.from_yaml(path)
    assert info.value.fields == ["(file)"]
    assert "mapping" in info.value.problems[0].message
    assert info.value.problems[0].fix


def test_yaml_validation_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: shop\nsource: {conn_id: src}\ndestination: {conn_id: dst}\nconflicting_tables: no\n",
                    encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        MigrationConfig.from_yaml(path)
    assert info.value.fields == ["conflicting_tables"]
    assert info.value.source == str(path)
    assert str(path) in str(info.value)


def test_load_config_accepts_config_dict_and_path(tmp_path: Path) -> None:
    config = MigrationConfig.from_dict(FULL)
    assert load_config(config) is config
    assert load_config(FULL) == config
    path = tmp_path / "shop.yml"
    path.write_text(FULL_YAML, encoding="utf-8")
    assert load_config(path) == config
    assert load_config(str(path)) == config
    assert load_config(f"  {path}\n".rstrip("\n")) == config


@pytest.mark.parametrize("value", [42, None, 3.5, ["name"]], ids=["int", "none", "float", "list"])
def test_load_config_rejects_other_types(value: Any) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(value)
    assert info.value.fields == ["config"]
    assert type(value).__name__ in info.value.problems[0].message
    assert info.value.problems[0].fix


def test_load_config_rejects_a_string_that_is_not_a_yaml_path() -> None:
    with pytest.raises(ConfigError) as info:
        load_config("name: shop\nsource: x\n")
    assert info.value.fields == ["config"]
    assert ".yaml" in info.value.problems[0].message


def test_load_config_dict_errors_are_config_errors() -> None:
    with pytest.raises(ConfigError) as info:
        load_config({"name": "shop"})
    assert set(info.value.fields) == {"source", "destination"}


# -- sizes ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "expected"), [
    (1048576, 1048576), ("512MB", 512 * 1024**2), ("10 GiB", 10 * 1024**3), ("1.5k", 1536), ("7", 7),
    ("2T", 2 * 1024**4), ("100b", 100),
])
def test_parse_size(value: Any, expected: int) -> None:
    assert parse_size(value) == expected


@pytest.mark.parametrize("value", [-1, True, "big", "10 XB", "", "10i", "10iB", "1.2.3MB"])
def test_parse_size_rejects(value: Any) -> None:
    with pytest.raises(ValueError):
        parse_size(value)


# -- names -------------------------------------------------------------------------------------------------------


def test_parse_qualified_name_plain() -> None:
    name = parse_qualified_name("public.orders")
    assert name == QualifiedName("public", "orders")
    assert name.key == "public.orders"
    assert str(name) == "public.orders"


def test_parse_qualified_name_is_case_sensitive() -> None:
    assert parse_qualified_name("Public.Orders") == QualifiedName("Public", "Orders")


def test_parse_qualified_name_quoted_parts() -> None:
    name = parse_qualified_name('"my.schema"."Or""ders"')
    assert name == QualifiedName("my.schema", 'Or"ders')
    assert str(name) == '"my.schema"."Or""ders"'
    assert parse_qualified_name(str(name)) == name
    assert parse_qualified_name('"my.schema".orders') == QualifiedName("my.schema", "orders")


@pytest.mark.parametrize(("text", "message"), [
    ("orders", "schema-qualified"),
    ("a.b.c", "schema-qualified"),
    ('"unterminated.x', "unterminated quote"),
    ("public.", "empty"),
    (".orders", "empty"),
    ('pu"blic.orders', "quote inside"),
    ('"public"x.orders', "expected a dot"),
])
def test_parse_qualified_name_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_qualified_name(text)


def test_is_selected_nothing_listed_selects_all() -> None:
    selection = ObjectSelection()
    assert is_selected(QualifiedName("public", "orders"), selection)
    assert is_selected(QualifiedName("sales", "x"), selection)


def test_is_selected_schemas_tables_include_exclude() -> None:
    selection = ObjectSelection(schemas=["sales"], tables=["public.orders", '"my.schema".items'],
                                include=["public.log_*"], exclude=["sales.tmp_*", "*.Secret"])
    sel = lambda s, t: is_selected(QualifiedName(s, t), selection)  # noqa: E731
    assert sel("sales", "invoices")
    assert sel("public", "orders")
    assert sel("my.schema", "items")
    assert sel("public", "log_2024")
    assert not sel("public", "customers")
    assert not sel("public", "Orders")  # exact, case-sensitive
    assert not sel("sales", "tmp_x")  # exclude wins over the schema
    assert not sel("public", "Secret")
    assert sel("public", "secret") is False  # not listed at all
    assert not sel("Sales", "invoices")


def test_is_selected_exclude_wins_over_explicit_table() -> None:
    selection = ObjectSelection(tables=["public.orders"], exclude=["public.orders"])
    assert not is_selected(QualifiedName("public", "orders"), selection)


def test_is_selected_exclude_only_selects_the_rest() -> None:
    selection = ObjectSelection(exclude=["public.tmp_*"])
    assert selection.selects_everything
    assert is_selected(QualifiedName("public", "orders"), selection)
    assert not is_selected(QualifiedName("public", "tmp_1"), selection)


def test_name_mapper_keep() -> None:
    mapper = NameMapper(NameMapping(schemas={"sales": "sales_v2"}, tables={"public.orders": "orders_v2"},
                                    columns={"public.orders": {"amount": "total"}}))
    assert mapper.schema("sales") == "sales_v2"
    assert mapper.schema("Other") == "Other"
    assert mapper.table(QualifiedName("public", "orders")) == QualifiedName("public", "orders_v2")
    assert mapper.table(QualifiedName("sales", "Invoices")) == QualifiedName("sales_v2", "Invoices")
    assert mapper.column(QualifiedName("public", "orders"), "amount") == "total"
    assert mapper.column(QualifiedName("public", "orders"), "Note") == "Note"
    assert mapper.column(QualifiedName("public", "items"), "amount") == "amount"


def test_name_mapper_renamed_table_keeps_its_mapped_schema() -> None:
    mapper = NameMapper(NameMapping(schemas={"public": "app"}, tables={"public.orders": "orders_v2"}))
    assert mapper.table(QualifiedName("public", "orders")) == QualifiedName("app", "orders_v2")


@pytest.mark.parametrize(("case", "convert"), [("lower", str.lower), ("upper", str.upper)])
def test_name_mapper_case_applies_only_to_unmapped_names(case: str, convert: Any) -> None:
    mapper = NameMapper(NameMapping(schemas={"Public": "App"}, tables={"Public.Orders": "Orders_V2"},
                                    columns={"Public.Orders": {"Amount": "Total"}}, name_case=case))
    orders = QualifiedName("Public", "Orders")
    assert mapper.schema("Public") == "App"  # explicit: verbatim
    assert mapper.schema("Sales") == convert("Sales")
    assert mapper.table(orders) == QualifiedName("App", "Orders_V2")
    assert mapper.table(QualifiedName("Public", "Items")) == QualifiedName("App", convert("Items"))
    assert mapper.table(QualifiedName("Sales", "Items")) == QualifiedName(convert("Sales"), convert("Items"))
    assert mapper.column(orders, "Amount") == "Total"
    assert mapper.column(orders, "CreatedAt") == convert("CreatedAt")


# -- row filters ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("condition", "expected"), [
    ("a>1 and b='x'", "a > 1 AND b = 'x'"),
    ("created_at >= '2024-01-01'", "created_at >= '2024-01-01'"),
    ("status in ('a','b') or deleted is null", "status IN ('a', 'b') OR deleted IS NULL"),
    ("lower(email) like '%@example.com' -- trailing comment", "lower(email) LIKE '%@example.com'"),
])
def test_normalize_row_filter(condition: str, expected: str) -> None:
    assert normalize_row_filter(condition) == expected
    assert normalize_row_filter(expected) == expected


@pytest.mark.parametrize(("condition", "message"), [
    ("", "empty"),
    ("1=1; DROP TABLE x", "more than one SQL statement"),
    ("1=1) UNION (SELECT 1", "not a valid SQL condition"),
    ("id IN (SELECT id FROM t)", "subqueries"),
    ("pg_sleep(1) IS NULL", "pg_sleep"),
    ("pg_catalog.pg_terminate_backend(1)", "not allowed"),
    ("nextval('s') > 0", "nextval"),
    ("a >", "not a valid SQL condition"),
    ("true GROUP BY 1", "single condition"),
    ("true ORDER BY 1", "single condition"),
    ("true LIMIT 1", "single condition"),
])
def test_normalize_row_filter_rejects(condition: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        normalize_row_filter(condition)


def test_connection_items_cannot_be_skipped() -> None:
    with pytest.raises(ConfigError) as info:
        MigrationConfig.from_dict(_with(MINIMAL, precheck={"skip": ["c_functions", "source_connection"]}))
    assert info.value.fields == ["precheck.skip[1]"]
    assert "cannot be skipped" in info.value.problems[0].message


def test_schema_settings_for_excluded_objects() -> None:
    config = MigrationConfig.from_dict(_with(MINIMAL, schema_migration={
        "foreign_keys_to_excluded": "skip", "exclude_indexes": ["sales.orders_*", "*.tmp_idx"]}))
    assert config.schema_migration.foreign_keys_to_excluded == "skip"
    assert config.schema_migration.exclude_indexes == ["sales.orders_*", "*.tmp_idx"]
    assert MigrationConfig.from_dict(MINIMAL).schema_migration.foreign_keys_to_excluded == "error"
    message = str(_error(_with(MINIMAL, schema_migration={"foreign_keys_to_excluded": "drop"})))
    assert "schema_migration.foreign_keys_to_excluded" in message and "'drop' is not allowed" in message
    message = str(_error(_with(MINIMAL, schema_migration={"exclude_indexes": ["orders_idx"]})))
    assert "exclude_indexes[0]" in message and "has no schema part" in message


def test_nan_in_yaml_is_an_error_naming_the_field(tmp_path: Path) -> None:
    path = tmp_path / "nan.yaml"
    path.write_text("name: shop\nsource: {conn_id: src}\ndestination: {conn_id: dst}\n"
                    "incremental:\n  max_lag_seconds: .nan\n")
    with pytest.raises(ConfigError) as info:
        MigrationConfig.from_yaml(path)
    assert "incremental.max_lag_seconds" in info.value.fields
