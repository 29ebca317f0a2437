"""One DAG per migration config file, plus an ad-hoc precheck DAG whose trigger form takes a config.

Config files live in ``[pgmigrate] config_folder`` (or the environment variable ``PGMIGRATE_CONFIG_FOLDER``), by
default the ``migrations`` folder beside this file. Parsing reads those files and nothing else.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from airflow.sdk import conf

from airflow_pgmigrate.templates.migration_dag import build_adhoc_precheck_dag, dags_from_folder

log = logging.getLogger(__name__)

folder = (os.environ.get("PGMIGRATE_CONFIG_FOLDER") or conf.get("pgmigrate", "config_folder", fallback="")
          or str(Path(__file__).parent / "migrations"))
_dags, _errors = dags_from_folder(folder)
for _file, _error in _errors.items():
    log.error("migration config %s is not valid, no DAG for it:\n%s", _file, _error)
globals().update(_dags)
pgmigrate_adhoc_precheck = build_adhoc_precheck_dag()
