"""DAG templates: parsing does no I/O, one DAG per config, a broken config is visible, TaskGroup and ad-hoc DAGs."""

from __future__ import annotations

from pathlib import Path

import pytest

from airflow_pgmigrate.config import MigrationConfig
from airflow_pgmigrate.exceptions import ConfigError
from airflow_pgmigrate.templates.migration_dag import (
    build_adhoc_dag,
    build_migration_dag,
    build_migration_dag_from_file,
    dags_from_folder,
    migration_task_group,
)

ROOT = Path(__file__).resolve().parents[2]
GOOD = "name: {name}\nsource: {{conn_id: a}}\ndestination: {{conn_id: b}}\n"


def _bag(folder: Path, monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("PGMIGRATE_CONFIG_FOLDER", str(folder))
    return DagBag(dag_folder=str(ROOT / "dags"))


def test_a_broken_config_gets_a_stand_in_dag_and_the_others_stay(tmp_path, monkeypatch):
    (tmp_path / "good.yaml").write_text(GOOD.format(name="good_one"))
    (tmp_path / "bad.yaml").write_text("name: Bad Name\nsource: {conn_id: a}\nmigration_types: [fulll]\n")
    bag = _bag(tmp_path, monkeypatch)
    assert bag.import_errors == {}
    assert {"pgmigrate_good_one", "pgmigrate_invalid_bad", "pgmigrate_adhoc"} <= set(bag.dag_ids)
    doc = bag.dags["pgmigrate_invalid_bad"].doc_md
    assert "bad.yaml" in doc and "destination: is required" in doc and "migration_types[0]" in doc


def test_a_per_migration_dag_file_raises_an_import_error_naming_the_field(tmp_path):
    bad = tmp_path / "shop.yaml"
    bad.write_text("name: shop\nsource: {conn_id: a}\ndestination: {conn_id: b}\nconflicting_tables: maybe\n")
    with pytest.raises(ConfigError) as info:
        build_migration_dag_from_file(bad)
    assert info.value.fields == ["conflicting_tables"] and str(bad) in str(info.value)


def test_only_the_steps_the_types_need(tmp_path):
    (tmp_path / "full.yaml").write_text(GOOD.format(name="only_full") + "migration_types: [full]\n")
    dags, errors = dags_from_folder(tmp_path)
    assert not errors
    assert [t.task_id for t in dags["pgmigrate_only_full"].tasks] == ["precheck", "full_load"]


def test_manual_approval_asks_one_question_while_a_task_beside_it_syncs():
    manual = build_migration_dag(MigrationConfig.from_dict({"name": "m", "source": {"conn_id": "a"},
                                                            "destination": {"conn_id": "b"}}))
    assert [t.task_id for t in manual.tasks][-6:] == ["incremental_sync", "cutover", "verify", "cutover_question",
                                                      "sync_while_waiting", "release"]
    ask = manual.task_dict["cutover_question"]
    assert ask.options == ["Cut over", "Keep syncing", "Abort"]
    assert ask.options_mapping == {"Cut over": "cutover", "Abort": "release"}
    assert not any(t.endswith(("_1", "_2", "_3")) for t in manual.task_ids), "no unrolled rounds"
    for end in ("cutover", "release"):
        assert manual.task_dict[end].upstream_task_ids == {"cutover_question", "sync_while_waiting"}
    # No reschedule-mode sync: the LocalExecutor fails reschedule sensors with short pokes (see cutover_wait.py).
    assert manual.task_dict["sync_while_waiting"].mode == "poke"
    assert manual.task_dict["incremental_sync"].mode == "poke"
    automatic = build_migration_dag(MigrationConfig.from_dict({
        "name": "a", "source": {"conn_id": "a"}, "destination": {"conn_id": "b"},
        "cutover": {"approval": "automatic", "freeze_source": True}}))
    assert automatic.task_dict["cutover"].upstream_task_ids == {"incremental_sync"}
    assert "cutover_question" not in automatic.task_ids


def test_the_steps_as_a_task_group_in_your_own_dag():
    from airflow.sdk import DAG

    config = MigrationConfig.from_dict({"name": "grp", "source": {"conn_id": "a"}, "destination": {"conn_id": "b"},
                                        "migration_types": ["schema", "full"]})
    with DAG(dag_id="mine", schedule=None) as dag:
        group = migration_task_group(config)
    assert group.group_id == "pgmigrate_grp"
    assert dag.task_ids == ["pgmigrate_grp.precheck", "pgmigrate_grp.schema_pre_data", "pgmigrate_grp.full_load",
                            "pgmigrate_grp.schema_post_data"]


def test_the_adhoc_dag_takes_the_config_from_its_trigger_form():
    dag = build_adhoc_dag()
    assert dag.params["config"]["name"] == "example"
    assert [t.task_id for t in dag.tasks] == ["precheck", "schema_pre_data", "full_load", "schema_post_data",
                                             "start_incremental", "incremental_sync", "remove_ingress_rules"]
    assert dag.task_dict["full_load"].config == "{{ params.config }}"
    assert dag.task_dict["full_load"].trigger_rule == "none_failed"


def test_the_cutover_question_in_a_task_group_branches_to_the_tasks_of_its_group():
    """In a TaskGroup the tasks are named ``<group>.cutover`` and ``<group>.release``: a question that branches to
    plain ``cutover`` fails after the person answered (Airflow: "'branch_task_ids' must contain only valid
    task_ids"), and neither Cut over nor Abort happens."""
    from airflow.sdk import DAG

    config = MigrationConfig.from_dict({"name": "grp", "source": {"conn_id": "a"}, "destination": {"conn_id": "b"}})
    with DAG(dag_id="mine_manual", schedule=None) as dag:
        migration_task_group(config)
    ask = dag.task_dict["pgmigrate_grp.cutover_question"]
    assert ask.options_mapping == {"Cut over": "pgmigrate_grp.cutover", "Abort": "pgmigrate_grp.release"}
    assert set(ask.options_mapping.values()) <= {t.task_id for t in ask.downstream_list}


def test_a_failed_question_is_asked_again():
    """Airflow's executor race can fail the question when the answer comes within a scheduler loop of the asking;
    without a retry nobody is asked again and the sync beside it waits for a decision until its timeout."""
    from airflow.sdk import DAG

    config = MigrationConfig.from_dict({"name": "ask", "source": {"conn_id": "a"}, "destination": {"conn_id": "b"}})
    with DAG(dag_id="mine_question", schedule=None) as dag:
        migration_task_group(config)
    ask = dag.task_dict["pgmigrate_ask.cutover_question"]
    assert ask.retries >= 1 and ask.retry_delay.total_seconds() <= 10
