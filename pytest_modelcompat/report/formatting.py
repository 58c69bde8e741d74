"""Formatting every view of a report shares (terminal table, report.md, report.html, verdicts):
numbers, excerpts, the summary row of a task, Δ with its interval, margins, unstable flips and
the order instances are reviewed in and the top negative flips."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

TOP_FLIPS = 5
EXCERPT_CHARS = 120


def fmt(value: Any, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def fmt_delta(value: Any, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:+.{digits}f}"


def fmt_ci(interval: Sequence[float | None] | None, digits: int = 3) -> str:
    return "" if interval is None else f"[{fmt(interval[0], digits)}, {fmt(interval[1], digits)}]"


def excerpt(text: str, limit: int = EXCERPT_CHARS) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def is_generative(entry: Mapping[str, Any]) -> bool:
    return entry["kind"] == "generative"


def summary_row(entry: Mapping[str, Any]) -> dict[str, str]:
    """One summary row (column → text), shared by the terminal table, report.md and report.html."""
    m = entry["metrics"]
    generative = is_generative(entry)
    return {
        "task": entry["name"],
        "kind": entry["kind"],
        "n": str(entry["n"]),
        "acc old → new": "—" if generative else f"{fmt(m['acc_old'])} → {fmt(m['acc_new'])}",
        "Δacc / Δscore [95% CI]": delta_text(entry),
        "NFR [95% CI]": "—" if generative else f"{fmt(m['nfr'])} {fmt_ci(m['nfr_ci'])}",
        "PFR": "—" if generative else fmt(m["pfr"]),
        "NFR_mc": "—" if generative else fmt(m["nfr_mc"]),
        "BTC": "—" if generative else fmt(m["btc"]),
        "score old → new": f"{fmt(m['score_old'])} → {fmt(m['score_new'])}" if generative else "—",
        "NFR~": fmt(m["nfr_smooth"]) if generative else "—",
        "m_r": fmt(m["m_r"]) if generative else "—",
        "unstable flips": "—" if m.get("unstable_flips") is None else str(m["unstable_flips"]),
        "gate": "PASS" if entry["gate"]["passed"] else "FAIL",
    }


def delta_text(entry: Mapping[str, Any], digits: int = 3) -> str:
    """Δacc (discriminative) or Δscore (generative) with its paired bootstrap 95 % interval."""
    m = entry["metrics"]
    key = "score_delta" if is_generative(entry) else "acc_delta"
    value, interval = m.get(key), m.get(f"{key}_ci")
    if value is None:
        return "n/a"
    text = fmt_delta(value, digits)
    return text if interval is None else f"{text} [{fmt_delta(interval[0], digits)}, {fmt_delta(interval[1], digits)}]"


def score_change(instance: Mapping[str, Any]) -> float | None:
    """D(x) = S(new) − S(old) of a generative instance (report.json keeps the similarities as the
    predictions' ``score``); None when either is missing."""
    old, new = instance["old"]["score"], instance["new"]["score"]
    return None if old is None or new is None else new - old


# The order a reviewer reads a task's instances in: what broke, what improved, what changed while
# wrong, then what stayed the same.
REVIEW_ORDER = ("negative_flip", "positive_flip", "both_wrong_diff", "both_wrong_same", "both_correct", "unchanged")


def review_key(entry: Mapping[str, Any], instance: Mapping[str, Any]) -> tuple[int, bool, float]:
    """Sort key of an instance for review: its quadrant in REVIEW_ORDER, stable flips before
    unstable ones, on generative tasks the larger |D(x)| first; otherwise data order (sorts are stable)."""
    change = score_change(instance) if is_generative(entry) else None
    return REVIEW_ORDER.index(instance["quadrant"]), bool(instance.get("unstable")), -abs(change or 0.0)


def top_negative_flips(record: Mapping[str, Any], k: int = TOP_FLIPS) -> list[tuple[dict, dict]]:
    """Up to ``k`` negative flips as (instance entry, details) in review order: stable ones before
    unstable ones; generative: largest drop first."""
    flips = [(instance, detail) for instance, detail in zip(record["entry"]["instances"], record["details"])
             if instance["quadrant"] == "negative_flip"]
    flips.sort(key=lambda flip: review_key(record["entry"], flip[0]))
    return flips[:k]


def margin_text(entry: Mapping[str, Any], instance: Mapping[str, Any], digits: int = 3) -> str:
    """An instance's margins as a human reads them: multiple choice "old 0.412 / new 0.050", a
    generative flip "|D| 0.400"; "unstable" appended for an unstable flip; "" when undefined."""
    if is_generative(entry):
        change = score_change(instance)
        text = "" if not change else f"|D| {abs(change):.{digits}f}"
    else:
        old, new = instance["old"].get("margin"), instance["new"].get("margin")
        text = "" if old is None and new is None else f"old {fmt(old, digits)} / new {fmt(new, digits)}"
    if instance.get("unstable"):
        text = f"{text}, unstable" if text else "unstable"
    return text


def unstable_line(entry: Mapping[str, Any]) -> str | None:
    """The verdict's line about unstable flips (None when there are none)."""
    m = entry["metrics"]
    count = m.get("unstable_flips")
    if not count:
        return None
    flips = sum(instance["quadrant"] in ("negative_flip", "positive_flip") for instance in entry["instances"])
    side = "|D(x)|" if is_generative(entry) else "both stacks' margins"
    how = ("left out of the gate's checks (exclude_unstable: true)" if "excluded_unstable" in entry["gate"]
           else "counted by the gate (gate key exclude_unstable: true leaves them out)")
    return (f"  unstable flips: {count} of {flips} ({m.get('unstable_negative_flips', 0)} negative): "
            f"{side} below the noise margin {fmt(m.get('noise_margin'), 4)}; {how}")


def gate_headline(entries: Sequence[Mapping[str, Any]]) -> str:
    """The run's verdict in a few words, as report.md and report.html head it."""
    failed = sum(not entry["gate"]["passed"] for entry in entries)
    return f"gate FAILED ({failed} of {len(entries)} tasks)" if failed else f"gate passed ({len(entries)} tasks)"


def batch_invariance_text(report: Mapping[str, Any]) -> str:
    """The report.md / report.html line about batch invariance ("" for reports without it)."""
    if "batch_invariance_note" not in report:
        return ""
    answer = {True: "yes", False: "NOT guaranteed", None: "unknown"}[report.get("batch_invariant")]
    return f"batch-invariant scores: {answer} — {report['batch_invariance_note']}"
