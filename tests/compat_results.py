"""Hand-built TaskResult-like objects (real metrics and gate, no models) for report tests."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from pytest_modelcompat.metrics.flips import (
    discriminative_metrics,
    discriminative_quadrants,
    generative_metrics,
    generative_quadrants,
)
from pytest_modelcompat.metrics.gate import evaluate_gate
from pytest_modelcompat.report.records import stack_meta

XSS_SCRIPT = "<script>alert(1)</script>"
XSS_IMG = '"><img src=x onerror=alert(1)>'

OLD = stack_meta(SimpleNamespace(adapter="/models/a1", base="/models/base-v1", fingerprint="a" * 64))
NEW = stack_meta(SimpleNamespace(adapter="/models/a2", base="/models/base-v2", fingerprint="b" * 64))


def _task(name: str, kind: str, gate: dict) -> SimpleNamespace:
    return SimpleNamespace(name=name, kind=kind, gate=gate, source=Path("/suites/modelcompat.yaml"))


def multiple_choice_result(name: str, rows: list[tuple[int, int, int]], gate: dict,
                           contexts: list[str] | None = None) -> SimpleNamespace:
    """rows: (old pred, new pred, gold) per instance; two choices, 'yes' and 'no'."""
    choices = ("yes", "no")
    contexts = contexts or [f"Question {i}: is it so?" for i in range(len(rows))]
    instances = [SimpleNamespace(id=str(i), context=contexts[i], choices=choices, gold=gold, doc={})
                 for i, (_, _, gold) in enumerate(rows)]
    old = [SimpleNamespace(pred=o, correct=o == g, score=-1.5, text=None) for o, _, g in rows]
    new = [SimpleNamespace(pred=n, correct=n == g, score=-1.25, text=None) for _, n, g in rows]
    columns = ([p.correct for p in old], [p.correct for p in new], [p.pred for p in old], [p.pred for p in new])
    metrics = discriminative_metrics(*columns)
    return SimpleNamespace(
        task=_task(name, "multiple_choice", gate), instances=instances, old=old, new=new,
        metrics=metrics, gate=evaluate_gate(metrics, gate, "multiple_choice"),
        quadrants=discriminative_quadrants(*columns),
    )


def generative_result(name: str, rows: list[tuple[str, str, str, float, float]], gate: dict) -> SimpleNamespace:
    """rows: (old text, new text, gold, old score, new score) per instance."""
    instances = [SimpleNamespace(id=f"d{i}", context=f"Dialogue {i}", choices=None, gold=gold, doc={})
                 for i, (_, _, gold, _, _) in enumerate(rows)]
    old = [SimpleNamespace(pred=o, correct=None, score=so, text=o) for o, _, _, so, _ in rows]
    new = [SimpleNamespace(pred=n, correct=None, score=sn, text=n) for _, n, _, _, sn in rows]
    old_scores, new_scores = [p.score for p in old], [p.score for p in new]
    metrics = generative_metrics(old_scores, new_scores)
    return SimpleNamespace(
        task=_task(name, "generative", gate), instances=instances, old=old, new=new,
        metrics=metrics, gate=evaluate_gate(metrics, gate, "generative"),
        quadrants=generative_quadrants(old_scores, new_scores),
    )


def sample_records() -> list[dict]:
    """A failing multiple-choice task and a passing generative task, both with hostile model text."""
    from pytest_modelcompat.report.records import muscle_train_command, task_record

    # 10 instances: 6 both correct, 2 negative flips, 1 positive flip, 1 both wrong the same way.
    rows = [(0, 0, 0)] * 6 + [(0, 1, 0), (1, 0, 1), (1, 0, 0), (1, 1, 0)]
    contexts = [f"Question {i}: is it so?" for i in range(10)]
    contexts[6] = f"Question 6: {XSS_SCRIPT} | pipe *bold*"
    contexts[7] = f"Question 7: {XSS_IMG}"
    piqa = multiple_choice_result("piqa", rows, {"max_nfr": 0.1, "min_btc": 0.9}, contexts)
    samsum = generative_result("samsum", [
        ("Anna meets Bob.", "Anna and Bob meet for lunch.", "Anna and Bob meet for lunch.", 0.5, 1.0),
        ("Bob is late.", "Bob.", "Bob is late again.", 0.8, 0.4),
        ("They talk.", f"They talk. {XSS_SCRIPT}", "They chat.", 0.0, 0.0),
    ], {"max_nfr_smooth": 0.5})
    return [
        task_record(result, OLD, NEW, nodeid=f"tests/modelcompat.yaml::{result.task.name}",
                    muscle_command=muscle_train_command(
                        suite=result.task.source, task=result.task.name, old_adapter=OLD["adapter"],
                        new_adapter=NEW["adapter"]))
        for result in (samsum, piqa)
    ]
