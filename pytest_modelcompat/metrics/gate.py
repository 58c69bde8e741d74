"""Gate thresholds (a suite's ``gate:`` mapping, docs/metrics.md#gate-keys) turned into pass/fail checks.

Besides thresholds (``GATE_KEYS``) a gate may carry options (``GATE_OPTIONS``, booleans) that
change which numbers the thresholds see:

- ``exclude_unstable: true`` — flips marked unstable (both stacks' decision margins below the
  run's noise margin; see ``margins.unstable_flips``) do not count: the checks use metrics
  computed as if those instances had not flipped (``scoring.evaluate.compare``). Default false:
  every flip counts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from pytest_modelcompat.errors import CompatInputError

DISCRIMINATIVE_KINDS = ("multiple_choice", "exact_match")
GENERATIVE_KINDS = ("generative",)

# gate key -> (metric it bounds, comparison the metric must satisfy, kinds it applies to)
GATE_KEYS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "max_nfr": ("nfr", "<=", DISCRIMINATIVE_KINDS),
    "max_nfr_upper": ("nfr_upper", "<=", DISCRIMINATIVE_KINDS),
    "max_nfr_mc": ("nfr_mc", "<=", DISCRIMINATIVE_KINDS),
    "min_btc": ("btc", ">=", DISCRIMINATIVE_KINDS),
    "min_acc_delta": ("acc_delta", ">=", DISCRIMINATIVE_KINDS),
    "max_nfr_smooth": ("nfr_smooth", "<=", GENERATIVE_KINDS),
    "max_m_r": ("m_r", "<=", GENERATIVE_KINDS),
    "min_score_delta": ("score_delta", ">=", GENERATIVE_KINDS),
}
# gate option -> what it does (boolean; applies to every kind)
GATE_OPTIONS: dict[str, str] = {
    "exclude_unstable": "unstable flips (margins below the noise margin on both sides) do not count in the checks",
}
# Thresholds on rates must lie in [0, 1]; thresholds on differences of rates in [-1, 1].
_DELTA_KEYS = {"min_acc_delta", "min_score_delta"}


@dataclass(frozen=True)
class Check:
    metric: str
    op: str
    threshold: float
    value: float | None
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class GateResult:
    passed: bool
    checks: tuple[Check, ...]

    @property
    def failed(self) -> tuple[Check, ...]:
        return tuple(check for check in self.checks if not check.passed)

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "checks": [check.to_dict() for check in self.checks]}


def validate_gate(gate: Any, kind: str | None = None, where: str = "gate") -> dict[str, float | bool]:
    """Check a ``gate:`` mapping; return it with float thresholds (and bool options).
    ``where`` prefixes messages."""
    if gate is None:
        return {}
    if not isinstance(gate, Mapping):
        raise CompatInputError(f"{where}: must be a mapping of threshold keys, got {type(gate).__name__}")
    checked: dict[str, float | bool] = {}
    for key, threshold in gate.items():
        if key in GATE_OPTIONS:
            if not isinstance(threshold, bool):
                raise CompatInputError(
                    f"{where}: {key} must be true or false, got {threshold!r}; write e.g. {key}: true"
                )
            checked[key] = threshold
            continue
        if key not in GATE_KEYS:
            raise CompatInputError(
                f"{where}: unknown gate key {key!r}; valid keys are {', '.join([*GATE_KEYS, *GATE_OPTIONS])}"
            )
        _, _, kinds = GATE_KEYS[key]
        if kind is not None and kind not in kinds:
            raise CompatInputError(
                f"{where}: gate key {key!r} does not apply to a {kind} task (it applies to {', '.join(kinds)})"
            )
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
            raise CompatInputError(f"{where}: {key} must be a number, got {threshold!r}; write e.g. {key}: 0.05")
        low = -1.0 if key in _DELTA_KEYS else 0.0
        if not (math.isfinite(threshold) and low <= threshold <= 1.0):
            raise CompatInputError(
                f"{where}: {key} = {threshold!r} is out of range [{low:g}, 1]; rates and their bounds are fractions"
                f" (0.05 = 5 %)"
            )
        checked[key] = float(threshold)
    return checked


def metric_value(metrics: Mapping[str, Any], name: str) -> float | None:
    """A gated metric's value; ``nfr_upper`` is the upper end of NFR's Wilson interval."""
    if name == "nfr_upper":
        interval = metrics.get("nfr_ci")
        return None if interval is None else interval[1]
    return metrics.get(name)


def evaluate_gate(metrics: Mapping[str, Any], gate: Mapping[str, Any], kind: str) -> GateResult:
    """One check per gate key, in the order given.

    A metric that is undefined (``None``: e.g. BTC when the old model got nothing right) has
    nothing to regress, so its check passes with value ``None``; the report shows it as n/a.
    """
    checks = []
    for key, threshold in validate_gate(gate, kind).items():
        if key in GATE_OPTIONS:
            continue
        metric, op, _ = GATE_KEYS[key]
        value = metric_value(metrics, metric)
        if value is None:
            passed = True
        elif op == "<=":
            passed = value <= threshold
        else:
            passed = value >= threshold
        checks.append(Check(metric, op, threshold, value, passed))
    return GateResult(all(check.passed for check in checks), tuple(checks))


def excludes_unstable(gate: Mapping[str, Any] | None) -> bool:
    """Whether a (validated) gate mapping asks for unstable flips to be left out of its checks."""
    return bool((gate or {}).get("exclude_unstable", False))
