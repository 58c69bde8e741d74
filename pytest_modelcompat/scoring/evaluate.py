"""(old stack, new stack, task) → per-instance predictions, flip metrics and the gate's verdict.

How each kind turns model output into a prediction:

- ``multiple_choice``: the summed log-likelihood of ``delimiter + choice`` after the context (the
  engine tokenises exactly like lm-eval); the prediction is the first argmax, or with
  ``normalize`` the first argmax of log-likelihood / the choice's length in characters (lm-eval's
  ``acc_norm``). A non-finite log-likelihood (NaN/inf, e.g. an fp16 overflow) makes the instance
  wrong with no prediction, ``evaluate_task`` reports it in ``TaskResult.warnings`` and the
  task's gate fails (check ``nonfinite_scores``).
- ``exact_match``: greedy generation after the context (no delimiter appended: a trailing space
  would make the answer's first token unnatural for BPE tokenizers; lm-eval's ``generate_until``
  does the same). The answer is the ``extract`` regex's group 1, else the last number in the text,
  else the whole text; the gold is extracted from the target the same way. Answers compare after
  normalisation: strip, drop ``,`` and ``$`` and a trailing ``.``, lowercase. ``lm_eval:`` tasks
  use lm-eval's own pieces instead: the task's filter pipeline makes the answer and the task's
  exact_match (with its ignore_case / regexes_to_ignore) decides correctness.
- ``generative``: greedy generation with ``no_repeat_ngram_size=2`` and the task's stop strings,
  scored by the task's similarity (ROUGE-1 F by default) against the target.

Each prediction has a decision margin (``prediction_margin``: multiple choice only, the gap between
its two best choices on the scale the decision was taken on); flips whose margins are below the
run's noise margin on both sides are marked unstable (``metrics.unstable_flips``), counted in the
metrics (``unstable_flips``, ``unstable_negative_flips``) and left out of the gate's checks when the
gate says ``exclude_unstable: true`` (the checks then see the metrics of the run in which those
instances did not flip: the new stack's result replaced by the old one's).

Results are cached per instance under (stack fingerprint, task fingerprint, instance id): only the
instances missing from the cache are computed, so an unchanged old stack is never re-evaluated.
"""

from __future__ import annotations

import dataclasses
import math
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pytest_modelcompat.errors import CompatInputError
from pytest_modelcompat.scoring import engine
from pytest_modelcompat.tasks.spec import require_resolved

if TYPE_CHECKING:
    from pytest_modelcompat.baseline import Snapshot
    from pytest_modelcompat.cache import ResultCache
    from pytest_modelcompat.metrics.gate import GateResult
    from pytest_modelcompat.models.stack import Stack
    from pytest_modelcompat.tasks.spec import Instance, TaskSpec

# Packed rows (one per context, all its choices as branches) per forward pass, or prompts per
# generation batch: the default of every entry point's batch-size option (--compat-batch-size,
# muscle eval --batch-size) and of the functions below.
DEFAULT_BATCH_SIZE = 16
GENERATIVE_NO_REPEAT_NGRAM = 2
# The gate check a task fails when instances have non-finite log-likelihoods (value: their count).
NONFINITE_CHECK = "nonfinite_scores"
_LAST_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


@dataclass
class Prediction:
    pred: int | str | None  # mc: chosen index; exact_match: normalised answer; generative: text
    correct: bool | None  # None for generative
    score: float | None  # mc: log-likelihood of pred; generative: similarity to the gold
    text: str | None = None  # raw generated text (generation kinds)
    logliks: list[float] | None = None  # mc: one per choice

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_cached(cls, entry: Mapping[str, Any], task: TaskSpec, instance: Instance) -> Prediction | None:
        """A cache entry as a Prediction, or None when it does not fit this task and instance."""
        try:
            prediction = cls(**entry)
        except TypeError:
            return None
        if task.kind == "multiple_choice":
            logliks = prediction.logliks
            fits = (
                isinstance(prediction.pred, int)
                and isinstance(logliks, list)
                and len(logliks) == len(instance.choices)
                and all(isinstance(v, (int, float)) and math.isfinite(v) for v in logliks)
                and 0 <= prediction.pred < len(logliks)
            )
        elif task.kind == "exact_match":
            fits = isinstance(prediction.text, str) and isinstance(prediction.correct, bool)
        else:
            fits = isinstance(prediction.text, str) and isinstance(prediction.score, (int, float))
        return prediction if fits else None


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
# choosing and extracting answers


