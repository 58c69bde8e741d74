"""The task report a test gets from ``compat.evaluate(...)``, with its assertion helpers.

Each helper is a one-key gate (``metrics.gate.GATE_KEYS``): the comparison lives in ``metrics/gate.py`` alone,
so ``report.assert_nfr_below(0.05)`` and a suite's ``gate: {max_nfr: 0.05}`` can never disagree.
A failing helper fails the test with the same verdict a suite gate prints.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from pytest_modelcompat.report.verdict import verdict_message


class TaskReport:
    """One evaluated task: the ``TaskResult``, its report record and assertion helpers."""

    def __init__(self, result: Any, record: Mapping[str, Any]) -> None:
        self.result = result          # evaluate.TaskResult: instances, predictions, metrics, gate
        self.record = record          # report.task_record(...): what report.json/md/html show

    @property
    def name(self) -> str:
        return self.result.task.name

    @property
    def metrics(self) -> Mapping[str, Any]:
        return self.result.metrics

    @property
    def passed(self) -> bool:
        """Whether the task's own gate (suite ``gate:`` plus overrides) passed."""
        return bool(self.result.gate.passed)

    def verdict(self) -> str:
        return verdict_message(self.record)

    def __repr__(self) -> str:
        return f"<TaskReport {self.name!r} n={len(self.result.instances)} passed={self.passed}>"

    def assert_gate(self) -> None:
        """Fail the test unless every check of the task's gate passed."""
        if not self.passed:
            pytest.fail(self.verdict(), pytrace=False)

    def _assert(self, key: str, threshold: float) -> None:
        from pytest_modelcompat.metrics.gate import evaluate_gate
        from pytest_modelcompat.scoring.evaluate import NONFINITE_CHECK

        # with the task's gate saying exclude_unstable: true, helpers see what the gate saw
        metrics = getattr(self.result, "gate_metrics", None) or self.result.metrics
        checks = evaluate_gate(metrics, {key: threshold}, self.result.task.kind).checks
        # NaN/inf scores fail every helper too: the metrics of such a run mean nothing
        checks += tuple(check for check in self.result.gate.checks if check.metric == NONFINITE_CHECK)
        if not all(check.passed for check in checks):
            pytest.fail(verdict_message(self.record, [check.to_dict() for check in checks]), pytrace=False)

    def assert_nfr_below(self, max_nfr: float) -> None:
        """NFR <= ``max_nfr`` (gate key ``max_nfr``)."""
        self._assert("max_nfr", max_nfr)

    def assert_nfr_upper_below(self, max_nfr_upper: float) -> None:
        """Upper end of NFR's 95 % Wilson interval <= ``max_nfr_upper`` (``max_nfr_upper``)."""
        self._assert("max_nfr_upper", max_nfr_upper)

    def assert_nfr_mc_below(self, max_nfr_mc: float) -> None:
        """NFR_mc <= ``max_nfr_mc`` (``max_nfr_mc``)."""
        self._assert("max_nfr_mc", max_nfr_mc)

    def assert_btc_above(self, min_btc: float) -> None:
        """BTC >= ``min_btc`` (``min_btc``)."""
        self._assert("min_btc", min_btc)

    def assert_no_accuracy_drop(self, tolerance: float = 0.0) -> None:
        """acc_new - acc_old >= -``tolerance`` (``min_acc_delta``)."""
        self._assert("min_acc_delta", -tolerance)

    def assert_nfr_smooth_below(self, max_nfr_smooth: float) -> None:
        """Generative: NFR~ <= ``max_nfr_smooth`` (``max_nfr_smooth``)."""
        self._assert("max_nfr_smooth", max_nfr_smooth)

    def assert_m_r_below(self, max_m_r: float) -> None:
        """Generative: mean regression magnitude m_r <= ``max_m_r`` (``max_m_r``)."""
        self._assert("max_m_r", max_m_r)

    def assert_score_no_drop(self, tolerance: float = 0.0) -> None:
        """Generative: score_new - score_old >= -``tolerance`` (``min_score_delta``)."""
        self._assert("min_score_delta", -tolerance)
