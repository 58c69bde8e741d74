"""One stack and one task → a :class:`Prediction` per instance, through the result cache.

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

Results are cached per instance under (stack fingerprint, task fingerprint, instance id): only the
instances missing from the cache are computed, so an unchanged old stack is never re-evaluated.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pytest_modelcompat.errors import CompatInputError
from pytest_modelcompat.scoring import engine
from pytest_modelcompat.scoring.processes import across_processes, is_main_process
from pytest_modelcompat.tasks.spec import require_resolved

if TYPE_CHECKING:
    from accelerate import PartialState

    from pytest_modelcompat.cache import ResultCache
    from pytest_modelcompat.models.stack import Stack
    from pytest_modelcompat.tasks.spec import Instance, TaskSpec

# Packed rows (one per context, all its choices as branches) per forward pass, or prompts per
# generation batch: the default of every entry point's batch-size option (--compat-batch-size,
# muscle eval --batch-size) and of the functions below.
DEFAULT_BATCH_SIZE = 16
GENERATIVE_NO_REPEAT_NGRAM = 2
_LAST_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


@dataclass
class Prediction:
    pred: int | str | None  # mc: chosen index; exact_match: normalised answer; generative: text
    correct: bool | None  # None for generative
    score: float | None  # mc: log-likelihood of pred; generative: similarity to the gold
    text: str | None = None  # raw generated text (generation kinds)
    logliks: list[float] | None = None  # mc: one per choice

    @property
    def finite(self) -> bool:
        """False when a log-likelihood is NaN/inf: the instance counts as wrong and is not cached."""
        return self.logliks is None or all(math.isfinite(v) for v in self.logliks)

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


# ---------------------------------------------------------------------------------------------
# choosing and extracting answers


def decision_values(logliks: Sequence[float], choices: Sequence[str], normalize: bool) -> list[float]:
    """The values a multiple-choice decision takes the argmax of: the log-likelihoods, or with
    ``normalize`` (lm-eval's acc_norm) log-likelihood / len(choice) in characters (an empty choice
    counts as length 1)."""
    if not normalize:
        return [float(value) for value in logliks]
    return [float(value) / (float(len(choice)) or 1.0) for value, choice in zip(logliks, choices, strict=True)]


def choose(logliks: Sequence[float], choices: Sequence[str], normalize: bool) -> int:
    """lm-eval's ``pred`` / ``pred_norm``: the first argmax of :func:`decision_values`."""
    import numpy as np

    return int(np.argmax(decision_values(logliks, choices, normalize)))


def prediction_margin(prediction: Prediction, instance: Instance, task: TaskSpec) -> float | None:
    """The decision margin of one prediction: multiple choice, best minus second-best of the values
    ``choose`` takes the argmax of (log-likelihoods, or per character with ``normalize``); else None."""
    from pytest_modelcompat.metrics.margins import decision_margin

    if task.kind != "multiple_choice" or prediction.logliks is None or instance.choices is None:
        return None
    if len(prediction.logliks) != len(instance.choices):
        return None
    return decision_margin(decision_values(prediction.logliks, instance.choices, task.normalize))


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
        from pytest_modelcompat.tasks.lmeval_source import (
            answer_normal_form,
            response_correct,
            response_filter,
        )

        lm_filter, lm_correct, normal = response_filter(task), response_correct(task), answer_normal_form(task)
        answers = [lm_filter(text, inst.doc) for inst, text in zip(instances, texts)]
        # pred: the answer as the task's exact_match compares it (NFR_mc asks whether it changed)
        return [
            Prediction(pred=normal(answer), correct=lm_correct(answer, inst), score=None, text=text)
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


def predict(
    stack: Stack, task: TaskSpec, instances: Sequence[Instance], *, cache: ResultCache | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE, progress: Any = None, description: str | None = None,
    processes: PartialState | None = None,
) -> list[Prediction]:
    """One Prediction per instance; cached ones are reused, the rest computed and stored.

    Predictions with non-finite log-likelihoods are returned but not cached, so a fixed model
    (or dtype) is scored afresh next time. With ``processes`` (``processes.launched_processes``)
    each process scores a share of the instances, every process gets all the predictions, and the
    main process alone writes the cache.
    """
    require_resolved(task, "predict()")
    if task.kind not in _PREDICTORS:
        raise CompatInputError(f"task {task.name!r}: unknown kind {task.kind!r}; use one of {sorted(_PREDICTORS)}")
    task_fp = task.fingerprint()

    def score(share: Sequence[Instance]) -> list[tuple[Prediction, bool]]:
        # Each process looks its own share up in the cache: however much of it is cached (and
        # whatever the main process has written meanwhile), every process gathers once per call.
        found: dict[str, Prediction] = {}
        if cache is not None:
            by_id = {inst.id: inst for inst in share}
            for key, entry in cache.get_many(stack.fingerprint, task_fp, list(by_id)).items():
                prediction = Prediction.from_cached(entry, task, by_id[key])
                if prediction is not None:
                    found[key] = prediction
        missing = [inst for inst in share if inst.id not in found]
        if missing:
            computed = _PREDICTORS[task.kind](stack, task, missing, batch_size, progress, description or task.name)
            found.update(zip((inst.id for inst in missing), computed))
        fresh = {inst.id for inst in missing}
        return [(found[inst.id], inst.id in fresh) for inst in share]

    scored = across_processes(processes, score, instances)     # (prediction, computed now) per instance
    if cache is not None and is_main_process(processes):
        cache.put_many(stack.fingerprint, task_fp, {
            inst.id: prediction.to_dict()
            for inst, (prediction, fresh) in zip(instances, scored) if fresh and prediction.finite
        })
    return [prediction for prediction, _ in scored]