def choose(logliks: Sequence[float], choices: Sequence[str], normalize: bool) -> int:
    """lm-eval's ``pred`` / ``pred_norm``: first argmax of the log-likelihoods, or of
    log-likelihood / len(choice) in characters."""
    import numpy as np

    values = np.asarray(logliks, dtype=float)
    if normalize:
        values = values / np.asarray([float(len(choice)) for choice in choices])
    return int(np.argmax(values))


def prediction_margin(prediction: Prediction, instance: Instance, task: TaskSpec) -> float | None:
    """The decision margin of one prediction: multiple choice, best minus second-best of the values
    ``choose`` takes the argmax of (log-likelihoods, or per character with ``normalize``); else None."""
    from pytest_modelcompat.metrics.flips import decision_margin

    if task.kind != "multiple_choice" or prediction.logliks is None or instance.choices is None:
        return None
    if len(prediction.logliks) != len(instance.choices):
        return None
    values = list(prediction.logliks)
    if task.normalize:
        values = [value / float(len(choice)) if choice else value for value, choice in zip(values, instance.choices)]
    return decision_margin(values)


def normalize_answer(answer: str) -> str:
    """GSM8K-style comparison form: strip, drop ``,`` and ``$`` and a trailing ``.``, lowercase."""
    answer = answer.strip().replace(",", "").replace("$", "").strip()
    return answer.removesuffix(".").strip().lower()


def answer_extractor(task: TaskSpec) -> Callable[[str], str]:
    """The function that turns a generated text (or a target) into the answer to compare."""
    try:
        pattern = re.compile(task.extract) if task.extract else None
    except re.error as exc:
        raise CompatInputError(f"task {task.name!r}: extract regex {task.extract!r} is invalid ({exc})") from None

    def extract(text: str) -> str:
        if pattern is not None and (match := pattern.search(text)):
            return match.group(1) if pattern.groups else match.group(0)
        numbers = _LAST_NUMBER.findall(text)
        return numbers[-1] if numbers else text

    return extract


# ---------------------------------------------------------------------------------------------
# predictions


def _predict_multiple_choice(stack, task, instances, batch_size, progress, description) -> list[Prediction]:
    requests = [(inst.context, [task.delimiter + choice for choice in inst.choices]) for inst in instances]
    all_logliks = engine.loglikelihoods(
        stack, requests, batch_size=batch_size, progress=progress, description=description,
    )
    predictions = []
    for inst, logliks in zip(instances, all_logliks):
        if not all(math.isfinite(v) for v in logliks):
            predictions.append(Prediction(pred=None, correct=False, score=None, logliks=logliks))
            continue
        index = choose(logliks, inst.choices, task.normalize)
        predictions.append(Prediction(pred=index, correct=index == inst.gold, score=logliks[index], logliks=logliks))
    return predictions


def _predict_exact_match(stack, task, instances, batch_size, progress, description) -> list[Prediction]:
    texts = engine.generate(
        stack, [inst.context for inst in instances], max_new_tokens=task.max_new_tokens, stop=task.stop,
        batch_size=batch_size, progress=progress, description=description,
    )
    if task.lm_eval:
        from pytest_modelcompat.tasks.lmeval_source import response_correct, response_filter

        lm_filter, lm_correct = response_filter(task), response_correct(task)
        answers = [lm_filter(text, inst.doc) for inst, text in zip(instances, texts)]
        return [
            Prediction(pred=answer, correct=lm_correct(answer, inst), score=None, text=text)
            for inst, answer, text in zip(instances, answers, texts)
        ]
    extract = answer_extractor(task)
    predictions = []
    for inst, text in zip(instances, texts):
        answer = normalize_answer(extract(text))
        gold = normalize_answer(extract(inst.gold))
        predictions.append(Prediction(pred=answer, correct=answer == gold, score=None, text=text))
    return predictions


