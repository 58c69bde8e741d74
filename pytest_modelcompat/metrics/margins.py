"""Decision margins and unstable flips, as pure functions (docs/margins.md).

A stack's *decision margin* on an instance is how far its decision was from going the other way.
Multiple choice: the gap between the best and the second-best choice's decision value
(log-likelihood in nats, or nats per character with ``normalize``). Generation (exact match,
generative): not defined for one stack (greedy decoding has no runner-up answer), so ``None``. A
flip (negative or positive) is *unstable* when it could be noise:

- multiple choice: both stacks' margins are below the noise margin (both were near ties);
- generative: |D(x)| is below the noise margin (the "flip" is a sliver of similarity);
- exact match: never (no margins).

``DEFAULT_NOISE_MARGIN`` (0.01) and its principle are documented in docs/margins.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from pytest_modelcompat.errors import CompatInputError
from pytest_modelcompat.metrics.flips import FLIP_QUADRANTS, check_lengths

# Below this a decision margin (nats) or |D(x)| is treated as noise (docs/margins.md): ~1 % in
# probability ratio, and > 300x the largest change of a gold margin when the same fp32 stack is
# re-scored at another batch size and order (3e-5 nats, benchmarks/results/aa_noise.md). It is the
# noise of the default dtype only: bf16 moves the same margins by up to ~1 nat (same file).
DEFAULT_NOISE_MARGIN = 0.01
# Added to a task's metrics by scoring.evaluate.compare (they need margins and the run's noise margin).
STABILITY_KEYS = ("unstable_flips", "unstable_negative_flips", "noise_margin")


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
    check_lengths(quadrants, old_margins, new_margins)
    return [
        q in FLIP_QUADRANTS and old is not None and new is not None and old < noise_margin and new < noise_margin
        for q, old, new in zip(quadrants, old_margins, new_margins)
    ]


def unstable_smooth_flips(
    old_scores: Sequence[float], new_scores: Sequence[float], noise_margin: float = DEFAULT_NOISE_MARGIN,
) -> list[bool]:
    """Generative: per instance, D(x) != 0 and |D(x)| < ``noise_margin`` (its flip margin is |D|)."""
    _check_noise_margin(noise_margin)
    check_lengths(old_scores, new_scores)
    return [new != old and abs(new - old) < noise_margin for old, new in zip(old_scores, new_scores)]


def unstable_counts(quadrants: Sequence[str], unstable: Sequence[bool]) -> dict[str, int]:
    """``unstable_flips`` (both directions) and ``unstable_negative_flips`` for the metrics dict."""
    check_lengths(quadrants, unstable)
    return {
        "unstable_flips": sum(1 for flag in unstable if flag),
        "unstable_negative_flips": sum(1 for q, flag in zip(quadrants, unstable) if flag and q == "negative_flip"),
    }
