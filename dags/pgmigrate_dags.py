"""One DAG per migration config file, plus ad-hoc DAGs whose trigger form takes a config.

A config file that does not validate gets a stand-in DAG ``pgmigrate_invalid_<file>`` whose description and only task
show every bad field; for an import error instead, keep one small DAG file per migration that calls
``build_migration_dag_from_file``.

Config files live in ``[pgmigrate] config_folder`` (or the environment variable ``PGMIGRATE_CONFIG_FOLDER``), by
default the ``migrations`` folder beside this file. Parsing reads those files and nothing else.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from airflow.sdk import conf

from airflow_pgmigrate.templates.migration_dag import (
    broken_config_dag,
    build_adhoc_dag,
    build_adhoc_precheck_dag,
    dags_from_folder,
)

log = logging.getLogger(__name__)

folder = (os.environ.get("PGMIGRATE_CONFIG_FOLDER") or conf.get("pgmigrate", "config_folder", fallback="")
          or str(Path(__file__).parent / "migrations"))
_dags, _errors = dags_from_folder(folder)
for _file, _error in _errors.items():
    # A stand-in DAG shows the error in the UI; the other migrations' DAGs stay.
    log.error("migration config %s is not valid:\n%s", _file, _error)
    _broken = broken_config_dag(_file, _error)
    _dags[_broken.dag_id] = _broken
globals().update(_dags)
pgmigrate_adhoc_precheck = build_adhoc_precheck_dag()
pgmigrate_adhoc = build_adhoc_dag()
