"""Intervals and tests of the flip metrics, as pure functions (docs/metrics.md).

- Wilson 95 % score interval of a proportion (NFR, PFR), well behaved at 0 and N;
- exact two-sided McNemar p-value on (#NF, #PF);
- paired uncertainty for the deltas: Δacc = acc_new - acc_old and Δscore = score_new - score_old
  are means of the per-instance paired differences d(x) (correct_new - correct_old ∈ {-1, 0, 1},
  or D(x)). ``paired_bootstrap_ci`` resamples the *instances* (each keeps its old and new result
  together, so the correlation between the stacks is respected) ``BOOTSTRAP_RESAMPLES`` times
  with a seeded generator and takes the 2.5 / 97.5 % percentiles of the resampled mean d:
  ``acc_delta_ci`` and ``score_delta_ci``. Deterministic for a given seed (default
  ``BOOTSTRAP_SEED``); identical columns give exactly [0, 0].
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction

from pytest_modelcompat.errors import CompatInputError

# Two-sided 95 %: the 0.975 quantile of the standard normal.
Z_95 = 1.959963984540054
# Paired bootstrap of the deltas: resamples and the seed of numpy's default generator (PCG64).
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
# Resampled index matrices are drawn in blocks of at most this many entries (bounded memory).
_BOOTSTRAP_BLOCK = 1 << 22


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
