"""report.html: one self-contained page (template ``templates/report.html``) that opens on what
matters: per task the quadrant matrix, whose cells filter the instance table, and for a generative
task the histogram of D(x); then the instances in review order (negative flips first) with their
margins and old vs new answers, generated text as a word-level diff; then every metric."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from pytest_modelcompat.report.formatting import (
    batch_invariance_text,
    fmt,
    gate_headline,
    is_generative,
    margin_text,
    review_key,
    score_change,
    summary_row,
)
from pytest_modelcompat.report.histogram import delta_histogram, histogram_svg
from pytest_modelcompat.report.records import sorted_records
from pytest_modelcompat.report.word_diff import word_diff_html


def quadrant_matrix(entry: Mapping[str, Any]) -> dict[str, Any]:
    """A task's quadrant matrix: ``columns`` (labels) and ``rows`` of (label, cells). A cell has a
    ``label``, its ``count``, the ``quadrants`` it filters the instance table to (space separated)
    and a ``note``. Discriminative tasks: old right/wrong × new right/wrong, "both wrong" joining
    the same and different wrong answers. Generative tasks have no right or wrong: one row by the
    sign of D(x)."""
    counts = Counter(instance["quadrant"] for instance in entry["instances"])

    def cell(label: str, *quadrants: str, note: str = "") -> dict[str, Any]:
        return {"label": label, "quadrants": " ".join(quadrants), "count": sum(counts[q] for q in quadrants),
                "note": note}

    if is_generative(entry):
        return {"columns": ["D < 0: new worse", "D = 0", "D > 0: new better"],
                "rows": [("similarity to gold", [cell("negative flips", "negative_flip"),
                                                 cell("unchanged", "unchanged"),
                                                 cell("positive flips", "positive_flip")])]}
    both_wrong_note = f"{counts['both_wrong_same']} same answer, {counts['both_wrong_diff']} different"
    return {"columns": ["new right", "new wrong"],
            "rows": [("old right", [cell("both right", "both_correct"), cell("negative flips", "negative_flip")]),
                     ("old wrong", [cell("positive flips", "positive_flip"),
                                    cell("both wrong", "both_wrong_same", "both_wrong_diff", note=both_wrong_note)])]}


def _instance_rows(record: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The instance table's rows of a task, in review order."""
    entry = record["entry"]
    generative = is_generative(entry)
    pairs = sorted(zip(entry["instances"], record["details"], strict=True),
                   key=lambda pair: review_key(entry, pair[0]))
    return [
        {"id": instance["id"], "quadrant": instance["quadrant"], "unstable": bool(instance.get("unstable")),
         "margin": margin_text(entry, instance), "input": detail["input"], "gold": detail["gold"],
         "old": detail["old"], "new": detail["new"],
         "old_score": None if instance["old"]["score"] is None else fmt(instance["old"]["score"]),
         "new_score": None if instance["new"]["score"] is None else fmt(instance["new"]["score"]),
         "diff": word_diff_html(detail["old"], detail["new"]) if generative else None}
        for instance, detail in pairs
    ]


def _task_view(index: int, record: Mapping[str, Any]) -> dict[str, Any]:
    entry = record["entry"]
    view = {"index": index, "name": entry["name"], "kind": entry["kind"], "passed": entry["gate"]["passed"],
            "muscle_command": record["muscle_command"], "matrix": quadrant_matrix(entry),
            "rows": _instance_rows(record), "histogram": None}
    if is_generative(entry):
        changes = [change for instance in entry["instances"] if (change := score_change(instance)) is not None]
        bins = delta_histogram(changes)
        view["histogram"] = histogram_svg(bins) if bins else None
    return view


def render_html(report: Mapping[str, Any], records: Sequence[Mapping[str, Any]]) -> str:
    """report.html: one self-contained page (inline CSS, JS and SVG; nothing fetched).

    Jinja2 autoescapes every text it inserts, model text included; the only markup built in Python
    is the word diff (each word escaped before it is wrapped) and the histogram (numbers only). The
    page's script only shows and hides rows.
    """
    import jinja2

    records = sorted_records(records)
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("pytest_modelcompat.report", "templates"), autoescape=True,
    )
    entries = [record["entry"] for record in records]
    # The page opens on the first failing task (on the first task when all pass).
    selected = next((index for index, entry in enumerate(entries) if not entry["gate"]["passed"]), 0)
    return environment.get_template("report.html").render(
        report=report, headline=gate_headline(entries), rows=[summary_row(entry) for entry in entries],
        tasks=[_task_view(index, record) for index, record in enumerate(records)], selected=selected,
        batch_invariance=batch_invariance_text(report),
    )