def _predict_generative(stack, task, instances, batch_size, progress, description) -> list[Prediction]:
    from pytest_modelcompat.metrics.similarity import similarity

    score = similarity(task.metric)
    texts = engine.generate(
        stack, [inst.context for inst in instances], max_new_tokens=task.max_new_tokens, stop=task.stop,
        batch_size=batch_size, no_repeat_ngram_size=GENERATIVE_NO_REPEAT_NGRAM, progress=progress,
        description=description,
    )
    return [
        Prediction(pred=text, correct=None, score=float(score(text, inst.gold)), text=text)
        for inst, text in zip(instances, texts)
    ]


_PREDICTORS = {
    "multiple_choice": _predict_multiple_choice,
    "exact_match": _predict_exact_match,
    "generative": _predict_generative,
}


def _healthy(prediction: Prediction) -> bool:
    return prediction.logliks is None or all(math.isfinite(v) for v in prediction.logliks)


def predict(
    stack: Stack, task: TaskSpec, instances: Sequence[Instance], *, cache: ResultCache | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE, progress: Any = None, description: str | None = None,
) -> list[Prediction]:
    """One Prediction per instance; cached ones are reused, the rest computed and stored.

    Predictions with non-finite log-likelihoods are returned but not cached, so a fixed model
    (or dtype) is scored afresh next time.
    """
    require_resolved(task, "predict()")
    if task.kind not in _PREDICTORS:
        raise CompatInputError(f"task {task.name!r}: unknown kind {task.kind!r}; use one of {sorted(_PREDICTORS)}")
    task_fp = task.fingerprint()
    found: dict[str, Prediction] = {}
    if cache is not None:
        by_id = {inst.id: inst for inst in instances}
        for key, entry in cache.get_many(stack.fingerprint, task_fp, list(by_id)).items():
            prediction = Prediction.from_cached(entry, task, by_id[key])
            if prediction is not None:
                found[key] = prediction
    missing = [inst for inst in instances if inst.id not in found]
    if missing:
        computed = _PREDICTORS[task.kind](
            stack, task, missing, batch_size, progress, description or task.name,
        )
        fresh = dict(zip((inst.id for inst in missing), computed))
        if cache is not None:
            cache.put_many(stack.fingerprint, task_fp, {
                key: prediction.to_dict() for key, prediction in fresh.items() if _healthy(prediction)
            })
        found.update(fresh)
    return [found[inst.id] for inst in instances]


# ---------------------------------------------------------------------------------------------
# one task, old vs new


def _nonfinite_warning(side: str, instances: Sequence[Instance], predictions: Sequence[Prediction]) -> str | None:
    bad = [inst.id for inst, p in zip(instances, predictions) if not _healthy(p)]
    if not bad:
        return None
    shown = ", ".join(bad[:10]) + (", ..." if len(bad) > 10 else "")
    return (
        f"{side} stack: {len(bad)} of {len(instances)} instances have non-finite log-likelihoods "
        f"(NaN/inf; try dtype float32) and are counted as wrong: ids {shown}"
    )


