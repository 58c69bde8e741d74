"""Task records and report.json: what every report of a compatibility run renders from.

Every report works on *task records*: plain JSON-able dicts built by :func:`task_record` from
an evaluated ``TaskResult``. Records travel unchanged from pytest-xdist workers to the controller,
so a parallel run renders exactly what a serial run renders. A record holds

- ``entry``: the task object of ``report.json`` (docs/report-schema.md, all instances);
- ``details``: per instance (aligned with ``entry["instances"]``) the texts a human needs to judge
  a flip — input prompt, gold, old and new answers — which the schema does not carry;
- ``old`` / ``new``: adapter, base and fingerprint of each stack (and the device and dtype it
  scored on, when known); ``nodeid`` of the test that evaluated it; ``muscle_command``: the
  command that trains a compatibility adapter for the task.

The views live beside this module: ``formatting.py`` (what every view shares), ``verdict.py``
(a failing gate test's message), ``terminal.py``, ``markdown.py`` and ``html_page.py``;
``files.py`` writes the three report files.
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

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
        from pytest_modelcompat.scoring.predictions import answer_extractor

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
