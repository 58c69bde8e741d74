"""(old stack or baseline snapshot, new stack, task) → a :class:`TaskResult`: both sides' predictions
(``predictions.py``), flip metrics, margins, unstable flips and the gate's verdict.

Each prediction has a decision margin (``prediction_margin``: multiple choice only, the gap between
its two best choices on the scale the decision was taken on); flips whose margins are below the
run's noise margin on both sides are marked unstable (``metrics.margins.unstable_flips``), counted in the
metrics (``unstable_flips``, ``unstable_negative_flips``) and left out of the gate's checks when the
gate says ``exclude_unstable: true`` (the checks then see the metrics of the run in which those
instances did not flip: the new stack's result replaced by the old one's).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pytest_modelcompat.scoring.predictions import DEFAULT_BATCH_SIZE, Prediction, predict, prediction_margin
from pytest_modelcompat.tasks.spec import require_resolved

if TYPE_CHECKING:
    from accelerate import PartialState

    from pytest_modelcompat.cache import ResultCache
    from pytest_modelcompat.metrics.gate import GateResult
    from pytest_modelcompat.models.stack import Stack
    from pytest_modelcompat.scoring.baseline import Snapshot
    from pytest_modelcompat.tasks.spec import Instance, TaskSpec

# The gate check a task fails when instances have non-finite log-likelihoods (value: their count).
NONFINITE_CHECK = "nonfinite_scores"


@dataclass
class TaskResult:
    task: TaskSpec
    instances: list[Instance]
    old: list[Prediction]
    new: list[Prediction]
    metrics: dict[str, Any]  # metrics.METRIC_KEYS (docs/metrics.md); None where N/A
    gate: GateResult
    quadrants: list[str]
    warnings: list[str] = field(default_factory=list)  # problems that made instances count as wrong
    old_margins: list[float | None] = field(default_factory=list)  # per instance; None: not defined
    new_margins: list[float | None] = field(default_factory=list)
    unstable: list[bool] = field(default_factory=list)  # per instance: an unstable flip
    gate_metrics: dict[str, Any] | None = None  # what the gate checked, when not ``metrics``
    noise_margin: float | None = None


# ---------------------------------------------------------------------------------------------
# one task, old vs new


def _nonfinite_warning(side: str, instances: Sequence[Instance], predictions: Sequence[Prediction]) -> str | None:
    bad = [inst.id for inst, p in zip(instances, predictions) if not p.finite]
    if not bad:
        return None
    shown = ", ".join(bad[:10]) + (", ..." if len(bad) > 10 else "")
    return (
        f"{side} stack: {len(bad)} of {len(instances)} instances have non-finite log-likelihoods "
        f"(NaN/inf; try dtype float32) and are counted as wrong: ids {shown}"
    )


def baseline_entry(stack: Stack, task: TaskSpec, *, limit: int | None = None, cache: ResultCache | None = None,
                   batch_size: int = DEFAULT_BATCH_SIZE, progress: Any = None,
                   processes: PartialState | None = None) -> dict[str, Any]:
    """Score ``task`` with the old stack only → its baseline snapshot entry (``baseline.task_entry``);
    ``processes``: spread over them (``predict``)."""
    from pytest_modelcompat.scoring.baseline import task_entry
    from pytest_modelcompat.tasks.suite import load_instances

    require_resolved(task, "baseline_entry()")
    instances = load_instances(task, limit=effective_limit(limit, task.limit))
    predictions = predict(stack, task, instances, cache=cache, batch_size=batch_size, progress=progress,
                          description=f"{task.name} · old (baseline)", processes=processes)
    return task_entry(task, instances, predictions)


def effective_limit(*limits: int | None) -> int | None:
    """The smallest of the limits given (a run's --compat-limit and a task's own ``limit``)."""
    given = [limit for limit in limits if limit is not None]
    return min(given) if given else None


def flip_metrics_of(kind: str, old: Sequence[Prediction], new: Sequence[Prediction]) -> tuple[dict, list[str]]:
    """(metrics, quadrants) of two prediction columns of one task kind."""
    from pytest_modelcompat.metrics import flips as flip_metrics

    if kind == "generative":
        columns = ([p.score for p in old], [p.score for p in new])
        return flip_metrics.generative_metrics(*columns), flip_metrics.generative_quadrants(*columns)
    columns = ([p.correct for p in old], [p.correct for p in new], [p.pred for p in old], [p.pred for p in new])
    return flip_metrics.discriminative_metrics(*columns), flip_metrics.discriminative_quadrants(*columns)


def compare(
    task: TaskSpec, instances: Sequence[Instance], old_preds: Sequence[Prediction], new_preds: Sequence[Prediction],
    *, gate_override: Mapping[str, Any] | None = None, noise_margin: float | None = None,
) -> TaskResult:
    """Flip metrics, margins, unstable flips and the gate's verdict of two prediction columns."""
    from pytest_modelcompat.metrics import margins
    from pytest_modelcompat.metrics.gate import (
        Check,
        GateResult,
        evaluate_gate,
        excludes_unstable,
        validate_gate,
    )

    noise_margin = margins.DEFAULT_NOISE_MARGIN if noise_margin is None else noise_margin
    metrics, quadrants = flip_metrics_of(task.kind, old_preds, new_preds)
    old_margins = [prediction_margin(p, inst, task) for p, inst in zip(old_preds, instances)]
    new_margins = [prediction_margin(p, inst, task) for p, inst in zip(new_preds, instances)]
    if task.kind == "generative":
        unstable = margins.unstable_smooth_flips(
            [p.score for p in old_preds], [p.score for p in new_preds], noise_margin)
    else:
        unstable = margins.unstable_flips(quadrants, old_margins, new_margins, noise_margin)
    metrics |= margins.unstable_counts(quadrants, unstable) | {"noise_margin": float(noise_margin)}
    gate_keys = validate_gate({**task.gate, **(gate_override or {})}, task.kind)
    gate_metrics = None
    if excludes_unstable(gate_keys) and any(unstable):
        # the run in which the unstable flips did not happen: the new result is the old one there
        kept = [old if flag else new for old, new, flag in zip(old_preds, new_preds, unstable)]
        gate_metrics = flip_metrics_of(task.kind, old_preds, kept)[0]
        gate_metrics |= {key: metrics[key] for key in margins.STABILITY_KEYS}
    gate = evaluate_gate(metrics if gate_metrics is None else gate_metrics, gate_keys, task.kind)
    problems = [
        message
        for side, preds in (("old", old_preds), ("new", new_preds))
        if (message := _nonfinite_warning(side, instances, preds))
    ]
    for message in problems:
        warnings.warn(f"{task.name}: {message}", RuntimeWarning, stacklevel=3)
    nonfinite = sum(not p.finite for p in (*old_preds, *new_preds))
    if nonfinite:
        # NaN/inf scores say nothing about flips: however the flip checks came out, the gate fails.
        gate = GateResult(False, (*gate.checks, Check(NONFINITE_CHECK, "<=", 0.0, float(nonfinite), False)))
    return TaskResult(task, list(instances), list(old_preds), list(new_preds), metrics, gate, quadrants, problems,
                      old_margins=old_margins, new_margins=new_margins, unstable=unstable,
                      gate_metrics=gate_metrics, noise_margin=float(noise_margin))


