"""Decision margins and unstable flips on hand-made predictions: metrics, the gate's
``exclude_unstable``, reports, assertion helpers and the ``--compat-noise-margin`` option."""

from __future__ import annotations

import json
from types import SimpleNamespace

import jsonschema
import pytest

from pytest_modelcompat.assertions import TaskReport
from pytest_modelcompat.errors import CompatInputError
from pytest_modelcompat.metrics.gate import validate_gate
from pytest_modelcompat.metrics.margins import (
    DEFAULT_NOISE_MARGIN,
    decision_margin,
    unstable_counts,
    unstable_flips,
    unstable_smooth_flips,
)
from pytest_modelcompat.report.html_page import render_html
from pytest_modelcompat.report.markdown import render_markdown
from pytest_modelcompat.report.records import build_report, schema_path, stack_meta, task_record
from pytest_modelcompat.report.terminal import terminal_table
from pytest_modelcompat.report.verdict import verdict_message
from pytest_modelcompat.scoring.evaluate import compare
from pytest_modelcompat.scoring.predictions import Prediction, prediction_margin

pytest_plugins = ["pytester"]

META = stack_meta(SimpleNamespace(adapter="a1", base="b1", fingerprint="f" * 64))


def mc_task(gate=None, normalize=False):
    return SimpleNamespace(name="yesno", kind="multiple_choice", gate=gate or {}, normalize=normalize,
                           source="modelcompat.yaml", delimiter=" ")


def gen_task(gate=None):
    return SimpleNamespace(name="echo", kind="generative", gate=gate or {}, normalize=False,
                           source="modelcompat.yaml", delimiter=" ")


def mc_instances(n, choices=("yes", "no")):
    return [SimpleNamespace(id=str(i), context=f"Q{i}?", choices=choices, gold=0, doc={}) for i in range(n)]


def mc(logliks):
    pred = max(range(len(logliks)), key=lambda i: (logliks[i], -i))
    return Prediction(pred=pred, correct=pred == 0, score=logliks[pred], logliks=list(logliks))


def gen(score):
    return Prediction(pred="text", correct=None, score=score, text="text")


# Five instances, gold 0 everywhere, worked by hand (margins = |loglik gap|):
#   0 both right, margins 2.0 / 1.5
#   1 negative flip, margins 0.004 / 0.003  -> unstable (both < 0.01)
#   2 negative flip, margins 0.004 / 0.5    -> stable (new side decisive)
#   3 positive flip, margins 0.002 / 0.001  -> unstable
#   4 both wrong, margins 0.001 / 0.002     -> not a flip, never unstable
OLD = [mc([-1.0, -3.0]), mc([-1.0, -1.004]), mc([-1.0, -1.004]), mc([-1.002, -1.0]), mc([-2.001, -2.0])]
NEW = [mc([-1.0, -2.5]), mc([-1.003, -1.0]), mc([-1.5, -1.0]), mc([-1.0, -1.001]), mc([-2.002, -2.0])]


def test_decision_margin():
    assert decision_margin([-1.0, -3.0, -2.0]) == 1.0
    assert decision_margin([-1.0, -1.0]) == 0.0
    assert decision_margin([-1.0]) is None and decision_margin(None) is None
    assert decision_margin([float("nan"), -1.0]) is None


def test_margins_follow_the_decision_scale():
    instance = SimpleNamespace(id="0", choices=("a", "bbbb"), gold=0)
    prediction = mc([-2.0, -4.0])
    assert prediction_margin(prediction, instance, mc_task()) == pytest.approx(2.0)
    # acc_norm decides on loglik / characters: -2/1 vs -4/4 -> gap 1.0
    assert prediction_margin(prediction, instance, mc_task(normalize=True)) == pytest.approx(1.0)
    assert prediction_margin(gen(0.5), instance, gen_task()) is None          # generation: not defined


def test_unstable_flips_hand_computed():
    quadrants = ["both_correct", "negative_flip", "negative_flip", "positive_flip", "both_wrong_same"]
    old = [2.0, 0.004, 0.004, 0.002, 0.001]
    new = [1.5, 0.003, 0.5, 0.001, 0.002]
    flags = unstable_flips(quadrants, old, new, 0.01)
    assert flags == [False, True, False, True, False]
    assert unstable_counts(quadrants, flags) == {"unstable_flips": 2, "unstable_negative_flips": 1}
    # a margin equal to the threshold is not below it; no margin (exact match) is never unstable
    assert unstable_flips(["negative_flip"], [0.01], [0.0], 0.01) == [False]
    assert unstable_flips(["negative_flip"], [None], [None], 0.01) == [False]
    assert unstable_flips(quadrants, old, new, 0.0) == [False] * 5
    with pytest.raises(CompatInputError, match="noise margin"):
        unstable_flips(quadrants, old, new, -1)


