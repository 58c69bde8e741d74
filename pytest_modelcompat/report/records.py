"""Reports of a compatibility run: report.json / report.md / report.html, the terminal table and
the verdict message of a gate test.

Everything here works on *task records*: plain JSON-able dicts built by :func:`task_record` from
an evaluated ``TaskResult``. Records travel unchanged from pytest-xdist workers to the controller,
so a parallel run renders exactly what a serial run renders. A record holds

- ``entry``: the task object of ``report.json`` (docs/report-schema.md, all instances);
- ``details``: per instance (aligned with ``entry["instances"]``) the texts a human needs to judge
  a flip — input prompt, gold, old and new answers — which the schema does not carry;
- ``old`` / ``new``: adapter, base and fingerprint of each stack (and the device and dtype it
  scored on, when known); ``nodeid`` of the test that evaluated it; ``muscle_command``: the
  command that trains a compatibility adapter for the task.

Heavy or optional imports (rich, jinja2) stay inside functions: the plugin imports this module.
"""

from __future__ import annotations

import html
import json
import math
import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pytest_modelcompat.atomic import atomic_write

SCHEMA_VERSION = 1
# The metric keys of a report.json task, in docs/report-schema.md order; metrics that do not apply are null.
REPORT_METRIC_KEYS = (
    "acc_old", "acc_new", "nfr", "pfr", "nfr_mc", "btc", "bec", "nfr_ci", "mcnemar_p",
    "score_old", "score_new", "pfr_smooth", "nfr_smooth", "m_g", "m_r",
)
# Optional keys (see docs/report-schema.md; schema_version 1 stays compatible: readers may ignore them):
# the deltas with their paired bootstrap 95 % intervals; unstable flips and the noise margin used.
EXTRA_REPORT_METRIC_KEYS = ("acc_delta", "acc_delta_ci", "score_delta", "score_delta_ci",
                            "unstable_flips", "unstable_negative_flips", "noise_margin")
COUNT_KEYS = ("unstable_flips", "unstable_negative_flips")
INTERVAL_KEYS = ("nfr_ci", "acc_delta_ci", "score_delta_ci")
TOP_FLIPS = 5
EXCERPT_CHARS = 120


# ---------------------------------------------------------------- records and report.json


def stack_meta(stack: Any) -> dict[str, str]:
    """The ``old`` / ``new`` object of report.json for a loaded ``Stack``: adapter, base,
    fingerprint, and the device and dtype it scores on (when it has a model and a device)."""
    meta = {"adapter": str(stack.adapter), "base": str(stack.base), "fingerprint": str(stack.fingerprint)}
    model, device = getattr(stack, "model", None), getattr(stack, "device", None)
    if model is not None and device is not None:
        meta["device"] = str(device)
        meta["dtype"] = str(next(model.parameters()).dtype).removeprefix("torch.")  # what the engine computes in
    return meta


def batch_invariance(old: Mapping[str, str], new: Mapping[str, str]) -> tuple[bool | None, str]:
    """(batch_invariant, note) of report.json: whether the scores of this run are guaranteed not to
    depend on batch size or instance order. Guaranteed for float32 on CPU only (docs/metrics.md,
    "Batch-invariant scoring"); ``None`` when a stack's device or dtype is not recorded (a
    baseline snapshot's old stack)."""
    loose, unknown = [], []
    for side, meta in (("old", old), ("new", new)):
        if "device" not in meta or "dtype" not in meta:
            unknown.append(side)
        elif meta["dtype"] != "float32" or not str(meta["device"]).startswith("cpu"):
            loose.append(f"{side} stack {meta['dtype']} on {meta['device']}")
    if loose:
        return False, (f"{' and '.join(loose)}: batch invariance is guaranteed for float32 on CPU only; "
                       "here scores may move by floating-point rounding with batch size or instance order, "
                       "so a flip with a tiny margin may be arithmetic (see unstable flips)")
    if unknown:
        return None, (f"device/dtype of the {' and '.join(unknown)} stack not recorded (a baseline snapshot): "
                      "batch invariance is guaranteed for float32 on CPU only")
    return True, "both stacks float32 on CPU: scores do not depend on batch size or instance order"


