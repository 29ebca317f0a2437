"""Turn migration configs into DAGs. Pure functions of a validated config: no I/O beyond reading config files."""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, Param, TaskGroup, TriggerRule, chain

from airflow_pgmigrate.config import MigrationConfig
from airflow_pgmigrate.exceptions import ConfigError
from airflow_pgmigrate.operators.cutover import CutoverOperator, ReleaseOperator
from airflow_pgmigrate.operators.cutover_question import CutoverQuestionOperator
from airflow_pgmigrate.operators.full_load import FullLoadOperator
from airflow_pgmigrate.operators.precheck import PrecheckOperator
from airflow_pgmigrate.operators.schema import SchemaMigrateOperator
from airflow_pgmigrate.operators.start import StartIncrementalOperator
from airflow_pgmigrate.operators.verify import VerifyOperator
from airflow_pgmigrate.sensors.cutover_wait import SyncUntilAnsweredSensor
from airflow_pgmigrate.sensors.incremental import IncrementalSyncSensor
from airflow_pgmigrate.templates.ingress_cleanup import add_ingress_cleanup

log = logging.getLogger(__name__)

DEFAULT_TAGS = ["pgmigrate"]
#: Incremental sync holds its worker slot between pokes (poke mode): it applies changes the whole time, and a
#: reschedule-mode sensor with short pokes is failed by the LocalExecutor race (see sensors/cutover_wait.py).
SYNC_MODE = "poke"


def add_migration_tasks(config: MigrationConfig, dag: DAG) -> dict[str, Any]:
    """Add the migration's steps to ``dag`` (task id -> task), in the DTS order, only those its types need:
    precheck -> schema_pre_data -> full_load -> schema_post_data -> incremental_sync -> cutover (approval)."""
    with dag:
        return _migration_tasks(config)


def migration_task_group(config: MigrationConfig, group_id: str | None = None) -> TaskGroup:
    """The migration's steps as a TaskGroup, for your own DAG (call it inside ``with DAG(...)``)."""
    with TaskGroup(group_id=group_id or f"pgmigrate_{config.name}") as group:
        _migration_tasks(config)
    return group


def _migration_tasks(config: MigrationConfig) -> dict[str, Any]:
    plain = config.to_dict()
    tasks: dict[str, Any] = {}
    tasks["precheck"] = PrecheckOperator(task_id="precheck", config=plain)
    if config.wants("schema"):
        tasks["schema_pre_data"] = SchemaMigrateOperator(task_id="schema_pre_data", config=plain, phase="pre_data")
    if config.wants("full"):
        tasks["full_load"] = FullLoadOperator(task_id="full_load", config=plain, retries=2)
    if config.wants("schema"):
        tasks["schema_post_data"] = SchemaMigrateOperator(task_id="schema_post_data", config=plain,
                                                          phase="post_data")
    if config.wants("incremental") and not config.wants("full"):
        # No full load creates the slot: the destination was loaded by other means.
        tasks["start_incremental"] = StartIncrementalOperator(task_id="start_incremental", config=plain, retries=2)
    if config.wants("incremental"):
        tasks["incremental_sync"] = IncrementalSyncSensor(task_id="incremental_sync", config=plain,
                                                          retries=3, mode=SYNC_MODE, poke_interval=2)
    chain(*tasks.values())
    if config.wants("incremental"):
        tasks.update(_cutover_tasks(config, plain, tasks["incremental_sync"]))
    tasks.update(add_ingress_cleanup(config, plain, tasks.values()))
    wire_failure_alerts(config, tasks.values(), plain)
    return tasks


def wire_failure_alerts(config: MigrationConfig | None, tasks: Any, plain: dict[str, Any] | None = None) -> None:
    """Give each task an ``on_failure_callback`` that alerts through the notifiers of ``alerts.notifiers``.

    With a config known at parse time, only when it asks for it (``alerts.on_task_failure`` and notifiers), and the
    notifier classes are imported now so that a missing provider shows as a config error. With ``None`` (the config
    comes from the trigger form), the callback reads the failed task's config at run time.
    """
    from airflow_pgmigrate.notifications.migration import MigrationAlertNotifier, check_notifiers

    if config is not None:
        if not (config.alerts.on_task_failure and config.alerts.notifiers):
            return
        check_notifiers(config)
    for task in tasks:
        task.on_failure_callback = [*task.on_failure_callback, MigrationAlertNotifier(config=plain)]