def test_generative_flip_margin_is_abs_d():
    old = [0.5, 0.5, 0.5, 0.5]
    new = [0.505, 0.3, 0.5, 0.495]
    assert unstable_smooth_flips(old, new, 0.01) == [True, False, False, True]
    assert unstable_smooth_flips(old, new, 0.001) == [False] * 4


def test_compare_records_margins_and_counts_unstable_flips():
    result = compare(mc_task({"max_nfr": 0.0}), mc_instances(5), OLD, NEW, noise_margin=0.01)
    assert result.quadrants == ["both_correct", "negative_flip", "negative_flip", "positive_flip", "both_wrong_same"]
    assert result.old_margins == pytest.approx([2.0, 0.004, 0.004, 0.002, 0.001])
    assert result.new_margins == pytest.approx([1.5, 0.003, 0.5, 0.001, 0.002])
    assert result.unstable == [False, True, False, True, False]
    assert result.metrics["unstable_flips"] == 2 and result.metrics["unstable_negative_flips"] == 1
    assert result.metrics["noise_margin"] == 0.01
    # counted by default: both negative flips fail max_nfr 0
    assert result.metrics["nfr"] == pytest.approx(0.4) and not result.gate.passed
    assert result.gate_metrics is None
    assert result.gate.checks[0].value == pytest.approx(0.4)
    # the default noise margin
    assert compare(mc_task(), mc_instances(5), OLD, NEW).metrics["noise_margin"] == DEFAULT_NOISE_MARGIN


def test_exclude_unstable_leaves_them_out_of_the_gate_only():
    gate = {"max_nfr": 0.2, "min_acc_delta": 0.0}
    counted = compare(mc_task(gate), mc_instances(5), OLD, NEW, noise_margin=0.01)
    assert [check.passed for check in counted.gate.checks] == [False, False]      # nfr 0.4, Δacc -0.2
    excluded = compare(mc_task({**gate, "exclude_unstable": True}), mc_instances(5), OLD, NEW, noise_margin=0.01)
    # the reported metrics still count every flip ...
    assert excluded.metrics["nfr"] == pytest.approx(0.4)
    # ... the gate sees the run without the unstable flips (1 stable negative flip, no positive one)
    assert excluded.gate_metrics["nfr"] == pytest.approx(0.2) and excluded.gate_metrics["pfr"] == 0
    assert excluded.gate_metrics["acc_delta"] == pytest.approx(-0.2)
    assert [(c.metric, c.value, c.passed) for c in excluded.gate.checks] == [
        ("nfr", pytest.approx(0.2), True), ("acc_delta", pytest.approx(-0.2), False)]
    # the same through a marker-style override
    override = compare(mc_task({"max_nfr": 0.2}), mc_instances(5), OLD, NEW, noise_margin=0.01,
                       gate_override={"exclude_unstable": True})
    assert override.gate.passed
    # a noise margin of 1 nat makes the other negative flip (margins 0.004 / 0.5) unstable too
    wide = compare(mc_task({"max_nfr": 0.0, "exclude_unstable": True}), mc_instances(5), OLD, NEW,
                   noise_margin=1.0)
    assert wide.unstable == [False, True, True, True, False] and wide.gate.passed


def test_exclude_unstable_generative():
    task = gen_task({"max_nfr_smooth": 0.0, "exclude_unstable": True})
    instances = [SimpleNamespace(id=f"d{i}", context="c", choices=None, gold="g", doc={}) for i in range(3)]
    result = compare(task, instances, [gen(0.5), gen(0.5), gen(0.4)], [gen(0.495), gen(0.5), gen(0.4)],
                     noise_margin=0.01)
    assert result.unstable == [True, False, False]
    assert result.metrics["nfr_smooth"] == pytest.approx(1 / 3) and result.gate.passed
    assert result.old_margins == [None, None, None]


