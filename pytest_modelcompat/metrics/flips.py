"""Flip metrics between an old and a new model, as pure functions (docs/metrics.md).

Everything here works on plain Python sequences, one entry per instance, so the numbers every
verdict rests on can be checked by hand and by property tests without torch.

Discriminative tasks (multiple choice, exact match) compare correctness and predictions:

- NF(x) = old right and new wrong; NFR = #NF / N. PF(x) the reverse; PFR = #PF / N.
- NFR_mc = #(new wrong and new pred != old pred) / N: also counts "both wrong, differently".
- BTC = #(both right) / #(old right); BEC = #(both wrong) / #(new wrong). ``None`` when the
  denominator is 0: an undefined ratio is reported as undefined, never as a fake 0 or 1.
- Wilson 95 % score interval for NFR and PFR; exact two-sided McNemar p-value on (#NF, #PF).

Generative tasks compare a similarity S to the gold: D(x) = S(new) - S(old);
PFR~ = #(D > 0) / N, NFR~ = #(D < 0) / N, m_g = mean D over D > 0, m_r = mean |D| over D < 0
(0 when there are none).

Paired uncertainty for the deltas: Δacc = acc_new - acc_old and Δscore = score_new - score_old are
means of the per-instance paired differences d(x) (correct_new - correct_old ∈ {-1, 0, 1}, or D(x)).
``paired_bootstrap_ci`` resamples the *instances* (each keeps its old and new result together, so
the correlation between the stacks is respected) ``BOOTSTRAP_RESAMPLES`` times with a seeded
generator and takes the 2.5 / 97.5 % percentiles of the resampled mean d: ``acc_delta_ci`` and
``score_delta_ci``. Deterministic for a given seed (default ``BOOTSTRAP_SEED``); identical
columns give exactly [0, 0].

Margins and unstable flips: a stack's *decision margin* on an instance is how far its decision was
from going the other way. Multiple choice: the gap between the best and the second-best choice's
decision value (log-likelihood in nats, or nats per character with ``normalize``). Generation
(exact match, generative): not defined for one stack (greedy decoding has no runner-up answer),
so ``None``. A flip (negative or positive) is *unstable* when it could be noise:

- multiple choice: both stacks' margins are below the noise margin (both were near ties);
- generative: |D(x)| is below the noise margin (the "flip" is a sliver of similarity);
- exact match: never (no margins).

``DEFAULT_NOISE_MARGIN`` (0.01) and its principle are documented in docs/margins.md.

Every function returns the full set of report keys so that metrics which do not apply to a kind
are present as ``None`` (the report schema's convention).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Sequence
from fractions import Fraction
from typing import Any

from pytest_modelcompat.errors import CompatInputError

QUADRANTS = ("both_correct", "positive_flip", "negative_flip", "both_wrong_same", "both_wrong_diff")
SMOOTH_QUADRANTS = ("positive_flip", "negative_flip", "unchanged")

# Two-sided 95 %: the 0.975 quantile of the standard normal.
Z_95 = 1.959963984540054
# Paired bootstrap of the deltas: resamples and the seed of numpy's default generator (PCG64).
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
# Below this a decision margin (nats) or |D(x)| is treated as noise (docs/margins.md): ~1 % in
# probability ratio, the size of bf16 rounding on the log-probability of a short continuation, and
# 1000x the 1e-5 to which fp32 scores of one stack repeat across batch sizes and orders.
DEFAULT_NOISE_MARGIN = 0.01
FLIP_QUADRANTS = ("negative_flip", "positive_flip")
# Resampled index matrices are drawn in blocks of at most this many entries (bounded memory).
_BOOTSTRAP_BLOCK = 1 << 22

DISCRIMINATIVE_KEYS = (
    "acc_old", "acc_new", "acc_delta", "nfr", "pfr", "nfr_mc", "btc", "bec",
    "nfr_ci", "pfr_ci", "mcnemar_p", "acc_delta_ci",
)
GENERATIVE_KEYS = ("score_old", "score_new", "score_delta", "score_delta_ci", "pfr_smooth", "nfr_smooth",
                   "m_g", "m_r")
METRIC_KEYS = ("n", *DISCRIMINATIVE_KEYS, *GENERATIVE_KEYS, "counts")
# Added by evaluate.evaluate_task (they need margins and the run's noise margin).
STABILITY_KEYS = ("unstable_flips", "unstable_negative_flips", "noise_margin")


def _check_lengths(*columns: Sequence) -> int:
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


def wilson_interval(k: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion k/n (well behaved at k = 0 and k = n)."""
    if n <= 0:
        raise ValueError("wilson_interval needs n > 0")
    if not 0 <= k <= n:
        raise ValueError(f"wilson_interval needs 0 <= k <= n, got k={k}, n={n}")
    p = k / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    # At k = 0 (k = n) the lower (upper) bound is exactly 0 (1); rounding would leave ±1e-17.
    lower = 0.0 if k == 0 else max(0.0, centre - half)
    upper = 1.0 if k == n else min(1.0, centre + half)
    return lower, upper