def baseline_entry(stack: Stack, task: TaskSpec, *, limit: int | None = None, cache: ResultCache | None = None,
                   batch_size: int = DEFAULT_BATCH_SIZE, progress: Any = None) -> dict[str, Any]:
    """Score ``task`` with the old stack only → its baseline snapshot entry (``baseline.task_entry``)."""
    from pytest_modelcompat.baseline import task_entry
    from pytest_modelcompat.tasks.suite import load_instances

    require_resolved(task, "baseline_entry()")
    instances = load_instances(task, limit=effective_limit(limit, task.limit))
    predictions = predict(stack, task, instances, cache=cache, batch_size=batch_size, progress=progress,
                          description=f"{task.name} · old (baseline)")
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
    from pytest_modelcompat.metrics import flips as flip_metrics
    from pytest_modelcompat.metrics.gate import (
        Check,
        GateResult,
        evaluate_gate,
        excludes_unstable,
        validate_gate,
    )

    noise_margin = flip_metrics.DEFAULT_NOISE_MARGIN if noise_margin is None else noise_margin
    metrics, quadrants = flip_metrics_of(task.kind, old_preds, new_preds)
    old_margins = [prediction_margin(p, inst, task) for p, inst in zip(old_preds, instances)]
    new_margins = [prediction_margin(p, inst, task) for p, inst in zip(new_preds, instances)]
    if task.kind == "generative":
        unstable = flip_metrics.unstable_smooth_flips(
            [p.score for p in old_preds], [p.score for p in new_preds], noise_margin)
    else:
        unstable = flip_metrics.unstable_flips(quadrants, old_margins, new_margins, noise_margin)
    metrics |= flip_metrics.unstable_counts(quadrants, unstable) | {"noise_margin": float(noise_margin)}
    gate_keys = validate_gate({**task.gate, **(gate_override or {})}, task.kind)
    gate_metrics = None
    if excludes_unstable(gate_keys) and any(unstable):
        # the run in which the unstable flips did not happen: the new result is the old one there
        kept = [old if flag else new for old, new, flag in zip(old_preds, new_preds, unstable)]
        gate_metrics = flip_metrics_of(task.kind, old_preds, kept)[0]
        gate_metrics |= {key: metrics[key] for key in flip_metrics.STABILITY_KEYS}
    gate = evaluate_gate(metrics if gate_metrics is None else gate_metrics, gate_keys, task.kind)
    problems = [
        message
        for side, preds in (("old", old_preds), ("new", new_preds))
        if (message := _nonfinite_warning(side, instances, preds))
    ]
    for message in problems:
        warnings.warn(f"{task.name}: {message}", RuntimeWarning, stacklevel=3)
    nonfinite = sum(not _healthy(p) for p in (*old_preds, *new_preds))
    if nonfinite:
        # NaN/inf scores say nothing about flips: however the flip checks came out, the gate fails.
        gate = GateResult(False, (*gate.checks, Check(NONFINITE_CHECK, "<=", 0.0, float(nonfinite), False)))
    return TaskResult(task, list(instances), list(old_preds), list(new_preds), metrics, gate, quadrants, problems,
                      old_margins=old_margins, new_margins=new_margins, unstable=unstable,
                      gate_metrics=gate_metrics, noise_margin=float(noise_margin))


def evaluate_task(
    old: Stack | Snapshot, new: Stack, task: TaskSpec, *, limit: int | None = None,
    cache: ResultCache | None = None, batch_size: int = DEFAULT_BATCH_SIZE, gate_override: Mapping[str, float] | None = None,
    progress: Any = None, noise_margin: float | None = None,
) -> TaskResult:
    """Predict with both stacks, compute the flip metrics and check the gate.

    ``old`` may be a baseline snapshot (``baseline.Snapshot``): its stored predictions stand for
    the old stack (``baseline.BaselineError`` when it does not cover the task and its instances).
    ``gate_override`` keys replace the task's gate keys of the same name (others are kept).
    ``noise_margin`` (default ``metrics.DEFAULT_NOISE_MARGIN``) decides which flips are unstable.
    """
    from pytest_modelcompat.baseline import Snapshot
    from pytest_modelcompat.tasks.suite import load_instances

    require_resolved(task, "evaluate_task()")
    instances = load_instances(task, limit=effective_limit(limit, task.limit))
    kwargs = {"cache": cache, "batch_size": batch_size, "progress": progress}
    if isinstance(old, Snapshot):
        old_preds = old.predictions(task, instances)
    else:
        old_preds = predict(old, task, instances, description=f"{task.name} · old", **kwargs)
    new_preds = predict(new, task, instances, description=f"{task.name} · new", **kwargs)
    return compare(task, instances, old_preds, new_preds, gate_override=gate_override, noise_margin=noise_margin)
