"""report.html: one self-contained page to browse a run's flips (template ``templates/report.html``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pytest_modelcompat.report.formatting import batch_invariance_text, margin_text, summary_row
from pytest_modelcompat.report.records import sorted_records


def render_html(report: Mapping[str, Any], records: Sequence[Mapping[str, Any]]) -> str:
    """report.html: one self-contained page (inline CSS/JS, no fetches) to browse flips.

    Jinja2 autoescapes every text it inserts; the per-instance data travels as JSON through
    ``tojson``, which escapes ``<``, ``>``, ``&`` and ``'`` so no model output can end the
    ``<script>`` element, and the page's script inserts it with ``textContent`` only.
    """
    import jinja2

    records = sorted_records(records)
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("pytest_modelcompat.report", "templates"), autoescape=True,
    )
    tasks = [
        {"name": record["entry"]["name"], "kind": record["entry"]["kind"],
         "instances": [
             {"id": instance["id"], "quadrant": instance["quadrant"], "input": detail["input"],
              "gold": detail["gold"], "old": detail["old"], "new": detail["new"],
              "old_score": instance["old"]["score"], "new_score": instance["new"]["score"],
              "margin": margin_text(record["entry"], instance), "unstable": bool(instance.get("unstable"))}
             for instance, detail in zip(record["entry"]["instances"], record["details"])
         ]}
        for record in records
    ]
    return environment.get_template("report.html").render(
        report=report, rows=[summary_row(record["entry"]) for record in records],
        records=records, tasks=tasks, batch_invariance=batch_invariance_text(report),
    )
