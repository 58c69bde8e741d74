"""The message of a failing gate: what a failing gate test shows (``TaskReport.verdict()``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pytest_modelcompat.report.formatting import (
    delta_text,
    excerpt,
    fmt,
    fmt_ci,
    is_generative,
    margin_text,
    top_negative_flips,
    unstable_line,
)


def _check_line(check: Mapping[str, Any]) -> str:
    return (f"{check['metric']} = {fmt(check['value'], 4)} (must be {check['op']} "
            f"{fmt(check['threshold'], 4)})")


def verdict_message(record: Mapping[str, Any], checks: Sequence[Mapping[str, Any]] | None = None) -> str:
    """Why a gate failed: every failed check, NFR with its Wilson interval (or the smooth metrics),
    the top negative flips and the ``muscle train`` command that addresses them.

    ``checks`` defaults to the task's gate checks (an assertion helper passes its own).
    """
    entry = record["entry"]
    m = entry["metrics"]
    checks = entry["gate"]["checks"] if checks is None else checks
    failed = [check for check in checks if not check["passed"]]
    lines = [f"modelcompat gate FAILED for task {entry['name']!r} ({entry['kind']}, n={entry['n']})"]
    lines += [f"  FAILED {_check_line(check)}" for check in failed]
    if is_generative(entry):
        lines.append(f"  score old {fmt(m['score_old'])} -> new {fmt(m['score_new'])}; "
                     f"NFR~ {fmt(m['nfr_smooth'])}, PFR~ {fmt(m['pfr_smooth'])}, "
                     f"m_r {fmt(m['m_r'])}, m_g {fmt(m['m_g'])}")
        lines.append(f"  Δscore {delta_text(entry, 4)} (95% paired bootstrap interval)")
    else:
        lines.append(f"  NFR {fmt(m['nfr'], 4)}, 95% Wilson interval {fmt_ci(m['nfr_ci'], 4)}; "
                     f"PFR {fmt(m['pfr'], 4)}; McNemar p = {fmt(m['mcnemar_p'], 4)}")
        lines.append(f"  acc old {fmt(m['acc_old'])} -> new {fmt(m['acc_new'])}, "
                     f"Δacc {delta_text(entry, 4)} (95% paired bootstrap interval); "
                     f"NFR_mc {fmt(m['nfr_mc'])}; BTC {fmt(m['btc'])}")
    if (line := unstable_line(entry)) is not None:
        lines.append(line)
    flips = top_negative_flips(record)
    total = sum(instance["quadrant"] == "negative_flip" for instance in entry["instances"])
    lines.append(f"Top negative flips ({len(flips)} of {total}):")
    for instance, detail in flips:
        scores = ""
        if is_generative(entry):
            scores = f" [score {fmt(instance['old']['score'])} -> {fmt(instance['new']['score'])}]"
            if instance.get("unstable"):
                scores += " (unstable)"
        elif margins := margin_text(entry, instance):
            scores = f" [margins {margins}]"
        lines.append(f"  - id {instance['id']}{scores}: input {excerpt(detail['input'])!r}")
        lines.append(f"      old {excerpt(detail['old'], 60)!r} | new {excerpt(detail['new'], 60)!r} "
                     f"| gold {excerpt(detail['gold'], 60)!r}")
    lines.append("To keep the new stack's gains without these flips, train a compatibility adapter:")
    lines.append(f"  {record['muscle_command']}")
    return "\n".join(lines)
