"""What a person sees in the Airflow UI, in Debian's Chromium (headless, through Selenium and chromium-driver): the
cutover question with its figures, answered by a click, then the "Migration report" link served over HTTP.

Screenshots go to ``$PGMIGRATE_TEST_ARTIFACTS/browser`` (default: ``/tmp/pgmigrate-artifacts/browser``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from tests.real_airflow.conftest import ARTIFACTS, Writes

pytestmark = [pytest.mark.real_airflow, pytest.mark.timeout(900)]

SHOTS = ARTIFACTS / "browser"


@pytest.fixture
def browser():
    missing = "" if shutil.which("chromium") and shutil.which("chromedriver") else \
        "Debian's chromium and chromium-driver are not installed (apt-get install -y chromium chromium-driver)"
    if missing and os.environ.get("PGMIGRATE_REQUIRE_BROWSER"):
        pytest.fail(missing)  # .ci/run installs them: there a missing browser is an error, not a skip
    if missing:
        pytest.skip(missing)
    from selenium import webdriver

    profile = tempfile.mkdtemp(prefix="pgmigrate-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1400,1100",
                 f"--user-data-dir={profile}"):
        options.add_argument(flag)
    service = webdriver.ChromeService(executable_path=shutil.which("chromedriver"))
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(60)
    SHOTS.mkdir(parents=True, exist_ok=True)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _wait_for_text(driver, words: list[str], timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = driver.find_element("tag name", "body").text
        if all(w in text for w in words):
            return text
        time.sleep(1)
    raise AssertionError(f"the page never showed {[w for w in words if w not in text]}:\n{text[:3000]}")


def _click_button(driver, label: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for button in driver.find_elements("tag name", "button"):
            if button.text.strip() == label and button.is_enabled():
                button.click()
                return
        time.sleep(1)
    raise AssertionError(f"no {label!r} button on {driver.current_url}")


def test_a_person_answers_the_question_and_opens_the_report(airflow, migrations, browser):
    m = migrations["real_ui"]
    run_id = "real_in_the_browser"
    writes = Writes(m)
    writes.start()
    try:
        airflow.trigger(m.dag_id, run_id)
        airflow.open_question(m.dag_id, run_id, "cutover_question")
        browser.get(f"{airflow.url}/")
        time.sleep(3)
        browser.get(f"{airflow.url}/dags/{m.dag_id}/runs/{run_id}/tasks/cutover_question/required_actions")
        text = _wait_for_text(browser, ["Cut over migration real_ui?", "Lag:", "of WAL", "behind the source",
                                        "Last verification:", "no difference", "Estimated drain at the freeze:",
                                        "Writes on the source:", "What each answer does"])
        browser.save_screenshot(str(SHOTS / "cutover-question.png"))
        assert "{'" not in text and "applied_lsn" not in text, "no Python repr on the page"
        _click_button(browser, "Cut over")
        time.sleep(2)
        browser.save_screenshot(str(SHOTS / "cutover-answered.png"))
        state = airflow.wait_for_run(m.dag_id, run_id)
    finally:
        writes.stop()
    assert state == "success", airflow.task_states(m.dag_id, run_id)
    answers = m.dst("SELECT value FROM pgmigrate.migration_state WHERE key = 'cutover_answers'")[0][0]
    assert [a["answer"] for a in answers] == ["Cut over"]
    links = airflow.request("GET", f"/api/v2/dags/{m.dag_id}/dagRuns/{run_id}/taskInstances/cutover/links")
    report = links["extra_links"]["Migration report"]
    assert report.startswith("http://"), report
    browser.get(f"{airflow.url}/dags/{m.dag_id}/runs/{run_id}/tasks/cutover/details")
    _wait_for_text(browser, ["Migration report"])
    browser.save_screenshot(str(SHOTS / "cutover-task-with-report-link.png"))
    shown = [a.get_attribute("href") for a in browser.find_elements("tag name", "a") if a.text == "Migration report"]
    assert shown == [report], shown
    browser.get(report)
    text = _wait_for_text(browser, ["Migration report: real_ui", "Cutover question: answers", "Cut over",
                                    "Verification (at cutover, source frozen)", "public.orders", "equal",
                                    "Sequences set at cutover", "Next steps and rollback",
                                    "RESET default_transaction_read_only"])
    by = answers[0]["by"]
    assert by in text
    browser.save_screenshot(str(SHOTS / "migration-report.png"))
    assert Path(SHOTS / "migration-report.png").stat().st_size > 10_000
