"""Operator extra links: the "Migration report" button on every migration task."""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseOperatorLink


class MigrationReportLink(BaseOperatorLink):
    """Link to the migration's HTML report (``report.base_url`` when the folder is served, else a file:// URL).

    Airflow calls ``get_link`` on the worker when the task ends and keeps the URL in XCom
    (``_link_MigrationReportLink``) for the UI. Cheap and offline: it only reads the task's config.
    """

    name = "Migration report"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        from airflow_pgmigrate.engine.report import report_url

        try:
            config = operator.migration
        except Exception:  # noqa: BLE001 - a task whose config does not load has no report
            return ""
        return report_url(config) if config.report.enabled else ""


__all__ = ["MigrationReportLink"]
