"""Paired bootstrap intervals of Δacc / Δscore (metrics.intervals.paired_bootstrap_ci) and where they show."""

from __future__ import annotations

import json

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_modelcompat.errors import CompatInputError
from pytest_modelcompat.metrics.flips import discriminative_metrics, generative_metrics
from pytest_modelcompat.metrics.intervals import BOOTSTRAP_RESAMPLES, paired_bootstrap_ci
from pytest_modelcompat.report.markdown import md_cell, render_markdown
from pytest_modelcompat.report.records import build_report, schema_path
from pytest_modelcompat.report.terminal import terminal_table
from pytest_modelcompat.report.verdict import verdict_message
from tests.compat_results import sample_records

differences = st.lists(st.sampled_from([-1, 0, 1]), min_size=1, max_size=80)
scores = st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1)), min_size=1, max_size=40)


def test_at_least_a_thousand_resamples_by_default():
    assert BOOTSTRAP_RESAMPLES >= 1000


def test_hand_checkable_cases():
    # a single instance: every resample is that instance
    assert paired_bootstrap_ci([1]) == [1.0, 1.0]
    assert paired_bootstrap_ci([-0.25]) == [-0.25, -0.25]
    # all differences equal: every resampled mean is that value
    assert paired_bootstrap_ci([1, 1, 1, 1]) == pytest.approx([1.0, 1.0])
    # n = 2, d = (0, 1): resampled means 0, 0.5, 1 with probability 1/4, 1/2, 1/4
    low, high = paired_bootstrap_ci([0, 1])
    assert (low, high) == (0.0, 1.0)


def test_identical_columns_give_exactly_zero():
    m = discriminative_metrics([True, False, True], [True, False, True], [0, 1, 0], [0, 1, 0])
    assert m["acc_delta"] == 0 and m["acc_delta_ci"] == [0.0, 0.0]
    g = generative_metrics([0.1, 0.7, 0.3], [0.1, 0.7, 0.3])
    assert g["score_delta_ci"] == [0.0, 0.0]
    # both wrong in different ways is no change in correctness either
    m = discriminative_metrics([False, False], [False, False], [1, 2], [2, 1])
    assert m["acc_delta_ci"] == [0.0, 0.0]


def test_seed_determinism_and_seed_dependence():
    d = [1, 0, 0, -1, 1, 0, 0, 0, -1, 1, 1, 0, 0, 1]
    assert paired_bootstrap_ci(d, seed=7) == paired_bootstrap_ci(d, seed=7)
    assert paired_bootstrap_ci(d) == paired_bootstrap_ci(list(d))
    assert paired_bootstrap_ci(d, seed=7, resamples=200) != paired_bootstrap_ci(d, seed=8, resamples=200)
    old = [True] * 6 + [False] * 4
    new = [True, False] * 5
    first = discriminative_metrics(old, new, [0] * 10, [0, 1] * 5)
    again = discriminative_metrics(old, new, [0] * 10, [0, 1] * 5)
    assert first["acc_delta_ci"] == again["acc_delta_ci"]


def test_width_shrinks_with_n():
    # the same mix of differences (30 % +1, 10 % -1, 60 % 0) at growing N
    pattern = [1, 1, 1, -1, 0, 0, 0, 0, 0, 0]
    widths = []
    for repeats in (2, 8, 32, 128):
        low, high = paired_bootstrap_ci(pattern * repeats)
        assert low <= 0.2 <= high
        widths.append(high - low)
    assert widths == sorted(widths, reverse=True) and widths[-1] < widths[0] / 4


def test_interval_matches_the_normal_approximation_at_large_n():
    d = [1] * 30 + [-1] * 10 + [0] * 160          # mean 0.1, sd of d ≈ 0.436
    low, high = paired_bootstrap_ci(d, resamples=4000)
    half = 1.96 * (sum((x - 0.1) ** 2 for x in d) / len(d)) ** 0.5 / len(d) ** 0.5
    assert low == pytest.approx(0.1 - half, abs=0.01) and high == pytest.approx(0.1 + half, abs=0.01)


def test_bad_arguments():
    with pytest.raises(CompatInputError, match="N = 0"):
        paired_bootstrap_ci([])
    with pytest.raises(ValueError, match="resamples"):
        paired_bootstrap_ci([1], resamples=0)
    with pytest.raises(ValueError, match="finite"):
        paired_bootstrap_ci([float("nan")])


@settings(max_examples=60)
@given(differences, st.integers(0, 2**32 - 1))
def test_interval_contains_the_estimate_within_the_range_of_d(d, seed):
    low, high = paired_bootstrap_ci(d, seed=seed, resamples=1000)
    mean = sum(d) / len(d)
    assert min(d) <= low <= mean + 1e-12 and mean - 1e-12 <= high <= max(d)


@settings(max_examples=40)
@given(scores)
def test_generative_interval_contains_score_delta(pairs):
    g = generative_metrics([o for o, _ in pairs], [w for _, w in pairs])
    low, high = g["score_delta_ci"]
    assert low <= g["score_delta"] <= high
    assert g["acc_delta_ci"] is None


@settings(max_examples=40)
@given(st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=60))
def test_discriminative_interval_contains_acc_delta(pairs):
    old = [o for o, _ in pairs]
    new = [w for _, w in pairs]
    m = discriminative_metrics(old, new, [int(o) for o in old], [int(w) for w in new])
    low, high = m["acc_delta_ci"]
    assert -1 <= low <= m["acc_delta"] <= high <= 1
    assert m["score_delta_ci"] is None
    if old == new:
        assert m["acc_delta_ci"] == [0.0, 0.0]


# ---- where the intervals show ------------------------------------------------------------------


def test_reports_carry_the_intervals():
    records = sample_records()
    report = build_report(records)
    jsonschema.validate(report, json.loads(schema_path().read_text()))
    piqa, samsum = report["tasks"]
    assert piqa["metrics"]["acc_delta"] == pytest.approx(-0.1)
    low, high = piqa["metrics"]["acc_delta_ci"]
    assert low <= -0.1 <= high and samsum["metrics"]["acc_delta_ci"] is None
    low, high = samsum["metrics"]["score_delta_ci"]
    assert low <= samsum["metrics"]["score_delta"] <= high
    piqa_record = next(record for record in records if record["entry"]["name"] == "piqa")
    interval = f"[{low:+.3f}, {high:+.3f}]"
    table = terminal_table(records, width=240, color=False)
    assert "Δacc / Δscore [95% CI]" in table
    assert f"{samsum['metrics']['score_delta']:+.3f} {interval}" in table
    markdown = render_markdown(report, records)
    assert md_cell(f"{samsum['metrics']['score_delta']:+.3f} {interval}") in markdown
    lo, hi = piqa["metrics"]["acc_delta_ci"]
    assert f"Δacc -0.1000 [{lo:+.4f}, {hi:+.4f}] (95% paired bootstrap interval)" in verdict_message(piqa_record)


def test_schema_accepts_reports_without_the_new_keys_and_rejects_bad_intervals():
    schema = json.loads(schema_path().read_text())
    report = build_report(sample_records())
    for task in report["tasks"]:
        for key in ("acc_delta", "acc_delta_ci", "score_delta", "score_delta_ci"):
            del task["metrics"][key]
    jsonschema.validate(report, schema)           # a schema_version 1 report of an older version
    report["tasks"][0]["metrics"]["acc_delta_ci"] = [0.1]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(report, schema)
