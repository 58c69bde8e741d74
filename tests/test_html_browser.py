"""report.html in headless Chromium: the quadrant matrix filters the instances, search, the word
diff and the D(x) histogram show, hostile model text stays text; screenshots go to the test's tmp dir.

Needs Debian's `chromium` (CI apt-gets it) and the Python `playwright` package (dev extra);
skipped with a reason where either is absent.
"""

from __future__ import annotations

import shutil

import pytest

from pytest_modelcompat.report.files import write_reports
from tests.compat_results import XSS_IMG, XSS_SCRIPT, sample_records

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian chromium: apt-get install -y chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture
def page(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (pip install '.[dev]')")
    with sync_api.sync_playwright() as playwright:
        # A persistent context is how playwright takes a fresh --user-data-dir of our own.
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS,
        )
        page = context.new_page()
        problems: list[str] = []
        page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: problems.append(str(error)))
        page.on("dialog", lambda dialog: problems.append(f"dialog opened: {dialog.message}"))
        page.on("request", lambda request: None if request.url.startswith("file://")
                else problems.append(f"network fetch: {request.url}"))
        yield page, problems
        context.close()


def visible_rows(page) -> list[list[str]]:
    return [[cell.inner_text() for cell in row.query_selector_all("td")]
            for row in page.query_selector_all("table.instances:not([hidden]) tbody tr:not([hidden])")]


def matrix_cell(page, task: int, quadrants: str):
    return page.locator(f"section.card[data-task='{task}'] button[data-quadrants='{quadrants}']")


def test_report_html_matrix_filters_searches_and_escapes(tmp_path, page):
    page, problems = page
    paths = write_reports(tmp_path / "report", sample_records())
    page.goto(paths["html"].as_uri())

    assert page.inner_text("#summary").count("FAIL") == 1
    # opens on the failing task (piqa, task 0), every instance listed, negative flips first
    assert page.input_value("#task") == "0"
    assert [row[0] for row in visible_rows(page)] == ["6", "7", "8", "9", "0", "1", "2", "3", "4", "5"]
    counts = page.locator("section.card[data-task='0'] table.matrix .count").all_inner_texts()
    assert counts == ["6", "2", "1", "1"]     # old right × new right / wrong, old wrong × new right / wrong

    matrix_cell(page, 0, "negative_flip").click()
    assert matrix_cell(page, 0, "negative_flip").get_attribute("aria-pressed") == "true"
    rows = visible_rows(page)
    assert [row[:2] for row in rows] == [["6", "negative_flip"], ["7", "negative_flip"]]
    assert page.inner_text("#count") == "2 of 10 instances"
    # old vs new vs gold side by side; model text rendered as text, never as markup
    assert rows[0][3] == f"Question 6: {XSS_SCRIPT} | pipe *bold*"
    assert rows[1][3] == f"Question 7: {XSS_IMG}"
    # results built without margins (these hand-made ones) leave the margin column empty, not "null"
    assert rows[1][2] == "" and rows[1][4:] == ["no", "no\nscore -1.500", "yes\nscore -1.250"]
    assert page.query_selector("table.instances img") is None
    assert page.query_selector("table.instances script") is None
    screenshot = tmp_path / "report-negative-flips.png"
    page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.stat().st_size > 0

    matrix_cell(page, 0, "both_wrong_same both_wrong_diff").click()
    assert [row[:2] for row in visible_rows(page)] == [["9", "both_wrong_same"]]
    page.click("#all-quadrants")
    page.fill("#search", "onerror")
    assert [row[0] for row in visible_rows(page)] == ["7"]
    assert page.inner_text("#count") == "1 of 10 instances"
    page.fill("#search", "")

    # a cell of another task's matrix switches the table to that task
    matrix_cell(page, 1, "negative_flip").click()
    assert page.input_value("#task") == "1"
    assert [row[0] for row in visible_rows(page)] == ["d1"]
    diff = page.locator("table.instances:not([hidden]) td.diff").first
    assert diff.locator("del").all_inner_texts() == ["Bob is late."]
    assert diff.locator("ins").all_inner_texts() == ["Bob."]
    matrix_cell(page, 1, "unchanged").click()
    assert visible_rows(page)[0][-1].startswith(f"They talk. {XSS_SCRIPT}")   # a generation, as text
    assert page.query_selector("table.instances script") is None
    assert page.locator("section.card[data-task='1'] svg.histogram rect").count() == 2
    page.screenshot(path=str(tmp_path / "report-generative.png"), full_page=True)
    assert problems == []