def _cutover_tasks(config: MigrationConfig, plain: dict[str, Any], synced: Any) -> dict[str, Any]:
    """Cutover after incremental sync is "not delayed": automatic, or asked in the Airflow UI.

    Manual: the tables are verified, then one question (Cut over, Keep syncing, Abort) waits for as long as needed
    while a task beside it keeps the destination in sync. "Keep syncing" asks again with fresh figures; "Cut over"
    leads to the cutover, "Abort" to the release of the slot and the publication (the destination stays as it is).
    Both wait for the sync beside the question to stop, so only one applier ever runs.
    """
    tasks: dict[str, Any] = {}
    # Retried after a lost worker: the retry drains and verifies again, or finishes a release that had begun.
    cutover = CutoverOperator(task_id="cutover", config=plain, retries=2,
                              trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS)
    tasks["cutover"] = cutover
    if config.cutover.approval == "automatic":
        synced >> cutover
        return tasks
    # Statistics too: the application still runs, and the sync beside the question applies what it writes meanwhile.
    verify = VerifyOperator(task_id="verify", config=plain, fail_on_difference=False, update_statistics=True)
    # The branch names the tasks by their full ids (in a TaskGroup: "<group>.cutover").
    group = cutover.task_group
    # An answer given within about one scheduler loop of the question being asked can meet Airflow's executor race
    # (the asking process's end is processed after the answer resumed the task: "finished with state success, but
    # the task instance's state attribute is queued"), which fails the question without running its answer. Retried,
    # the question is asked again (a new try has a question of its own, with fresh figures) instead of the sync
    # beside it waiting for a decision that never comes.
    ask = CutoverQuestionOperator(task_id="cutover_question", config=plain, cut_over_task_id=cutover.task_id,
                                  abort_task_id=group.child_id("release") if group is not None else "release",
                                  retries=3, retry_delay=timedelta(seconds=5))
    # A lost worker (a scheduler restart ends the LocalExecutor's) is retried; sync resumes where it stopped.
    waiting = SyncUntilAnsweredSensor(task_id="sync_while_waiting", config=plain, retries=5,
                                      retry_delay=timedelta(seconds=10))
    # Abort releases even after the sync beside the question failed (else the slot keeps retaining WAL and nothing
    # in the UI can release it); an upstream failure without an Abort answer skips it.
    release = ReleaseOperator(task_id="release", config=plain, only_after_abort=True, trigger_rule=TriggerRule.ALL_DONE)
    synced >> verify >> [ask, waiting]
    ask >> [cutover, release]
    waiting >> [cutover, release]
    tasks.update({"verify": verify, "cutover_question": ask, "sync_while_waiting": waiting, "release": release})
    return tasks


def build_migration_dag(config: MigrationConfig, **dag_kwargs: Any) -> DAG:
    """One DAG ``pgmigrate_<name>`` for one migration. ``dag_kwargs`` go to ``DAG`` (schedule, tags, ...)."""
    kwargs: dict[str, Any] = {
        "dag_id": config.dag_id,
        "schedule": None,
        "catchup": False,
        "tags": DEFAULT_TAGS,
        "max_active_runs": 1,
        "doc_md": f"Migration **{config.name}**: {', '.join(config.migration_types)} from connection "
        f"`{config.source.conn_id}` to `{config.destination.conn_id}`.",
    }
    kwargs.update(dag_kwargs)
    dag = DAG(**kwargs)
    add_migration_tasks(config, dag)
    return dag


def build_migration_dag_from_file(path: str | Path, **dag_kwargs: Any) -> DAG:
    """One DAG from one config file; a broken config raises, so Airflow shows an import error naming the file and
    every bad field. Use it in a small DAG file per migration."""
    return build_migration_dag(MigrationConfig.from_yaml(path), **dag_kwargs)


def broken_config_dag(file: str | Path, error: ConfigError) -> DAG:
    """A stand-in DAG for a config file that does not validate: its description and its only task show the error.

    The folder template uses it so that one broken file neither hides the other migrations' DAGs nor goes unseen.
    """
    stem = "".join(c if c.isalnum() else "_" for c in Path(file).stem.lower())
    message = str(error)
    with DAG(dag_id=f"pgmigrate_invalid_{stem}", schedule=None, catchup=False, tags=[*DEFAULT_TAGS, "invalid"],
             doc_md=f"**The migration config `{file}` is invalid**\n\n```\n{message}\n```") as dag:
        from airflow.providers.standard.operators.python import PythonOperator

        PythonOperator(task_id="invalid_config", python_callable=_raise_config_error, op_args=[message])
    return dag