def _json_number(value: Any) -> float | None:
    """JSON has no NaN/inf: an undefined number is reported as null."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _report_metrics(metrics: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in (*REPORT_METRIC_KEYS, *EXTRA_REPORT_METRIC_KEYS):
        value = metrics.get(key)
        if key in INTERVAL_KEYS:
            out[key] = None if value is None else [_json_number(bound) for bound in value]
        elif key in COUNT_KEYS:
            out[key] = None if value is None else int(value)
        else:
            out[key] = _json_number(value)
    return out


def _prediction_entry(prediction: Any, margin: float | None) -> dict[str, Any]:
    pred = prediction.pred
    if pred is not None and not isinstance(pred, (int, str)):
        pred = str(pred)
    return {"pred": pred, "correct": prediction.correct, "score": _json_number(prediction.score),
            "margin": _json_number(margin)}


def _answer_text(kind: str, instance: Any, prediction: Any) -> str:
    """What a model answered, as a human compares it with the gold: the chosen choice's text,
    the extracted answer (exact match) or the generated text."""
    if kind == "multiple_choice" and isinstance(prediction.pred, int):
        return instance.choices[prediction.pred]
    if kind == "generative" and prediction.text is not None:
        return prediction.text
    return "" if prediction.pred is None else str(prediction.pred)


def _gold_text(task: Any, instance: Any) -> str:
    if task.kind == "multiple_choice" and isinstance(instance.gold, int):
        return instance.choices[instance.gold]
    if task.kind == "exact_match":
        from pytest_modelcompat.scoring.evaluate import answer_extractor

        return answer_extractor(task)(str(instance.gold))
    return str(instance.gold)


def task_record(result: Any, old: Mapping[str, str], new: Mapping[str, str], *, nodeid: str,
                muscle_command: str) -> dict[str, Any]:
    """The JSON-able record of one evaluated task (see the module docstring)."""
    task = result.task
    n = len(result.instances)
    # results built without margins (older callers, hand-made ones) have none: null / not unstable
    old_margins = getattr(result, "old_margins", None) or [None] * n
    new_margins = getattr(result, "new_margins", None) or [None] * n
    unstable = getattr(result, "unstable", None) or [False] * n
    instances = [
        {"id": str(instance.id), "old": _prediction_entry(old_pred, old_margin),
         "new": _prediction_entry(new_pred, new_margin), "quadrant": quadrant, "unstable": bool(flag)}
        for instance, old_pred, new_pred, quadrant, old_margin, new_margin, flag in zip(
            result.instances, result.old, result.new, result.quadrants, old_margins, new_margins, unstable,
            strict=True)
    ]
    details = [
        {"input": instance.context, "gold": _gold_text(task, instance),
         "old": _answer_text(task.kind, instance, old_pred), "new": _answer_text(task.kind, instance, new_pred)}
        for instance, old_pred, new_pred in zip(result.instances, result.old, result.new, strict=True)
    ]
    gate = result.gate
    entry = {
        "name": task.name,
        "kind": task.kind,
        "n": len(instances),
        "metrics": _report_metrics(result.metrics),
        "gate": {
            "passed": bool(gate.passed),
            "checks": [
                {"metric": check.metric, "op": check.op, "threshold": float(check.threshold),
                 "value": _json_number(check.value), "passed": bool(check.passed)}
                for check in gate.checks
            ],
            **({"excluded_unstable": sum(map(bool, unstable))}
               if getattr(result, "gate_metrics", None) is not None else {}),
        },
        "instances": instances,
    }
    return {"nodeid": nodeid, "old": dict(old), "new": dict(new), "entry": entry, "details": details,
            "muscle_command": muscle_command}


def sorted_records(records: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Records in a run-independent order (xdist finishes tests in any order)."""
    return sorted(records, key=lambda record: (record["nodeid"], record["entry"]["name"]))


