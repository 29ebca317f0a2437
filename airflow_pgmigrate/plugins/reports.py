"""The migration reports over HTTP, served by Airflow's API server under ``/pgmigrate/reports/``.

The tasks write each migration's report as a file (engine/report.py); this plugin serves those files to signed-in
Airflow users, so the tasks' "Migration report" link opens from the UI (browsers refuse ``file://`` links from an
``http://`` page). It looks in the default report folder and in the ``report.directory`` of every config in the
config folder the DAG file reads. The API server and the workers must share the folder (one machine, or a shared
volume); otherwise set ``report.base_url`` to wherever the folder is served.
"""

from __future__ import annotations

import html
import os
import re
from pathlib import Path
from typing import Any

from airflow.plugins_manager import AirflowPlugin

#: Where the plugin is mounted in the API server.
URL_PREFIX = "/pgmigrate"
_NAME = re.compile(r"^[A-Za-z0-9_]{1,63}$")


def migration_config_folder() -> str:
    """Where the DAG file (dags/pgmigrate_dags.py) reads the migration configs: ``$PGMIGRATE_CONFIG_FOLDER``, else
    ``[pgmigrate] config_folder``, else the ``migrations`` folder in the DAGs folder."""
    from airflow.sdk import conf

    return (os.environ.get("PGMIGRATE_CONFIG_FOLDER") or conf.get("pgmigrate", "config_folder", fallback="")
            or str(Path(conf.get("core", "dags_folder", fallback=".")) / "migrations"))


def report_folders() -> list[Path]:
    """The default report folder, then each configured migration's ``report.directory``."""
    from airflow_pgmigrate.config import MigrationConfig
    from airflow_pgmigrate.engine.report import report_directory

    folders: list[Path] = []
    default = MigrationConfig.from_dict({"name": "x", "source": {"conn_id": "s"}, "destination": {"conn_id": "d"}})
    folders.append(report_directory(default))
    config_folder = migration_config_folder()
    if config_folder and Path(config_folder).is_dir():
        for file in sorted([*Path(config_folder).glob("*.yaml"), *Path(config_folder).glob("*.yml")]):
            try:
                folder = report_directory(MigrationConfig.from_yaml(file))
            except Exception:  # noqa: BLE001 - an invalid config has its own stand-in DAG
                continue
            if folder not in folders:
                folders.append(folder)
    return folders


def find_report(name: str) -> Path | None:
    if not _NAME.match(name):
        return None
    for folder in report_folders():
        path = folder / f"{name}.html"
        if path.is_file():
            return path
    return None


def create_app() -> Any:
    from airflow.api_fastapi.core_api.security import get_user
    from fastapi import Depends, FastAPI, HTTPException
    from fastapi.responses import FileResponse, HTMLResponse

    app = FastAPI(title="airflow-pgmigrate reports", dependencies=[Depends(get_user)])

    @app.get("/reports/{name}.html")
    def report(name: str) -> FileResponse:
        path = find_report(name)
        if path is None:
            raise HTTPException(404, f"no report for migration {name!r} yet: it is written when a step ends")
        return FileResponse(path, media_type="text/html", headers={"Cache-Control": "no-store"})

    @app.get("/reports/")
    def index() -> HTMLResponse:
        names = sorted({p.stem for folder in report_folders() if folder.is_dir() for p in folder.glob("*.html")})
        items = "".join(f'<li><a href="{html.escape(n)}.html">{html.escape(n)}</a></li>' for n in names)
        return HTMLResponse("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Migration reports"
                            f"</title></head><body><h1>Migration reports</h1><ul>{items or '<li>none yet</li>'}</ul>"
                            "</body></html>")

    return app


class _AppsOnFirstUse:
    """The plugin's FastAPI apps, built when the API server asks for them (not when a worker loads plugins).

    Airflow reads the attribute on the plugin class itself, so this is a descriptor rather than a property."""

    def __init__(self) -> None:
        self._apps: list[dict[str, Any]] | None = None

    def __get__(self, instance: Any, owner: Any) -> list[dict[str, Any]]:
        if self._apps is None:
            self._apps = [{"app": create_app(), "url_prefix": URL_PREFIX, "name": "Migration reports"}]
        return self._apps


class MigrationReportsPlugin(AirflowPlugin):
    """Serves the migration reports in the API server (``/pgmigrate/reports/<migration>.html``)."""

    name = "pgmigrate_reports"
    fastapi_apps = _AppsOnFirstUse()  # type: ignore[assignment]


__all__ = ["MigrationReportsPlugin", "URL_PREFIX", "create_app", "find_report", "migration_config_folder",
           "report_folders"]