def _raise_config_error(message: str) -> None:
    raise ConfigError([], source=message)


def dags_from_folder(folder: str | Path, **dag_kwargs: Any) -> tuple[dict[str, DAG], dict[str, ConfigError]]:
    """Build one DAG per ``*.yaml``/``*.yml`` file in ``folder``: (dag id -> DAG, file -> its config error)."""
    dags: dict[str, DAG] = {}
    errors: dict[str, ConfigError] = {}
    path = Path(folder)
    if not path.is_dir():
        return dags, errors
    for file in sorted([*path.glob("*.yaml"), *path.glob("*.yml")]):
        try:
            config = MigrationConfig.from_yaml(file)
        except ConfigError as exc:
            errors[str(file)] = exc
            continue
        if config.dag_id in dags:
            errors[str(file)] = ConfigError([], source=f"{file}: migration name {config.name!r} is used twice")
            continue
        try:
            dags[config.dag_id] = build_migration_dag(config, **dag_kwargs)
        except ConfigError as exc:  # a notifier class that cannot be imported
            errors[str(file)] = ConfigError(exc.problems, source=str(file))
    return dags, errors


def build_adhoc_dag(dag_id: str = "pgmigrate_adhoc") -> DAG:
    """A DAG whose trigger form takes a migration config (JSON): precheck, schema, full load, schema post-data and
    incremental sync until "not delayed". Steps the config's types do not want skip themselves. It stops before the
    cutover on purpose: cut over from a config-file DAG, where the question is asked in the UI."""
    config = "{{ params.config }}"
    with DAG(
        dag_id=dag_id,
        schedule=None,
        catchup=False,
        tags=DEFAULT_TAGS,
        render_template_as_native_obj=True,
        doc_md=build_adhoc_dag.__doc__,
        params={"config": _config_param()},
    ) as dag:
        after = TriggerRule.NONE_FAILED  # a step the config does not want is skipped; the next one still runs
        steps = [
            PrecheckOperator(task_id="precheck", config=config),
            SchemaMigrateOperator(task_id="schema_pre_data", config=config, phase="pre_data", trigger_rule=after),
            FullLoadOperator(task_id="full_load", config=config, retries=2, trigger_rule=after),
            SchemaMigrateOperator(task_id="schema_post_data", config=config, phase="post_data", trigger_rule=after),
            StartIncrementalOperator(task_id="start_incremental", config=config, retries=2, trigger_rule=after),
            IncrementalSyncSensor(task_id="incremental_sync", config=config, retries=3, trigger_rule=after,
                                  mode=SYNC_MODE, poke_interval=2),
        ]
        chain(*steps)
        steps += add_ingress_cleanup(None, config, steps).values()
        wire_failure_alerts(None, steps)
    return dag


def _config_param() -> Param:
    return Param(
        {"name": "example", "source": {"conn_id": "pgmigrate_source"},
         "destination": {"conn_id": "pgmigrate_destination"}},
        type="object",
        title="Migration config",
        description="The migration config as JSON: name, source, destination and the optional sections "
        "(see docs/configuration.md).",
    )


def build_adhoc_precheck_dag(dag_id: str = "pgmigrate_adhoc_precheck") -> DAG:
    """A DAG whose trigger form takes a migration config (JSON) and runs the precheck on it."""
    with DAG(
        dag_id=dag_id,
        schedule=None,
        catchup=False,
        tags=DEFAULT_TAGS,
        render_template_as_native_obj=True,
        doc_md="Run the precheck of a migration given in the trigger form (see docs/configuration.md).",
        params={"config": _config_param()},
    ) as dag:
        precheck = PrecheckOperator(task_id="precheck", config="{{ params.config }}")
        add_ingress_cleanup(None, "{{ params.config }}", [precheck], precheck_only=True)
    return dag


__all__ = ["add_migration_tasks", "broken_config_dag", "build_adhoc_dag", "build_adhoc_precheck_dag",
           "build_migration_dag", "build_migration_dag_from_file", "dags_from_folder", "migration_task_group",
           "wire_failure_alerts"]
