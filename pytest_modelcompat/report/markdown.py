"""report.md: sized for a PR comment — the summary table and the top flips of each task."""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pytest_modelcompat.report.formatting import (
    batch_invariance_text,
    gate_headline,
    margin_text,
    summary_row,
    top_negative_flips,
)
from pytest_modelcompat.report.records import sorted_records

_MD_SPECIAL = re.compile(r"([\\`*_\[\]|#~])")


def md_cell(text: Any, limit: int | None = None) -> str:
    """Text made safe for a GitHub Markdown table cell: one line, HTML and Markdown escaped."""
    text = " ".join(str(text).split())
    if limit is not None and len(text) > limit:
        text = text[: limit - 1] + "…"
    return _MD_SPECIAL.sub(r"\\\1", html.escape(text, quote=False))


def _md_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def render_markdown(report: Mapping[str, Any], records: Sequence[Mapping[str, Any]]) -> str:
    """report.md: sized for a PR comment — the summary table and the top flips of each task."""
    records = sorted_records(records)
    rows = [summary_row(record["entry"]) for record in records]
    lines = [
        "## modelcompat: " + gate_headline([record["entry"] for record in records]),
        "",
        f"old: `{md_cell(report['old']['adapter'])}` on `{md_cell(report['old']['base'])}` · "
        f"new: `{md_cell(report['new']['adapter'])}` on `{md_cell(report['new']['base'])}`",
        "",
        *([md_cell(text), ""] if (text := batch_invariance_text(report)) else []),
        *_md_table(list(rows[0]), ([md_cell(cell) for cell in row.values()] for row in rows)),
    ]
    for record in records:
        flips = top_negative_flips(record)
        if not flips:
            continue
        entry = record["entry"]
        lines += ["", f"<details><summary>{md_cell(entry['name'])}: top negative flips</summary>", ""]
        lines += _md_table(
            ["id", "input", "old", "new", "gold", "margin"],
            ([md_cell(instance["id"]), md_cell(detail["input"], 100), md_cell(detail["old"], 60),
              md_cell(detail["new"], 60), md_cell(detail["gold"], 60), md_cell(margin_text(entry, instance))]
             for instance, detail in flips),
        )
        if not entry["gate"]["passed"]:
            lines += ["", "Fix with a compatibility adapter:", "", "```", record["muscle_command"], "```"]
        lines += ["", "</details>"]
    return "\n".join(lines) + "\n"
