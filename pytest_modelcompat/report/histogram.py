"""The histogram of D(x) = S(new) − S(old) over a generative task's instances, drawn as inline SVG
for report.html (the page fetches nothing, so the figure is markup computed here)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

from markupsafe import Markup

MAX_BINS = 30
REGRESSION_COLOR = "#cf222e"
GAIN_COLOR = "#1a7f37"


class Bin(NamedTuple):
    """Instances with D in [low, high) (a bin below 0) or in (low, high] (a bin above 0)."""

    low: float
    high: float
    count: int


def delta_histogram(deltas: Sequence[float]) -> tuple[Bin, ...]:
    """The bins of a task's nonzero D(x), in increasing D; none when every D is 0.

    The bins span the data's own range [min D, max D] (not [-1, 1]: a custom similarity need not
    lie in [0, 1]) with ⌈√n⌉ bins of equal width (the square-root rule, n = nonzero D, at most
    MAX_BINS), shifted so that 0 is a bin edge: no bin mixes regressions with gains, which adds at
    most one bin. D = 0 is left out (the quadrant matrix counts it): identical generations would
    dwarf every other bar.
    """
    changes = [delta for delta in deltas if delta != 0]
    if not changes:
        return ()
    low, high = min(changes), max(changes)
    bin_count = min(MAX_BINS, math.ceil(math.sqrt(len(changes))))
    width = (high - low) / bin_count if high > low else abs(low)

    def index(delta: float) -> int:
        # bin k spans [k·width, (k+1)·width) below 0 and (k·width, (k+1)·width] above; the min/max
        # keep a D so small that D / width rounds to 0 on its own side of 0
        return min(-1, math.floor(delta / width)) if delta < 0 else max(0, math.ceil(delta / width) - 1)

    first = index(low)
    counts = [0] * (index(high) - first + 1)
    for delta in changes:
        counts[index(delta) - first] += 1
    return tuple(Bin((first + i) * width, (first + i + 1) * width, count) for i, count in enumerate(counts))


def _number(value: float) -> str:
    return "0" if value == 0 else f"{value:.3g}"


def histogram_svg(bins: Sequence[Bin], *, width: int = 360, height: int = 150) -> Markup:
    """The histogram of ``bins`` as an ``<svg>`` element: a bar per bin that has instances (red
    below 0, green above; its range and count in a ``<title>`` tooltip), the D axis with its ends
    and 0 labelled. Only numbers and fixed words go into the markup."""
    if not bins:
        raise ValueError("a histogram without bins (every D is 0) has nothing to draw")
    left, right, top, bottom = 30, 10, 10, 34
    plot_width, plot_height = width - left - right, height - top - bottom
    axis_low, axis_high = bins[0].low, bins[-1].high
    tallest = max(bin_.count for bin_ in bins)

    def x(value: float) -> float:
        return left + (value - axis_low) / (axis_high - axis_low) * plot_width

    baseline = top + plot_height
    elements = []
    for bin_ in bins:
        if not bin_.count:
            continue
        bar_height = plot_height * bin_.count / tallest
        below = bin_.high <= 0
        interval = (f"[{_number(bin_.low)}, {_number(bin_.high)})" if below
                    else f"({_number(bin_.low)}, {_number(bin_.high)}]")
        elements.append(
            f'<rect x="{x(bin_.low):.1f}" y="{baseline - bar_height:.1f}" '
            f'width="{max(1.0, x(bin_.high) - x(bin_.low) - 1):.1f}" height="{bar_height:.1f}" '
            f'fill="{REGRESSION_COLOR if below else GAIN_COLOR}">'
            f'<title>D in {interval}: {bin_.count} instance{"" if bin_.count == 1 else "s"}</title></rect>')
    elements.append(f'<line x1="{left}" y1="{baseline}" x2="{left + plot_width}" y2="{baseline}" stroke="#57606a"/>')
    ticks = [axis_low, axis_high]
    if axis_low < 0 < axis_high:
        ticks.insert(1, 0.0)
        elements.append(f'<line x1="{x(0.0):.1f}" y1="{top}" x2="{x(0.0):.1f}" y2="{baseline}" '
                        'stroke="#57606a" stroke-dasharray="3 3"/>')
    elements += [f'<text x="{x(tick):.1f}" y="{baseline + 13}" text-anchor="middle">{_number(tick)}</text>'
                 for tick in ticks]
    elements.append(f'<text x="{left - 4}" y="{top + 8}" text-anchor="end">{tallest}</text>')
    elements.append(f'<text x="{left - 4}" y="{baseline}" text-anchor="end">0</text>')
    elements.append(f'<text x="{left + plot_width / 2:.1f}" y="{height - 4}" text-anchor="middle">'
                    'D(x) = S(new) − S(old)</text>')
    return Markup(
        f'<svg class="histogram" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" font-size="10" '
        f'aria-label="histogram of D(x) over {sum(b.count for b in bins)} instances with D ≠ 0">'
        + "".join(elements) + "</svg>")
