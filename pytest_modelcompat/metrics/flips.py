"""Flip metrics between an old and a new model, as pure functions (docs/metrics.md).

Everything here works on plain Python sequences, one entry per instance, so the numbers every
verdict rests on can be checked by hand and by property tests without torch.

Discriminative tasks (multiple choice, exact match) compare correctness and predictions:

- NF(x) = old right and new wrong; NFR = #NF / N. PF(x) the reverse; PFR = #PF / N.
- NFR_mc = #(new wrong and new pred != old pred) / N: also counts "both wrong, differently".
- BTC = #(both right) / #(old right); BEC = #(both wrong) / #(new wrong). ``None`` when the
  denominator is 0: an undefined ratio is reported as undefined, never as a fake 0 or 1.
- Wilson 95 % score interval for NFR and PFR; exact two-sided McNemar p-value on (#NF, #PF);
  the paired bootstrap interval of Δacc (``intervals.py``).

Generative tasks compare a similarity S to the gold: D(x) = S(new) - S(old);
PFR~ = #(D > 0) / N, NFR~ = #(D < 0) / N, m_g = mean D over D > 0, m_r = mean |D| over D < 0
(0 when there are none); the paired bootstrap interval of Δscore.

Every function returns the full set of report keys so that metrics which do not apply to a kind
are present as ``None`` (the report schema's convention); the stability keys (unstable flips,
``margins.py``) are added by ``scoring.evaluate.compare``.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Sequence
from typing import Any

from pytest_modelcompat.errors import CompatInputError
from pytest_modelcompat.metrics.intervals import (
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    mcnemar_exact_p,
    paired_bootstrap_ci,
    wilson_interval,
)

QUADRANTS = ("both_correct", "positive_flip", "negative_flip", "both_wrong_same", "both_wrong_diff")
SMOOTH_QUADRANTS = ("positive_flip", "negative_flip", "unchanged")
FLIP_QUADRANTS = ("negative_flip", "positive_flip")

DISCRIMINATIVE_KEYS = (
    "acc_old", "acc_new", "acc_delta", "nfr", "pfr", "nfr_mc", "btc", "bec",
    "nfr_ci", "pfr_ci", "mcnemar_p", "acc_delta_ci",
)
GENERATIVE_KEYS = ("score_old", "score_new", "score_delta", "score_delta_ci", "pfr_smooth", "nfr_smooth",
                   "m_g", "m_r")
METRIC_KEYS = ("n", *DISCRIMINATIVE_KEYS, *GENERATIVE_KEYS, "counts")


def check_lengths(*columns: Sequence) -> int:
    n = len(columns[0])
    if any(len(column) != n for column in columns):
        raise ValueError(f"per-instance columns differ in length: {[len(c) for c in columns]}")
    if n == 0:
        raise CompatInputError(
            "no instances to compare (N = 0): check the task's data file and its `limit`"
        )
    return n


def quadrant(old_correct: bool, new_correct: bool, old_pred: Hashable, new_pred: Hashable) -> str:
    """Which of the five quadrants one instance falls in (for generation, preds are normalised)."""
    if old_correct and new_correct:
        return "both_correct"
    if new_correct:
        return "positive_flip"
    if old_correct:
        return "negative_flip"
    return "both_wrong_same" if old_pred == new_pred else "both_wrong_diff"


def smooth_quadrant(old_score: float, new_score: float) -> str:
    """Generative instances: the sign of D = S(new) - S(old)."""
    delta = new_score - old_score
    if delta > 0:
        return "positive_flip"
    if delta < 0:
        return "negative_flip"
    return "unchanged"


def _ratio(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


def _empty(n: int) -> dict[str, Any]:
    return {key: None for key in METRIC_KEYS} | {"n": n}


def discriminative_metrics(
    old_correct: Sequence[bool],
    new_correct: Sequence[bool],
    old_pred: Sequence[Hashable],
    new_pred: Sequence[Hashable],
    *,
    bootstrap_seed: int = BOOTSTRAP_SEED,
    resamples: int = BOOTSTRAP_RESAMPLES,
) -> dict[str, Any]:
    """Accuracy, NFR/PFR (+ Wilson CIs), NFR_mc, BTC, BEC, McNemar p, the paired bootstrap CI
    of Δacc and quadrant counts."""
    n = check_lengths(old_correct, new_correct, old_pred, new_pred)
    rows = list(zip(old_correct, new_correct, old_pred, new_pred))
    counts = Counter(quadrant(*row) for row in rows)
    nf, pf = counts["negative_flip"], counts["positive_flip"]
    old_right = sum(1 for o, *_ in rows if o)
    new_right = sum(1 for _, nw, *_ in rows if nw)
    # New wrong and a different answer from old: negative flips and "both wrong, differently".
    mc_flips = nf + counts["both_wrong_diff"]
    both_wrong = counts["both_wrong_same"] + counts["both_wrong_diff"]
    return _empty(n) | {
        "acc_old": old_right / n,
        "acc_new": new_right / n,
        "acc_delta": (new_right - old_right) / n,
        "nfr": nf / n,
        "pfr": pf / n,
        "nfr_mc": mc_flips / n,
        "btc": _ratio(counts["both_correct"], old_right),
        "bec": _ratio(both_wrong, n - new_right),
        "nfr_ci": list(wilson_interval(nf, n)),
        "pfr_ci": list(wilson_interval(pf, n)),
        "mcnemar_p": mcnemar_exact_p(nf, pf),
        "acc_delta_ci": paired_bootstrap_ci(
            [int(bool(nw)) - int(bool(o)) for o, nw, *_ in rows], resamples=resamples, seed=bootstrap_seed,
            estimate=(new_right - old_right) / n,
        ),
        "counts": {name: counts[name] for name in QUADRANTS},
    }


def discriminative_quadrants(
    old_correct: Sequence[bool],
    new_correct: Sequence[bool],
    old_pred: Sequence[Hashable],
    new_pred: Sequence[Hashable],
) -> list[str]:
    check_lengths(old_correct, new_correct, old_pred, new_pred)
    return [quadrant(*row) for row in zip(old_correct, new_correct, old_pred, new_pred)]


def generative_metrics(
    old_scores: Sequence[float], new_scores: Sequence[float], *, bootstrap_seed: int = BOOTSTRAP_SEED,
    resamples: int = BOOTSTRAP_RESAMPLES,
) -> dict[str, Any]:
    """Mean similarity old/new, the paired bootstrap CI of Δscore and the smooth flip metrics over
    D = S(new) - S(old)."""
    n = check_lengths(old_scores, new_scores)
    for score in (*old_scores, *new_scores):
        if not math.isfinite(score):
            raise ValueError(f"similarity scores must be finite, got {score!r}")
    deltas = [new - old for old, new in zip(old_scores, new_scores)]
    gains = [d for d in deltas if d > 0]
    regressions = [-d for d in deltas if d < 0]
    score_old = math.fsum(old_scores) / n
    score_new = math.fsum(new_scores) / n
    return _empty(n) | {
        "score_old": score_old,
        "score_new": score_new,
        "score_delta": score_new - score_old,
        "score_delta_ci": paired_bootstrap_ci(deltas, resamples=resamples, seed=bootstrap_seed,
                                              estimate=score_new - score_old),
        "pfr_smooth": len(gains) / n,
        "nfr_smooth": len(regressions) / n,
        "m_g": math.fsum(gains) / len(gains) if gains else 0.0,
        "m_r": math.fsum(regressions) / len(regressions) if regressions else 0.0,
        "counts": {name: 0 for name in SMOOTH_QUADRANTS}
        | Counter(smooth_quadrant(o, w) for o, w in zip(old_scores, new_scores)),
    }


def generative_quadrants(old_scores: Sequence[float], new_scores: Sequence[float]) -> list[str]:
    check_lengths(old_scores, new_scores)
    return [smooth_quadrant(o, w) for o, w in zip(old_scores, new_scores)]


