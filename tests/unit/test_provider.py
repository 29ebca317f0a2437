"""The provider registration: schema-valid provider info, importable modules, discovery by Airflow."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from importlib.metadata import distribution, entry_points
from pathlib import Path

import jsonschema

import airflow_pgmigrate
from airflow_pgmigrate.get_provider_info import get_provider_info

ROOT = Path(__file__).resolve().parents[2]


def test_package_name_matches_the_distribution():
    info = get_provider_info()
    assert info["package-name"] == "airflow-pgmigrate" == distribution("airflow-pgmigrate").metadata["Name"]
    assert info["versions"][0] == airflow_pgmigrate.__version__


def test_provider_info_is_valid_against_airflows_schema():
    import airflow

    schema_path = Path(airflow.__file__).parent / "provider_info.schema.json"
    schema = json.loads(schema_path.read_text())
    jsonschema.validate(get_provider_info(), schema)


def test_every_listed_module_imports():
    info = get_provider_info()
    modules = [m for kind in ("operators", "sensors", "hooks", "triggers") for group in info.get(kind, [])
               for m in group["python-modules"]]
    assert "airflow_pgmigrate.operators.precheck" in modules
    for module in modules:
        importlib.import_module(module)
    for path in info.get("extra-links", []):
        module, _, name = path.rpartition(".")
        assert getattr(importlib.import_module(module), name)


def test_entry_point_is_registered():
    (ep,) = [ep for ep in entry_points(group="apache_airflow_provider") if ep.dist.name == "airflow-pgmigrate"]
    assert ep.load() is get_provider_info


def test_package_init_imports_nothing_from_airflow():
    code = "import sys, airflow_pgmigrate; print(any(m == 'airflow' or m.startswith('airflow.') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"


def test_engine_does_not_import_airflow():
    for path in (ROOT / "airflow_pgmigrate" / "engine").glob("*.py"):
        text = path.read_text()
        assert "import airflow" not in text and "from airflow " not in text and "from airflow." not in text, path


def test_airflow_lists_the_provider(tmp_path):
    env = {"AIRFLOW_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-m", "airflow", "providers", "list", "-o", "json"], capture_output=True,
                            text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    providers = {p["package_name"]: p for p in json.loads(result.stdout[result.stdout.index("["):])}
    assert providers["airflow-pgmigrate"]["version"] == airflow_pgmigrate.__version__


def test_example_dags_parse_without_errors(monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.delenv("PGMIGRATE_CONFIG_FOLDER", raising=False)
    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert bag.import_errors == {}
    assert {"pgmigrate_example_shop", "pgmigrate_adhoc_precheck", "pgmigrate_adhoc"} <= set(bag.dag_ids)
    dag = bag.dags["pgmigrate_example_shop"]
    assert [t.task_id for t in dag.tasks][:6] == ["precheck", "schema_pre_data", "full_load", "schema_post_data",
                                                 "incremental_sync", "cutover"]
    assert dag.task_dict["incremental_sync"].mode == "poke"
    assert dag.task_dict["full_load"].upstream_task_ids == {"schema_pre_data"}
    assert dag.task_dict["schema_post_data"].upstream_task_ids == {"full_load"}
