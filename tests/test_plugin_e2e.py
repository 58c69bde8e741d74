"""The gate end to end: tiny real Llama models + real PEFT LoRA adapters, evaluated inside
pytester runs of the plugin (suite items, compat fixture, marker, reports, JUnit XML, xdist)."""

from __future__ import annotations

import json
import textwrap
import xml.etree.ElementTree as ET

import jsonschema
import pytest

from pytest_modelcompat.report.records import schema_path

pytest_plugins = ["pytester"]

QUESTIONS = ["is the cat on the mat", "did the dog eat the bone", "is two plus two four", "is 42 a number",
             "was the movie great", "was the film terrible", "is the lid twisted", "is it noon",
             "did Anna meet Bob", "is the answer yes", "is 100 more than 12", "is the review positive"]


def suite(max_nfr: float) -> str:
    return textwrap.dedent(f"""\
        tasks:
          - name: yesno
            kind: multiple_choice
            data: data.jsonl
            text: "Question: {{{{q}}}}?\\nAnswer:"
            choices: ["yes", "no"]
            label: "{{{{label}}}}"
            gate: {{max_nfr: {max_nfr}}}
          - name: echo
            kind: generative
            data: data.jsonl
            text: "Dialogue: {{{{q}}}}\\nSummary:"
            target: "{{{{q}}}}"
            max_new_tokens: 4
            gate: {{max_nfr_smooth: 1.0}}
        """)


@pytest.fixture
def project(pytester, tiny_adapter, tiny_adapter_v2):
    rows = [json.dumps({"q": question, "label": index % 2}) for index, question in enumerate(QUESTIONS)]
    pytester.makefile(".jsonl", data="\n".join(rows) + "\n")
    pytester.makefile(".yaml", modelcompat=suite(max_nfr=0.0))
    pytester.makeini("[pytest]\nfilterwarnings = ignore::pytest.PytestAssertRewriteWarning\n")
    pytester.compat_args = ["--old-adapter", str(tiny_adapter), "--new-adapter", str(tiny_adapter_v2),
                            "--compat-cache", str(pytester.path / "cache"), "--compat-device", "cpu", "-p",
                            "no:cacheprovider"]
    return pytester


def read_report(directory) -> dict:
    report = json.loads((directory / "report.json").read_text())
    jsonschema.validate(report, json.loads(schema_path().read_text()))
    return report


def test_gate_fails_with_a_verdict_then_passes_with_a_relaxed_threshold(project, tiny_adapter,
                                                                         tiny_adapter_v2):
    result = project.runpytest(*project.compat_args, "--compat-report", "out", "--junitxml", "junit.xml")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(passed=1, failed=1)
    report = read_report(project.path / "out")
    yesno = next(task for task in report["tasks"] if task["name"] == "yesno")
    assert yesno["n"] == len(yesno["instances"]) == len(QUESTIONS)
    nfr, (low, high) = yesno["metrics"]["nfr"], yesno["metrics"]["nfr_ci"]
    assert nfr > 0 and yesno["gate"]["passed"] is False
    negative_flips = sum(instance["quadrant"] == "negative_flip" for instance in yesno["instances"])
    assert nfr == pytest.approx(negative_flips / len(QUESTIONS))
    result.stdout.fnmatch_lines([
        "*modelcompat gate FAILED for task 'yesno' (multiple_choice, n=12)",
        f"*FAILED nfr = {nfr:.4f} (must be <= 0.0000)",
        f"*NFR {nfr:.4f}, 95% Wilson interval [[]{low:.4f}, {high:.4f}[]]*",
        f"Top negative flips ({min(negative_flips, 5)} of {negative_flips}):",
        "*- id * input 'Question: *?*Answer:'",
        "*old '*' | new '*' | gold '*'",
        f"*muscle train --suite {project.path / 'modelcompat.yaml'} --task yesno --old-adapter {tiny_adapter} "
        f"--new-adapter {tiny_adapter_v2} --output {tiny_adapter_v2}-muscle-yesno",
    ])
    # the rich summary: one row per task with the gate's verdict
    result.stdout.fnmatch_lines(["*= modelcompat =*", "*task*n*acc old → new*NFR [[]95% CI[]]*gate*",
                                 "*echo*generative*PASS*", "*yesno*multiple_choice*FAIL*"])
    assert (project.path / "out" / "report.md").read_text().count("| yesno |") == 1
    assert "<html" in (project.path / "out" / "report.html").read_text()
    properties = {p.get("name"): p.get("value") for p in ET.parse(project.path / "junit.xml").iter("property")}
    assert float(properties["yesno.nfr"]) == pytest.approx(nfr)
    assert properties["yesno.gate"] == "FAIL" and properties["echo.gate"] == "PASS"

    project.makefile(".yaml", modelcompat=suite(max_nfr=1.0))
    result = project.runpytest(*project.compat_args)
    assert result.ret == pytest.ExitCode.OK
    result.assert_outcomes(passed=2)


def test_compat_fixture_helpers_and_marker(project):
    project.makepyfile(test_gate="""
        import pytest

        def test_helpers_pass(compat, old_stack, new_stack):
            report = compat.evaluate("yesno")
            assert report.metrics["n"] == 12 and old_stack.fingerprint != new_stack.fingerprint
            report.assert_nfr_below(1.0)
            report.assert_nfr_mc_below(1.0)
            report.assert_btc_above(0.0)
            report.assert_no_accuracy_drop(tolerance=1.0)
            echo = compat.evaluate("echo")
            echo.assert_nfr_smooth_below(1.0)
            echo.assert_m_r_below(1.0)
            echo.assert_score_no_drop(tolerance=1.0)

        def test_helper_fails(compat):
            compat.evaluate("yesno").assert_btc_above(1.0)

        @pytest.mark.modelcompat(task="yesno", max_nfr=1.0)
        def test_marker_pass(compat):
            assert compat.report.passed

        @pytest.mark.modelcompat(task="yesno", max_nfr=0.0)
        def test_marker_fail():
            pass

        def test_unknown_task(compat):
            compat.evaluate("nope")
    """)
    result = project.runpytest(*project.compat_args, "test_gate.py", "--compat-limit", "12")
    result.assert_outcomes(passed=2, failed=3)
    result.stdout.fnmatch_lines(["*_ test_helper_fails _*", "*modelcompat gate FAILED for task 'yesno'*",
                                 "*FAILED btc = * (must be >= 1.0000)", "*muscle train --suite *"])
    result.stdout.fnmatch_lines(["*_ test_marker_fail _*", "*FAILED nfr = * (must be <= 0.0000)"])
    result.stdout.fnmatch_lines(["*_ test_unknown_task _*", "*modelcompat.yaml: no task named 'nope'; "
                                 "tasks are yesno, echo"])


def test_xdist_run_writes_the_same_report_as_a_serial_run(project):
    serial = project.runpytest(*project.compat_args, "--compat-report", "serial")
    # its own cache: the workers compute every prediction themselves
    parallel = project.runpytest(*project.compat_args, "--compat-cache", str(project.path / "cache2"),
                                 "--compat-report", "parallel", "-n", "2")
    assert serial.ret == parallel.ret == pytest.ExitCode.TESTS_FAILED
    assert read_report(project.path / "parallel") == read_report(project.path / "serial")
    assert (project.path / "parallel" / "report.md").read_text() == (project.path / "serial" / "report.md").read_text()
    parallel.stdout.fnmatch_lines(["*yesno*multiple_choice*FAIL*"])