def evaluate_task(
    old: Stack | Snapshot, new: Stack, task: TaskSpec, *, limit: int | None = None,
    cache: ResultCache | None = None, batch_size: int = DEFAULT_BATCH_SIZE, gate_override: Mapping[str, float] | None = None,
    progress: Any = None, noise_margin: float | None = None, processes: PartialState | None = None,
) -> TaskResult:
    """Predict with both stacks, compute the flip metrics and check the gate.

    ``old`` may be a baseline snapshot (``baseline.Snapshot``): its stored predictions stand for
    the old stack (``baseline.BaselineError`` when it does not cover the task and its instances).
    ``gate_override`` keys replace the task's gate keys of the same name (others are kept).
    ``noise_margin`` (default ``metrics.margins.DEFAULT_NOISE_MARGIN``) decides which flips are unstable.
    ``processes``: the stacks' scoring is spread over them (``predict``); every process gets the result.
    """
    from pytest_modelcompat.scoring.baseline import Snapshot
    from pytest_modelcompat.tasks.suite import load_instances

    require_resolved(task, "evaluate_task()")
    instances = load_instances(task, limit=effective_limit(limit, task.limit))
    kwargs = {"cache": cache, "batch_size": batch_size, "progress": progress, "processes": processes}
    if isinstance(old, Snapshot):
        old_preds = old.predictions(task, instances)
    else:
        old_preds = predict(old, task, instances, description=f"{task.name} · old", **kwargs)
    new_preds = predict(new, task, instances, description=f"{task.name} · new", **kwargs)
    return compare(task, instances, old_preds, new_preds, gate_override=gate_override, noise_margin=noise_margin)
