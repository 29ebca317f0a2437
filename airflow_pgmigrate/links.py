"""Operator extra links: the "Migration report" button on every migration task."""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseOperatorLink


def report_link(config: Any) -> str:
    """The report's address for a person in the Airflow UI: the page the provider's plugin serves in the API server
    (under ``[api] base_url`` when set, else relative to the UI's address), or ``report.base_url``."""
    from airflow.sdk import conf

    from airflow_pgmigrate.engine.report import report_url

    return report_url(config, conf.get("api", "base_url", fallback="") or "")


class MigrationReportLink(BaseOperatorLink):
    """Link to the migration's HTML report, served by Airflow's API server (plugins/reports.py), or under
    ``report.base_url`` when the report folder is served elsewhere.

    Airflow calls ``get_link`` on the worker when the task ends and keeps the URL in XCom
    (``_link_MigrationReportLink``) for the UI. Cheap and offline: it only reads the task's config.
    """

    name = "Migration report"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        try:
            config = operator.migration
        except Exception:  # noqa: BLE001 - a task whose config does not load has no report
            return ""
        return report_link(config) if config.report.enabled else ""


__all__ = ["MigrationReportLink", "report_link"]
