"""report.html in headless Chromium: filter by quadrant, search, hostile model text stays text.

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
            for row in page.query_selector_all("#flips tbody tr")]


def test_report_html_filters_searches_and_escapes(tmp_path, page):
    page, problems = page
    paths = write_reports(tmp_path / "report", sample_records())
    page.goto(paths["html"].as_uri())

    assert page.inner_text("#summary").count("FAIL") == 1
    page.select_option("#task", label="piqa (multiple_choice)")
    assert len(visible_rows(page)) == 10
    page.select_option("#quadrant", "negative_flip")
    rows = visible_rows(page)
    assert [row[:2] for row in rows] == [["6", "negative_flip"], ["7", "negative_flip"]]
    # old vs new vs gold side by side; model text rendered as text, never as markup
    assert rows[0][2] == f"Question 6: {XSS_SCRIPT} | pipe *bold*"
    assert rows[1][2] == f"Question 7: {XSS_IMG}"
    # results built without margins (these hand-made ones) leave the margin column empty, not "null"
    assert rows[1][3:] == ["no", "no\n[score -1.500]", "yes\n[score -1.250]", ""]
    assert page.query_selector("#flips img") is None and page.query_selector("#flips script") is None

    page.fill("#search", "onerror")
    assert [row[0] for row in visible_rows(page)] == ["7"]
    assert page.inner_text("#count") == "1 of 10 instances"
    page.screenshot(path=str(tmp_path / "report.png"), full_page=True)

    page.fill("#search", "")
    page.select_option("#task", label="samsum (generative)")
    page.select_option("#quadrant", "negative_flip")
    assert [row[0] for row in visible_rows(page)] == ["d1"]
    assert problems == []
