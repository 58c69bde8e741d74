"""report.py on hand-built task results: report.json schema, verdict, Markdown, HTML, terminal."""

from __future__ import annotations

import json
import math
import random
import re
from xml.etree import ElementTree

import jsonschema
import pytest

from pytest_modelcompat.report.files import write_reports
from pytest_modelcompat.report.histogram import (
    GAIN_COLOR,
    MAX_BINS,
    REGRESSION_COLOR,
    delta_histogram,
    histogram_svg,
)
from pytest_modelcompat.report.html_page import quadrant_matrix, render_html
from pytest_modelcompat.report.markdown import md_cell, render_markdown
from pytest_modelcompat.report.records import build_report, muscle_train_command, schema_path
from pytest_modelcompat.report.terminal import terminal_table
from pytest_modelcompat.report.verdict import verdict_message
from pytest_modelcompat.report.word_diff import word_diff_html
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
    # an input prompt (piqa) and a generation inside the word diff (samsum), as text
    assert "Question 6: &lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "They talk. <ins>&lt;script&gt;alert(1)&lt;/script&gt;</ins>" in page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)   # nothing fetched
    assert "default-src 'none'" in page
    assert page.count("<script") == 1            # the page's own script
    assert page.count('<svg class="histogram"') == 1     # samsum's D(x); piqa is not generative


def test_html_lists_instances_in_review_order(records):
    page = render_html(build_report(records), records)
    piqa_ids = re.findall(r'<tr class="[^"]*" data-quadrant="[^"]*">\s*<td>(\w+)</td>', page)[:10]
    assert piqa_ids == ["6", "7", "8", "9", "0", "1", "2", "3", "4", "5"]    # negative flips first


def matrix_counts(entry) -> dict[str, list[tuple[str, int]]]:
    return {label: [(cell["quadrants"], cell["count"]) for cell in cells]
            for label, cells in quadrant_matrix(entry)["rows"]}


def test_quadrant_matrix_counts_each_cell_and_names_what_it_filters(records):
    piqa, samsum = build_report(records)["tasks"]
    assert quadrant_matrix(piqa)["columns"] == ["new right", "new wrong"]
    assert matrix_counts(piqa) == {"old right": [("both_correct", 6), ("negative_flip", 2)],
                                   "old wrong": [("positive_flip", 1), ("both_wrong_same both_wrong_diff", 1)]}
    assert quadrant_matrix(piqa)["rows"][1][1][1]["note"] == "1 same answer, 0 different"
    # generative tasks have no right or wrong: one row by the sign of D(x)
    assert matrix_counts(samsum) == {"similarity to gold": [("negative_flip", 1), ("unchanged", 1),
                                                            ("positive_flip", 1)]}


def test_word_diff_marks_removed_and_added_words():
    assert word_diff_html("the cat sat on the mat", "the dog sat on a mat") == (
        "the <del>cat</del> <ins>dog</ins> sat on <del>the</del> <ins>a</ins> mat")
    assert word_diff_html("Bob is  late.", "Bob is late.\n") == "Bob is late."    # spacing is no difference
    assert word_diff_html("", "new words") == "<ins>new words</ins>"
    assert word_diff_html("old words", "") == "<del>old words</del>"


def test_word_diff_escapes_every_word_of_model_text():
    diff = word_diff_html(f"{XSS_SCRIPT} same <b>", f"{XSS_IMG} same <b>")
    assert diff == ("<del>&lt;script&gt;alert(1)&lt;/script&gt;</del> "
                    "<ins>&#34;&gt;&lt;img src=x onerror=alert(1)&gt;</ins> same &lt;b&gt;")


def test_delta_histogram_bins_the_data_range_with_zero_as_an_edge():
    # 2 nonzero D -> ⌈√2⌉ = 2 bins of width (0.5 − (−0.4)) / 2 = 0.45, shifted so that 0 is an edge:
    # [−0.45, 0) holds −0.4, (0, 0.45] nothing, (0.45, 0.9] holds 0.5; D = 0 is left out.
    bins = delta_histogram([0.5, -0.4, 0.0])
    assert [bin_.count for bin_ in bins] == [1, 0, 1]
    assert [bin_.low for bin_ in bins] == pytest.approx([-0.45, 0.0, 0.45])
    assert [bin_.high for bin_ in bins] == pytest.approx([0.0, 0.45, 0.9])
    # an edge value belongs to the bin on its own side of 0
    assert [bin_.count for bin_ in delta_histogram([-0.45, 0.45])] == [1, 1]
    assert delta_histogram([0.2, 0.2]) == ((0.0, 0.2, 2),)
    assert delta_histogram([0.0, 0.0]) == ()


@pytest.mark.parametrize("n", [1, 7, 100, 5000])
def test_delta_histogram_counts_every_change_without_mixing_signs(n):
    rng = random.Random(n)
    # wide, skewed and tiny changes, and unchanged instances
    deltas = [draw() for draw in (lambda: rng.uniform(-1, 1), lambda: rng.uniform(-0.01, 0.3),
                                  lambda: rng.uniform(-1e-9, 1e-9), lambda: 0.0) for _ in range(n)]
    changes = [delta for delta in deltas if delta != 0]
    bins = delta_histogram(deltas)
    assert sum(bin_.count for bin_ in bins) == len(changes)
    assert all(bin_.high <= 0 or bin_.low >= 0 for bin_ in bins)
    assert len(bins) <= min(MAX_BINS, math.ceil(math.sqrt(len(changes)))) + 1
    assert bins[0].low <= min(changes) and max(changes) <= bins[-1].high


def test_histogram_svg_draws_a_bar_per_bin_with_instances():
    # bins [−0.45, 0): 2, (0, 0.45]: 0, (0.45, 0.9]: 1 (as above)
    svg = ElementTree.fromstring(str(histogram_svg(delta_histogram([0.5, -0.4, -0.3, 0.0]))))
    bars = svg.findall("rect")
    assert [bar.get("fill") for bar in bars] == [REGRESSION_COLOR, GAIN_COLOR]
    assert [bar.findtext("title") for bar in bars] == ["D in [-0.45, 0): 2 instances", "D in (0.45, 0.9]: 1 instance"]
    assert float(bars[1].get("height")) == pytest.approx(float(bars[0].get("height")) / 2, abs=0.1)
    assert [text.text for text in svg.findall("text")][:3] == ["-0.45", "0", "0.9"]     # the D axis
    with pytest.raises(ValueError):
        histogram_svg(())


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