def build_report(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The report.json object (docs/report-schema.md, schema_version 1) of a run's task records."""
    records = sorted_records(records)
    if not records:
        raise ValueError("build_report needs at least one evaluated task")
    old, new = dict(records[0]["old"]), dict(records[0]["new"])
    invariant, note = batch_invariance(old, new)
    return {
        "schema_version": SCHEMA_VERSION,
        "old": old,
        "new": new,
        "batch_invariant": invariant,
        "batch_invariance_note": note,
        "tasks": [record["entry"] for record in records],
    }


def batch_invariance_text(report: Mapping[str, Any]) -> str:
    """The report.md / report.html line about batch invariance ("" for reports without it)."""
    if "batch_invariance_note" not in report:
        return ""
    answer = {True: "yes", False: "NOT guaranteed", None: "unknown"}[report.get("batch_invariant")]
    return f"batch-invariant scores: {answer} — {report['batch_invariance_note']}"


def schema_path() -> Path:
    """The JSON Schema of report.json (shipped as package data)."""
    return Path(__file__).with_name("schema") / "report.schema.json"


def muscle_train_command(*, suite: str | Path, task: str, old_adapter: str, new_adapter: str,
                         old_base: str | None = None, new_base: str | None = None,
                         output: str | None = None) -> str:
    """The ``muscle train`` command line that trains a compatibility adapter for ``task``."""
    output = output or f"{str(new_adapter).rstrip('/')}-muscle-{task}"
    argv = ["muscle", "train", "--suite", str(suite), "--task", task,
            "--old-adapter", str(old_adapter), "--new-adapter", str(new_adapter)]
    if old_base:
        argv += ["--old-base", str(old_base)]
    if new_base:
        argv += ["--new-base", str(new_base)]
    return shlex.join([*argv, "--output", output])


# ---------------------------------------------------------------- formatting shared by all views


def _fmt(value: Any, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _fmt_delta(value: Any, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:+.{digits}f}"


def _fmt_ci(interval: Sequence[float | None] | None, digits: int = 3) -> str:
    return "" if interval is None else f"[{_fmt(interval[0], digits)}, {_fmt(interval[1], digits)}]"


def _excerpt(text: str, limit: int = EXCERPT_CHARS) -> str:
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
        "acc old → new": "—" if generative else f"{_fmt(m['acc_old'])} → {_fmt(m['acc_new'])}",
        "Δacc / Δscore [95% CI]": delta_text(entry),
        "NFR [95% CI]": "—" if generative else f"{_fmt(m['nfr'])} {_fmt_ci(m['nfr_ci'])}",
        "PFR": "—" if generative else _fmt(m["pfr"]),
        "NFR_mc": "—" if generative else _fmt(m["nfr_mc"]),
        "BTC": "—" if generative else _fmt(m["btc"]),
        "score old → new": f"{_fmt(m['score_old'])} → {_fmt(m['score_new'])}" if generative else "—",
        "NFR~": _fmt(m["nfr_smooth"]) if generative else "—",
        "m_r": _fmt(m["m_r"]) if generative else "—",
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
    text = _fmt_delta(value, digits)
    return text if interval is None else f"{text} [{_fmt_delta(interval[0], digits)}, {_fmt_delta(interval[1], digits)}]"


def top_negative_flips(record: Mapping[str, Any], k: int = TOP_FLIPS) -> list[tuple[dict, dict]]:
    """Up to ``k`` negative flips as (instance entry, details): stable ones before unstable ones;
    generative: largest drop first."""
    flips = [(instance, detail) for instance, detail in zip(record["entry"]["instances"], record["details"])
             if instance["quadrant"] == "negative_flip"]
    if is_generative(record["entry"]):
        flips.sort(key=lambda flip: (flip[0]["new"]["score"] or 0.0) - (flip[0]["old"]["score"] or 0.0))
    flips.sort(key=lambda flip: bool(flip[0].get("unstable")))
    return flips[:k]


def margin_text(entry: Mapping[str, Any], instance: Mapping[str, Any], digits: int = 3) -> str:
    """An instance's margins as a human reads them: multiple choice "old 0.412 / new 0.050", a
    generative flip "|D| 0.400"; "unstable" appended for an unstable flip; "" when undefined."""
    if is_generative(entry):
        old, new = instance["old"]["score"], instance["new"]["score"]
        text = "" if old is None or new is None or old == new else f"|D| {abs(new - old):.{digits}f}"
    else:
        old, new = instance["old"].get("margin"), instance["new"].get("margin")
        text = "" if old is None and new is None else f"old {_fmt(old, digits)} / new {_fmt(new, digits)}"
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
            f"{side} below the noise margin {_fmt(m.get('noise_margin'), 4)}; {how}")


def _check_line(check: Mapping[str, Any]) -> str:
    return (f"{check['metric']} = {_fmt(check['value'], 4)} (must be {check['op']} "
            f"{_fmt(check['threshold'], 4)})")


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
        lines.append(f"  score old {_fmt(m['score_old'])} -> new {_fmt(m['score_new'])}; "
                     f"NFR~ {_fmt(m['nfr_smooth'])}, PFR~ {_fmt(m['pfr_smooth'])}, "
                     f"m_r {_fmt(m['m_r'])}, m_g {_fmt(m['m_g'])}")
        lines.append(f"  Δscore {delta_text(entry, 4)} (95% paired bootstrap interval)")
    else:
        lines.append(f"  NFR {_fmt(m['nfr'], 4)}, 95% Wilson interval {_fmt_ci(m['nfr_ci'], 4)}; "
                     f"PFR {_fmt(m['pfr'], 4)}; McNemar p = {_fmt(m['mcnemar_p'], 4)}")
        lines.append(f"  acc old {_fmt(m['acc_old'])} -> new {_fmt(m['acc_new'])}, "
                     f"Δacc {delta_text(entry, 4)} (95% paired bootstrap interval); "
                     f"NFR_mc {_fmt(m['nfr_mc'])}; BTC {_fmt(m['btc'])}")
    if (line := unstable_line(entry)) is not None:
        lines.append(line)
    flips = top_negative_flips(record)
    total = sum(instance["quadrant"] == "negative_flip" for instance in entry["instances"])
    lines.append(f"Top negative flips ({len(flips)} of {total}):")
    for instance, detail in flips:
        scores = ""
        if is_generative(entry):
            scores = f" [score {_fmt(instance['old']['score'])} -> {_fmt(instance['new']['score'])}]"
            if instance.get("unstable"):
                scores += " (unstable)"
        elif margins := margin_text(entry, instance):
            scores = f" [margins {margins}]"
        lines.append(f"  - id {instance['id']}{scores}: input {_excerpt(detail['input'])!r}")
        lines.append(f"      old {_excerpt(detail['old'], 60)!r} | new {_excerpt(detail['new'], 60)!r} "
                     f"| gold {_excerpt(detail['gold'], 60)!r}")
    lines.append("To keep the new stack's gains without these flips, train a compatibility adapter:")
    lines.append(f"  {record['muscle_command']}")
    return "\n".join(lines)


# ---------------------------------------------------------------- terminal table (rich)


def terminal_table(records: Sequence[Mapping[str, Any]], *, width: int, color: bool) -> str:
    """The rich summary table, rendered to a string the pytest terminal reporter writes."""
    import io

    from rich import box
    from rich.console import Console
    from rich.table import Table

    rows = [summary_row(record["entry"]) for record in sorted_records(records)]
    table = Table(title="modelcompat: old → new stack", title_justify="left", box=box.SIMPLE_HEAD)
    for column in rows[0]:
        table.add_column(column, justify="left" if column in ("task", "kind") else "right",
                         no_wrap=column in ("gate", "n"))
    for row in rows:
        cells = list(row.values())
        cells[-1] = f"[bold green]{cells[-1]}[/]" if cells[-1] == "PASS" else f"[bold red]{cells[-1]}[/]"
        table.add_row(*cells)
    buffer = io.StringIO()
    console = Console(file=buffer, width=width, force_terminal=color, no_color=not color,
                      color_system="standard" if color else None, highlight=False)
    # Numbers squeezed into "0.5…" are useless: a narrow terminal gets the table at its natural width.
    console.width = max(width, console.measure(table, options=console.options.update_width(10_000)).maximum)
    console.print(table)
    return buffer.getvalue()


# ---------------------------------------------------------------- report.md


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
    failed = [row["task"] for row in rows if row["gate"] == "FAIL"]
    lines = [
        "## modelcompat: " + (f"gate FAILED ({len(failed)} of {len(rows)} tasks)" if failed
                              else f"gate passed ({len(rows)} tasks)"),
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


# ---------------------------------------------------------------- report.html


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


# ---------------------------------------------------------------- writing


def write_reports(directory: str | Path, records: Sequence[Mapping[str, Any]]) -> dict[str, Path]:
    """Write report.json, report.md and report.html into ``directory``, each atomically."""
    directory = Path(directory)
    report = build_report(records)
    paths = {name: directory / f"report.{name}" for name in ("json", "md", "html")}
    atomic_write(paths["json"], json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    atomic_write(paths["md"], render_markdown(report, records))
    atomic_write(paths["html"], render_html(report, records))
    return paths