def mcnemar_exact_p(negative_flips: int, positive_flips: int) -> float:
    """Exact two-sided McNemar p-value: a binomial test of #NF vs #PF among the discordant pairs.

    Computed with exact integer arithmetic, so large N neither overflows nor loses the tail.
    """
    if negative_flips < 0 or positive_flips < 0:
        raise ValueError("flip counts must be non-negative")
    discordant = negative_flips + positive_flips
    if discordant == 0:
        return 1.0
    tail = sum(math.comb(discordant, i) for i in range(min(negative_flips, positive_flips) + 1))
    return float(min(Fraction(1), Fraction(2 * tail, 2**discordant)))


def paired_bootstrap_ci(
    differences: Sequence[float], *, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED,
    confidence: float = 0.95, estimate: float | None = None,
) -> list[float]:
    """Percentile bootstrap interval for the mean of paired per-instance differences.

    Each resample draws N instances with replacement (numpy ``default_rng(seed)``, so the same
    inputs and seed always give the same interval) and takes the mean difference; the interval is
    the (1 - confidence) / 2 and (1 + confidence) / 2 quantiles of those means. The interval is
    widened, if ever needed, to contain the point estimate (``estimate``, default the mean
    difference: a percentile interval of a mean can miss it only through extreme skew at tiny N,
    or by a rounding ulp), and is exactly [0, 0] when every difference is 0.
    """
    import numpy as np

    if resamples < 1:
        raise ValueError(f"paired_bootstrap_ci needs resamples >= 1, got {resamples}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    values = np.asarray(differences, dtype=float)
    n = values.size
    if n == 0:
        raise CompatInputError("no instances to compare (N = 0): check the task's data file and its `limit`")
    if not np.all(np.isfinite(values)):
        raise ValueError("paired differences must be finite")
    mean = math.fsum(values.tolist()) / n if estimate is None else float(estimate)
    if not np.any(values):
        return [0.0, 0.0]
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    block = max(1, _BOOTSTRAP_BLOCK // n)
    for start in range(0, resamples, block):
        stop = min(resamples, start + block)
        means[start:stop] = values[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = (float(q) for q in np.quantile(means, [tail, 1 - tail]))
    return [min(low, mean), max(high, mean)]


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
    n = _check_lengths(old_correct, new_correct, old_pred, new_pred)
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
    _check_lengths(old_correct, new_correct, old_pred, new_pred)
    return [quadrant(*row) for row in zip(old_correct, new_correct, old_pred, new_pred)]


def generative_metrics(
    old_scores: Sequence[float], new_scores: Sequence[float], *, bootstrap_seed: int = BOOTSTRAP_SEED,
    resamples: int = BOOTSTRAP_RESAMPLES,
) -> dict[str, Any]:
    """Mean similarity old/new, the paired bootstrap CI of Δscore and the smooth flip metrics over
    D = S(new) - S(old)."""
    n = _check_lengths(old_scores, new_scores)
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
    _check_lengths(old_scores, new_scores)
    return [smooth_quadrant(o, w) for o, w in zip(old_scores, new_scores)]


# ---------------------------------------------------------------------------------------------
# margins and unstable flips


def decision_margin(values: Sequence[float] | None) -> float | None:
    """Best minus second-best decision value; ``None`` with fewer than two values or a non-finite one."""
    if values is None or len(values) < 2:
        return None
    if not all(math.isfinite(value) for value in values):
        return None
    first, second = sorted(values, reverse=True)[:2]
    return float(first - second)


def _check_noise_margin(noise_margin: float) -> None:
    if isinstance(noise_margin, bool) or not isinstance(noise_margin, (int, float)) \
            or not math.isfinite(noise_margin) or noise_margin < 0:
        raise CompatInputError(f"noise margin must be a finite number >= 0, got {noise_margin!r}")


def unstable_flips(
    quadrants: Sequence[str], old_margins: Sequence[float | None], new_margins: Sequence[float | None],
    noise_margin: float = DEFAULT_NOISE_MARGIN,
) -> list[bool]:
    """Discriminative: per instance, a flip whose old and new margins are both < ``noise_margin``.

    An instance without a margin on either side (exact match, non-finite scores) is never unstable.
    """
    _check_noise_margin(noise_margin)
    _check_lengths(quadrants, old_margins, new_margins)
    return [
        q in FLIP_QUADRANTS and old is not None and new is not None and old < noise_margin and new < noise_margin
        for q, old, new in zip(quadrants, old_margins, new_margins)
    ]


def unstable_smooth_flips(
    old_scores: Sequence[float], new_scores: Sequence[float], noise_margin: float = DEFAULT_NOISE_MARGIN,
) -> list[bool]:
    """Generative: per instance, D(x) != 0 and |D(x)| < ``noise_margin`` (its flip margin is |D|)."""
    _check_noise_margin(noise_margin)
    _check_lengths(old_scores, new_scores)
    return [new != old and abs(new - old) < noise_margin for old, new in zip(old_scores, new_scores)]


def unstable_counts(quadrants: Sequence[str], unstable: Sequence[bool]) -> dict[str, int]:
    """``unstable_flips`` (both directions) and ``unstable_negative_flips`` for the metrics dict."""
    _check_lengths(quadrants, unstable)
    return {
        "unstable_flips": sum(1 for flag in unstable if flag),
        "unstable_negative_flips": sum(1 for q, flag in zip(quadrants, unstable) if flag and q == "negative_flip"),
    }
