"""report.py on hand-built task results: report.json schema, verdict, Markdown, HTML, terminal."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest

from pytest_modelcompat.report.files import write_reports
from pytest_modelcompat.report.html_page import render_html
from pytest_modelcompat.report.markdown import md_cell, render_markdown
from pytest_modelcompat.report.records import build_report, muscle_train_command, schema_path
from pytest_modelcompat.report.terminal import terminal_table
from pytest_modelcompat.report.verdict import verdict_message
from tests.compat_results import XSS_IMG, XSS_SCRIPT, sample_records


@pytest.fixture
def records():
    return sample_records()


def validate(report: dict) -> None:
    jsonschema.validate(report, json.loads(schema_path().read_text()))


def test_report_json_follows_schema_with_all_instances(records):
    report = build_report(records)
    validate(report)
    assert report["schema_version"] == 1
    assert report["old"] == {"adapter": "/models/a1", "base": "/models/base-v1", "fingerprint": "a" * 64}
    # sorted by test node id, whatever order the tests finished in
    assert [task["name"] for task in report["tasks"]] == ["piqa", "samsum"]
    piqa, samsum = report["tasks"]
    assert piqa["n"] == len(piqa["instances"]) == 10
    assert piqa["metrics"]["nfr"] == pytest.approx(0.2)
    assert piqa["metrics"]["btc"] == pytest.approx(0.75)
    assert piqa["metrics"]["score_old"] is None          # not applicable to multiple choice
    assert samsum["metrics"]["nfr"] is None and samsum["metrics"]["nfr_smooth"] == pytest.approx(1 / 3)
    assert piqa["gate"] == {"passed": False, "checks": [
        {"metric": "nfr", "op": "<=", "threshold": 0.1, "value": 0.2, "passed": False},
        {"metric": "btc", "op": ">=", "threshold": 0.9, "value": 0.75, "passed": False},
    ]}
    assert piqa["instances"][6] == {"id": "6", "old": {"pred": 0, "correct": True, "score": -1.5, "margin": None},
                                    "new": {"pred": 1, "correct": False, "score": -1.25, "margin": None},
                                    "quadrant": "negative_flip", "unstable": False}
    assert build_report(list(reversed(records))) == report


def test_schema_rejects_a_report_missing_a_metric(records):
    report = build_report(records)
    del report["tasks"][0]["metrics"]["nfr_ci"]
    with pytest.raises(jsonschema.ValidationError):
        validate(report)


def test_verdict_names_checks_interval_flips_and_fix_command(records):
    piqa = next(record for record in records if record["entry"]["name"] == "piqa")
    message = verdict_message(piqa)
    assert "FAILED nfr = 0.2000 (must be <= 0.1000)" in message
    assert "FAILED btc = 0.7500 (must be >= 0.9000)" in message
    low, high = piqa["entry"]["metrics"]["nfr_ci"]
    assert f"95% Wilson interval [{low:.4f}, {high:.4f}]" in message
    assert "Top negative flips (2 of 2)" in message
    assert "id 7: input 'Question 7: \"><img src=x onerror=alert(1)>'" in message
    assert "old 'no' | new 'yes' | gold 'no'" in message
    assert message.splitlines()[-1].strip() == (
        "muscle train --suite /suites/modelcompat.yaml --task piqa --old-adapter /models/a1 "
        "--new-adapter /models/a2 --output /models/a2-muscle-piqa")


def test_generative_verdict_orders_flips_by_regression(records):
    samsum = next(record for record in records if record["entry"]["name"] == "samsum")
    message = verdict_message(samsum, [{"metric": "m_r", "op": "<=", "threshold": 0.1, "value": 0.4,
                                        "passed": False}])
    assert "FAILED m_r = 0.4000 (must be <= 0.1000)" in message
    assert "id d1 [score 0.800 -> 0.400]" in message
    assert "NFR~ 0.333" in message


def test_muscle_command_quotes_paths_and_passes_bases():
    command = muscle_train_command(suite="my suite.yaml", task="piqa", old_adapter="a1", new_adapter="a2",
                                   old_base="b1", new_base="b2", output="out")
    assert command == ("muscle train --suite 'my suite.yaml' --task piqa --old-adapter a1 --new-adapter a2 "
                       "--old-base b1 --new-base b2 --output out")


def test_markdown_escapes_model_text_for_tables(records):
    report = build_report(records)
    markdown = render_markdown(report, records)
    assert "gate FAILED (1 of 2 tasks)" in markdown
    assert "<script>" not in markdown and "<img" not in markdown
    assert md_cell(f"a | b\n{XSS_SCRIPT} *x*") == r"a \| b &lt;script&gt;alert(1)&lt;/script&gt; \*x\*"
    # every table row keeps its column count: no cell text adds or removes a pipe
    for line in markdown.splitlines():
        if line.startswith("| id "):
            columns = line.count(" | ")
        if line.startswith("| 6 |"):
            assert len(re.findall(r"(?<!\\)\|", line)) == columns + 2
    assert "muscle train --suite /suites/modelcompat.yaml --task piqa" in markdown
    assert len(markdown) < 65536     # a GitHub PR comment's limit


def test_html_is_self_contained_and_escapes_model_text(records):
    page = render_html(build_report(records), records)
    assert XSS_SCRIPT not in page and XSS_IMG not in page and "<img" not in page
    assert "\\u003cscript\\u003ealert(1)\\u003c/script\\u003e" in page      # inside the JSON data
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)   # nothing fetched
    assert "default-src 'none'" in page
    assert page.count("<script") == 2            # the JSON data block and the page's own script


def test_terminal_table_has_a_row_per_task(records):
    text = terminal_table(records, width=200, color=False)
    piqa = next(line for line in text.splitlines() if "piqa" in line)
    assert "0.800 → 0.700" in piqa and "FAIL" in piqa and "0.200 [" in piqa
    samsum = next(line for line in text.splitlines() if "samsum" in line)
    assert "PASS" in samsum and "0.433 → 0.467" in samsum


def test_write_reports_writes_three_files(tmp_path, records):
    paths = write_reports(tmp_path / "out", records)
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["report.html", "report.json",
                                                                          "report.md"]
    validate(json.loads(paths["json"].read_text()))


def test_report_says_whether_scores_are_batch_invariant(records):
    # Sample stacks record no device/dtype (like a baseline snapshot's old stack): unknown.
    report = build_report(records)
    assert report["batch_invariant"] is None and "not recorded" in report["batch_invariance_note"]

    def with_stacks(old, new):
        return [{**record, "old": {**record["old"], **old}, "new": {**record["new"], **new}} for record in records]

    cpu32 = {"device": "cpu", "dtype": "float32"}
    fp32 = with_stacks(cpu32, cpu32)
    report = build_report(fp32)
    validate(report)
    assert report["batch_invariant"] is True and report["new"]["dtype"] == "float32"
    assert "batch-invariant scores: yes" in render_markdown(report, fp32)

    loose = with_stacks(cpu32, {"device": "cuda:0", "dtype": "bfloat16"})
    report = build_report(loose)
    validate(report)
    assert report["batch_invariant"] is False
    note = report["batch_invariance_note"]
    assert note.startswith("new stack bfloat16 on cuda:0:") and "float32 on CPU only" in note
    assert "batch-invariant scores: NOT guaranteed — new stack bfloat16 on cuda:0" in render_markdown(report, loose)
    assert "batch-invariant scores: NOT guaranteed" in render_html(report, loose)


def test_stack_meta_records_device_and_dtype():
    from types import SimpleNamespace

    import torch

    from pytest_modelcompat.report.records import stack_meta

    names = {"adapter": "a", "base": "b", "fingerprint": "f"}
    model = torch.nn.Linear(2, 2).to(torch.bfloat16)
    assert stack_meta(SimpleNamespace(**names, model=model, device=torch.device("cpu"))) == {
        **names, "device": "cpu", "dtype": "bfloat16"}
    assert stack_meta(SimpleNamespace(**names)) == names
