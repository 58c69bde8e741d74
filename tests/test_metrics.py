"""Flip metrics against hand-computed cases and properties (docs/metrics.md)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_modelcompat.errors import CompatInputError
from pytest_modelcompat.metrics.flips import (
    METRIC_KEYS,
    QUADRANTS,
    discriminative_metrics,
    discriminative_quadrants,
    generative_metrics,
    generative_quadrants,
)
from pytest_modelcompat.metrics.intervals import mcnemar_exact_p, wilson_interval

# Ten instances, gold = 0 everywhere, worked by hand:
#   0-3 both right; 4, 5 negative flips; 6 positive flip;
#   7 and 9 both wrong with the same answer; 8 both wrong with different answers.
OLD_PRED = [0, 0, 0, 0, 0, 0, 1, 2, 1, 3]
NEW_PRED = [0, 0, 0, 0, 1, 2, 0, 2, 3, 3]
OLD_OK = [p == 0 for p in OLD_PRED]
NEW_OK = [p == 0 for p in NEW_PRED]


def test_discriminative_hand_computed():
    m = discriminative_metrics(OLD_OK, NEW_OK, OLD_PRED, NEW_PRED)
    assert m["n"] == 10
    assert m["acc_old"] == 0.6 and m["acc_new"] == 0.5
    assert m["acc_delta"] == pytest.approx(-0.1)
    assert m["nfr"] == 0.2 and m["pfr"] == 0.1
    assert m["nfr_mc"] == 0.3  # 2 negative flips + 1 "both wrong, differently"
    assert m["btc"] == pytest.approx(4 / 6)
    assert m["bec"] == pytest.approx(3 / 5)  # 3 both-wrong of 5 new-wrong
    # Wilson 95 % for 2/10: (p + z²/2n ± z·sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n)
    assert m["nfr_ci"] == pytest.approx([0.0566822, 0.5098375], abs=1e-7)
    # McNemar exact on (2, 1): 2 * (C(3,0) + C(3,1)) / 2^3 = 1
    assert m["mcnemar_p"] == 1.0
    assert m["counts"] == {
        "both_correct": 4, "positive_flip": 1, "negative_flip": 2,
        "both_wrong_same": 2, "both_wrong_diff": 1,
    }
    # Generative-only metrics are present and null.
    assert set(m) == set(METRIC_KEYS)
    for key in ("score_old", "score_new", "pfr_smooth", "nfr_smooth", "m_g", "m_r"):
        assert m[key] is None


def test_quadrants_per_instance():
    assert discriminative_quadrants(OLD_OK, NEW_OK, OLD_PRED, NEW_PRED) == [
        "both_correct", "both_correct", "both_correct", "both_correct",
        "negative_flip", "negative_flip", "positive_flip",
        "both_wrong_same", "both_wrong_diff", "both_wrong_same",
    ]


def test_exact_match_same_answer_uses_normalised_strings():
    # exact match: "same" wrong answer = identical normalised answer
    m = discriminative_metrics([False, False], [False, False], ["12", "7"], ["12", "8"])
    assert m["counts"]["both_wrong_same"] == 1 and m["counts"]["both_wrong_diff"] == 1
    assert m["nfr_mc"] == 0.5 and m["nfr"] == 0.0


def test_undefined_ratios_are_none_not_fake_numbers():
    # old got nothing right: BTC undefined; new got nothing wrong: BEC undefined
    m = discriminative_metrics([False, False], [True, True], [1, 1], [0, 0])
    assert m["btc"] is None
    assert m["bec"] is None
    assert m["pfr"] == 1.0 and m["nfr"] == 0.0


def test_empty_task_is_a_clear_error():
    with pytest.raises(CompatInputError, match="N = 0"):
        discriminative_metrics([], [], [], [])
    with pytest.raises(CompatInputError, match="N = 0"):
        generative_metrics([], [])


def test_mismatched_lengths_are_a_bug():
    with pytest.raises(ValueError, match="differ in length"):
        discriminative_metrics([True], [True, False], [0], [0, 1])


@pytest.mark.parametrize(
    ("nf", "pf", "expected"),
    [
        (0, 0, 1.0),
        (0, 5, 2 / 32),  # 2 * C(5,0) / 2^5
        (9, 1, 22 / 1024),  # 2 * (C(10,0) + C(10,1)) / 2^10
        (3, 3, 1.0),
        (2, 1, 1.0),
        (5, 1, 2 * (1 + 6) / 64),
    ],
)
def test_mcnemar_exact_hand_computed(nf, pf, expected):
    assert mcnemar_exact_p(nf, pf) == pytest.approx(expected)


def test_mcnemar_large_counts_do_not_overflow():
    p = mcnemar_exact_p(600, 400)
    assert 0 < p < 1e-9


@pytest.mark.parametrize(("k", "n", "lo", "hi"), [(0, 10, 0.0, 0.277533), (10, 10, 0.722467, 1.0), (5, 10, 0.236593, 0.763407)])
def test_wilson_hand_computed(k, n, lo, hi):
    assert wilson_interval(k, n) == pytest.approx((lo, hi), abs=1e-6)


def test_generative_hand_computed():
    old = [0.5, 0.2, 0.3, 0.0]
    new = [0.75, 0.2, 0.125, 0.0]
    m = generative_metrics(old, new)
    # D = [0.25, 0, -0.175, 0]
    assert m["pfr_smooth"] == 0.25 and m["nfr_smooth"] == 0.25
    assert m["m_g"] == pytest.approx(0.25)
    assert m["m_r"] == pytest.approx(0.175)
    assert m["score_old"] == pytest.approx(0.25)
    assert m["score_new"] == pytest.approx(1.075 / 4)
    assert m["score_delta"] == pytest.approx(0.075 / 4)
    assert m["counts"] == {"positive_flip": 1, "negative_flip": 1, "unchanged": 2}
    for key in ("acc_old", "nfr", "nfr_mc", "btc", "bec", "nfr_ci", "mcnemar_p"):
        assert m[key] is None
    assert generative_quadrants(old, new) == ["positive_flip", "unchanged", "negative_flip", "unchanged"]


def test_generative_no_gains_or_regressions_gives_zero_means():
    m = generative_metrics([0.4, 0.4], [0.4, 0.4])
    assert m["m_g"] == 0.0 and m["m_r"] == 0.0
    assert m["pfr_smooth"] == 0.0 and m["nfr_smooth"] == 0.0


def test_generative_rejects_nan():
    with pytest.raises(ValueError, match="finite"):
        generative_metrics([math.nan], [0.1])


# ---- properties ---------------------------------------------------------------------------

@st.composite
def paired_predictions(draw):
    n = draw(st.integers(min_value=1, max_value=60))
    n_choices = draw(st.integers(min_value=2, max_value=4))
    gold = draw(st.lists(st.integers(0, n_choices - 1), min_size=n, max_size=n))
    old = draw(st.lists(st.integers(0, n_choices - 1), min_size=n, max_size=n))
    new = draw(st.lists(st.integers(0, n_choices - 1), min_size=n, max_size=n))
    old_ok = [o == g for o, g in zip(old, gold)]
    new_ok = [w == g for w, g in zip(new, gold)]
    return old_ok, new_ok, old, new


@given(paired_predictions())
def test_properties_of_discriminative_metrics(case):
    old_ok, new_ok, old, new = case
    m = discriminative_metrics(old_ok, new_ok, old, new)
    n = m["n"]
    assert m["nfr"] <= m["nfr_mc"] + 1e-12
    assert m["nfr"] - m["pfr"] == pytest.approx(m["acc_old"] - m["acc_new"])
    assert m["nfr"] <= 1 - m["acc_new"] + 1e-12
    old_right = sum(old_ok)
    nf = round(m["nfr"] * n)
    if old_right:
        assert m["btc"] == pytest.approx(1 - nf / old_right)
    else:
        assert m["btc"] is None
    for rate, (lo, hi) in ((m["nfr"], m["nfr_ci"]), (m["pfr"], m["pfr_ci"])):
        assert 0.0 <= lo <= rate <= hi <= 1.0
    assert sum(m["counts"].values()) == n
    assert set(m["counts"]) == set(QUADRANTS)
    assert 0.0 <= m["mcnemar_p"] <= 1.0


@given(st.integers(min_value=0, max_value=300))
def test_mcnemar_is_one_when_flips_balance(k):
    assert mcnemar_exact_p(k, k) == 1.0


@given(st.integers(0, 200), st.integers(0, 200))
def test_mcnemar_symmetric_and_matches_scipy(nf, pf):
    scipy_stats = pytest.importorskip("scipy.stats")
    p = mcnemar_exact_p(nf, pf)
    assert p == mcnemar_exact_p(pf, nf)
    if nf + pf:
        assert p == pytest.approx(scipy_stats.binomtest(nf, nf + pf, 0.5).pvalue, rel=1e-9, abs=1e-12)


@given(st.integers(1, 500).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))))
def test_wilson_contains_estimate_within_unit_interval(kn):
    k, n = kn
    lo, hi = wilson_interval(k, n)
    assert 0.0 <= lo <= k / n <= hi <= 1.0


@given(st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1)), min_size=1, max_size=50))
def test_properties_of_generative_metrics(pairs):
    old = [o for o, _ in pairs]
    new = [w for _, w in pairs]
    m = generative_metrics(old, new)
    assert 0 <= m["pfr_smooth"] + m["nfr_smooth"] <= 1 + 1e-12
    assert m["m_g"] >= 0 and m["m_r"] >= 0
    # mean D decomposes into gains minus regressions
    assert m["score_delta"] == pytest.approx(
        m["pfr_smooth"] * m["m_g"] - m["nfr_smooth"] * m["m_r"], abs=1e-9
    )
