"""The report plugin serves report files by migration name only, to signed-in users."""

from __future__ import annotations

from fastapi.testclient import TestClient

from airflow_pgmigrate.plugins.reports import MigrationReportsPlugin, create_app, find_report


def test_reports_are_found_by_migration_name_only(tmp_path, monkeypatch):
    monkeypatch.setenv("PGMIGRATE_REPORT_FOLDER", str(tmp_path))
    (tmp_path / "shop.html").write_text("<h1>Migration report: shop</h1>")
    assert find_report("shop") == tmp_path / "shop.html"
    for name in ("../shop", "shop/../shop", "", "a" * 64, "sh op"):
        assert find_report(name) is None


def test_the_api_server_serves_a_report_to_a_signed_in_user_and_nobody_else(tmp_path, monkeypatch):
    from airflow.api_fastapi.core_api.security import get_user

    monkeypatch.setenv("PGMIGRATE_REPORT_FOLDER", str(tmp_path))
    (tmp_path / "shop.html").write_text("<h1>Migration report: shop</h1>")
    app = create_app()
    assert TestClient(app).get("/reports/shop.html").status_code in (401, 403)
    app.dependency_overrides[get_user] = lambda: object()
    client = TestClient(app)
    page = client.get("/reports/shop.html")
    assert page.status_code == 200 and "Migration report: shop" in page.text
    assert page.headers["content-type"].startswith("text/html")
    missing = client.get("/reports/other.html")
    assert missing.status_code == 404 and "no report for migration" in missing.text
    assert 'href="shop.html"' in client.get("/reports/").text


def test_the_plugin_mounts_its_app_under_pgmigrate():
    (entry,) = MigrationReportsPlugin.fastapi_apps
    assert entry["url_prefix"] == "/pgmigrate" and entry["app"] is MigrationReportsPlugin.fastapi_apps[0]["app"]


def test_reports_of_the_migrations_in_the_configured_config_folder_are_found(tmp_path, monkeypatch):
    """The DAG file reads its configs from ``[pgmigrate] config_folder`` (airflow.cfg) as well as from the
    environment variable; the plugin must look in the ``report.directory`` of those configs too, or the report link
    of such a migration answers 404."""
    configs, reports = tmp_path / "configs", tmp_path / "reports"
    configs.mkdir()
    reports.mkdir()
    (configs / "shop.yaml").write_text("name: shop\nsource: {conn_id: s}\ndestination: {conn_id: d}\n"
                                       f"report: {{directory: '{reports}'}}\n")
    (reports / "shop.html").write_text("<h1>Migration report: shop</h1>")
    monkeypatch.setenv("PGMIGRATE_REPORT_FOLDER", str(tmp_path / "default"))
    monkeypatch.delenv("PGMIGRATE_CONFIG_FOLDER", raising=False)
    monkeypatch.setenv("AIRFLOW__PGMIGRATE__CONFIG_FOLDER", str(configs))
    assert find_report("shop") == reports / "shop.html"