def test_gate_option_is_validated():
    assert validate_gate({"exclude_unstable": True, "max_nfr": 0.1}) == {"exclude_unstable": True, "max_nfr": 0.1}
    assert validate_gate({"exclude_unstable": False}, "generative") == {"exclude_unstable": False}
    for bad in ("yes", 1, None):
        with pytest.raises(CompatInputError, match="exclude_unstable must be true or false") as info:
            validate_gate({"exclude_unstable": bad}, "multiple_choice", where="suite.yaml: task t: gate")
        assert "\n" not in str(info.value)
    with pytest.raises(CompatInputError, match="valid keys are .*exclude_unstable"):
        validate_gate({"exclude_unstabel": True})


def test_assertion_helpers_see_what_the_gate_saw():
    result = compare(mc_task({"exclude_unstable": True}), mc_instances(5), OLD, NEW, noise_margin=0.01)
    report = TaskReport(result, task_record(result, META, META, nodeid="n", muscle_command="muscle train"))
    report.assert_nfr_below(0.2)
    with pytest.raises(pytest.fail.Exception):
        report.assert_nfr_below(0.1)


def test_reports_show_margins_and_unstable_flips():
    result = compare(mc_task({"max_nfr": 0.0, "exclude_unstable": True}), mc_instances(5), OLD, NEW,
                     noise_margin=0.01)
    record = task_record(result, META, META, nodeid="suite::yesno", muscle_command="muscle train ...")
    report = build_report([record])
    jsonschema.validate(report, json.loads(schema_path().read_text()))
    entry = report["tasks"][0]
    assert [instance["unstable"] for instance in entry["instances"]] == result.unstable
    assert entry["instances"][1]["old"]["margin"] == pytest.approx(0.004)
    assert entry["metrics"]["unstable_flips"] == 2 and entry["metrics"]["unstable_negative_flips"] == 1
    assert entry["gate"]["excluded_unstable"] == 2 and entry["gate"]["passed"] is False
    message = verdict_message(record)
    assert ("unstable flips: 2 of 3 (1 negative): both stacks' margins below the noise margin 0.0100; "
            "left out of the gate's checks (exclude_unstable: true)") in message
    assert "FAILED nfr = 0.2000 (must be <= 0.0000)" in message
    # the stable negative flip comes first, the unstable one is marked
    flips = [line for line in message.splitlines() if line.startswith("  - id")]
    assert flips == ["  - id 2 [margins old 0.004 / new 0.500]: input 'Q2?'",
                     "  - id 1 [margins old 0.004 / new 0.003, unstable]: input 'Q1?'"]
    markdown = render_markdown(report, [record])
    assert "| id | input | old | new | gold | margin |" in markdown
    assert "old 0.004 / new 0.003, unstable |" in markdown
    table = terminal_table([record], width=240, color=False)
    assert "unstable flips" in table
    page = render_html(report, [record])
    assert 'class="negative_flip unstable"' in page and "negative_flip (unstable)" in page


def test_counted_unstable_flips_say_how_to_leave_them_out():
    result = compare(mc_task({"max_nfr": 0.0}), mc_instances(5), OLD, NEW, noise_margin=0.01)
    record = task_record(result, META, META, nodeid="suite::yesno", muscle_command="muscle train ...")
    assert "excluded_unstable" not in record["entry"]["gate"]
    assert "counted by the gate (gate key exclude_unstable: true leaves them out)" in verdict_message(record)


@pytest.mark.parametrize("value", ["-0.1", "x", "nan"])
def test_noise_margin_option_is_a_usage_error(pytester, value):
    result = pytester.runpytest("--compat-noise-margin", value)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([
        f"ERROR: --compat-noise-margin (or ini modelcompat_compat_noise_margin) must be a number >= 0, got '{value}'"])


def test_noise_margin_option_from_ini(pytester):
    pytester.makeini("[pytest]\nmodelcompat_compat_noise_margin = 0.5\n")
    pytester.makeconftest("""
        def pytest_sessionstart(session):
            from pytest_modelcompat.plugin import _session
            print("noise margin", _session(session.config).options.noise_margin)
    """)
    pytester.makepyfile("def test_nothing(): pass")
    result = pytester.runpytest("-s")
    result.stdout.fnmatch_lines(["noise margin 0.5"])
    result = pytester.runpytest("-s", "--compat-noise-margin", "0")
    result.stdout.fnmatch_lines(["noise margin 0.0"])
