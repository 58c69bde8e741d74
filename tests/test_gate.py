"""Gate thresholds → checks (gate keys: docs/metrics.md)."""

from __future__ import annotations

import pytest

from pytest_modelcompat.errors import CompatInputError
from pytest_modelcompat.metrics.flips import discriminative_metrics, generative_metrics
from pytest_modelcompat.metrics.gate import GATE_KEYS, evaluate_gate, validate_gate

MC = discriminative_metrics(
    [True, True, True, True, True, True, False, False, False, False],
    [True, True, True, True, False, False, True, False, False, False],
    [0, 0, 0, 0, 0, 0, 1, 2, 1, 3],
    [0, 0, 0, 0, 1, 2, 0, 2, 3, 3],
)


def test_checks_in_order_with_values():
    result = evaluate_gate(
        MC,
        {"max_nfr": 0.25, "max_nfr_upper": 0.5, "max_nfr_mc": 0.3, "min_btc": 0.7, "min_acc_delta": -0.1},
        "multiple_choice",
    )
    got = [(c.metric, c.op, c.threshold, round(c.value, 6), c.passed) for c in result.checks]
    assert got == [
        ("nfr", "<=", 0.25, 0.2, True),
        ("nfr_upper", "<=", 0.5, 0.509838, False),  # Wilson upper bound of 2/10
        ("nfr_mc", "<=", 0.3, 0.3, True),  # equal to the threshold passes
        ("btc", ">=", 0.7, 0.666667, False),
        ("acc_delta", ">=", -0.1, -0.1, True),
    ]
    assert not result.passed
    assert [c.metric for c in result.failed] == ["nfr_upper", "btc"]
    assert result.to_dict()["checks"][0] == {
        "metric": "nfr", "op": "<=", "threshold": 0.25, "value": 0.2, "passed": True,
    }


def test_empty_gate_passes():
    result = evaluate_gate(MC, {}, "multiple_choice")
    assert result.passed and result.checks == ()


def test_undefined_metric_passes_with_null_value():
    m = discriminative_metrics([False], [True], [1], [0])
    (check,) = evaluate_gate(m, {"min_btc": 0.9}, "multiple_choice").checks
    assert check.value is None and check.passed


def test_generative_gate():
    m = generative_metrics([0.5, 0.2, 0.3, 0.0], [0.75, 0.2, 0.125, 0.0])
    result = evaluate_gate(m, {"max_nfr_smooth": 0.2, "max_m_r": 0.2, "min_score_delta": 0.0}, "generative")
    assert [(c.metric, c.passed) for c in result.checks] == [
        ("nfr_smooth", False), ("m_r", True), ("score_delta", True),
    ]


@pytest.mark.parametrize(
    ("gate", "kind", "message"),
    [
        ({"max_nfrr": 0.1}, "multiple_choice", "unknown gate key 'max_nfrr'"),
        ({"max_nfr": "low"}, "multiple_choice", "must be a number"),
        ({"max_nfr": True}, "multiple_choice", "must be a number"),
        ({"max_nfr": 1.5}, "multiple_choice", "out of range"),
        ({"max_nfr": -0.1}, "multiple_choice", "out of range"),
        ({"min_acc_delta": -2}, "multiple_choice", "out of range"),
        ({"max_nfr": float("nan")}, "multiple_choice", "out of range"),
        ({"max_m_r": 0.1}, "multiple_choice", "does not apply to a multiple_choice task"),
        ({"max_nfr": 0.1}, "generative", "does not apply to a generative task"),
        ([0.1], "multiple_choice", "must be a mapping"),
    ],
)
def test_invalid_gates_are_one_line_errors(gate, kind, message):
    with pytest.raises(CompatInputError, match=message) as info:
        validate_gate(gate, kind, where="suite.yaml: task piqa")
    assert "\n" not in str(info.value)
    assert str(info.value).startswith("suite.yaml: task piqa")


def test_negative_delta_thresholds_allowed():
    assert validate_gate({"min_acc_delta": -0.02, "min_score_delta": -0.5}) == {
        "min_acc_delta": -0.02, "min_score_delta": -0.5,
    }


def test_every_spec_gate_key_is_known():
    assert set(GATE_KEYS) == {
        "max_nfr", "max_nfr_upper", "max_nfr_mc", "min_btc", "min_acc_delta",
        "max_nfr_smooth", "max_m_r", "min_score_delta",
    }
