"""``lm_eval:`` suite tasks, one of the two task sources: lm-eval 0.4's own task definitions.

Nothing here re-implements lm-eval: the task is built by lm-eval's ``TaskManager`` (a registered
name, or a task YAML path: a local ``dataset_path: json`` + ``dataset_kwargs: {data_files: ...}``
task works offline), instances come from ``Task.build_all_requests`` (so few-shot contexts use
lm-eval's sampler, seeded like ``lm_eval.simple_evaluate``), and generated answers go through the
task's own filter pipeline and metric (:func:`response_filter`, :func:`response_correct`).

Mapping onto our kinds (see :func:`resolve`, which ``suite.resolve_task`` calls once per entry):

- ``output_type: multiple_choice`` → ``multiple_choice``; ``delimiter`` = ``target_delimiter``;
  ``normalize: true`` in the suite selects lm-eval's ``acc_norm`` and needs the task to list it.
- ``output_type: generate_until`` with an ``exact_match`` metric → ``exact_match``; ``until`` →
  ``stop``, ``max_gen_toks`` → ``max_new_tokens`` (HFLM's default 256 when unset).

Everything is imported and built lazily, once per process per task reference: a task *name* costs
lm-eval's index scan of its bundled task YAMLs (~15 s here), a YAML path only the task itself.
This module knows ``spec.py`` only (not ``suite.py``, which dispatches to it).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from functools import cache
from pathlib import Path
from typing import Any

from pytest_modelcompat.errors import CompatInputError
from pytest_modelcompat.metrics.gate import validate_gate
from pytest_modelcompat.tasks.spec import (
    Instance,
    TaskSpec,
    file_sha256,
    gold_index,
    require_resolved,
    row_ids,
)

# lm_eval.simple_evaluate's default fewshot_random_seed (lm_eval.defaults.DEFAULT_OTHER_SEED)
FEWSHOT_SEED = 1234
# HFLM's default max_gen_toks, what lm-eval generates when a task sets none
DEFAULT_MAX_GEN_TOKS = 256


def resolve(task: TaskSpec) -> TaskSpec:
    """The ``lm_eval:`` entry ``task`` resolved: kind, delimiter, stop and max_new_tokens taken from
    the lm-eval task, and its ``source_digest`` (what its fingerprint covers beyond the suite)."""
    lm_task = lmeval_task(task.lm_eval)
    where = f"{task.source}: task {task.name!r} (lm_eval: {task.lm_eval})"
    config = lm_task.config
    if lm_task.multiple_input or lm_task.multiple_target:
        raise CompatInputError(
            f"{where}: lm-eval tasks with several inputs or several gold targets per doc are not supported"
        )
    if lm_task.OUTPUT_TYPE == "multiple_choice":
        if task.normalize and "acc_norm" not in lm_task._metric_fn_list:
            raise CompatInputError(f"{where}: `normalize: true` needs acc_norm in the task's metric_list; remove it")
        resolved = replace(task, kind="multiple_choice", delimiter=config.target_delimiter)
    elif lm_task.OUTPUT_TYPE == "generate_until":
        if task.normalize:
            raise CompatInputError(f"{where}: `normalize` applies to multiple-choice tasks only; remove it")
        if "exact_match" not in lm_task._metric_fn_list:
            raise CompatInputError(
                f"{where}: generate_until tasks are supported with an exact_match metric, "
                f"this one reports {', '.join(lm_task._metric_fn_list)}"
            )
        generation = dict(config.generation_kwargs or {})
        if generation.get("do_sample"):
            raise CompatInputError(f"{where}: the task samples (do_sample: true); flips need greedy decoding")
        until = generation.get("until") or []
        resolved = replace(
            task,
            kind="exact_match",
            delimiter=config.target_delimiter,
            stop=tuple([until] if isinstance(until, str) else until),
            max_new_tokens=int(generation.get("max_gen_toks", DEFAULT_MAX_GEN_TOKS)),
        )
    else:
        raise CompatInputError(
            f"{where}: lm-eval output_type {lm_task.OUTPUT_TYPE!r} is not supported; "
            "use a multiple_choice or generate_until task"
        )
    validate_gate(task.gate, resolved.kind, where=f"{where}: gate")
    return replace(resolved, source_digest=source_digest(task.lm_eval))


def source_digest(reference: str) -> dict[str, Any]:
    """What identifies an lm-eval task beyond its suite entry: the lm-eval version (which defines
    the task's prompts), its YAML's content (a YAML path) and its dataset's content."""
    from importlib.metadata import version

    path = Path(reference)
    return {"lm_eval_version": version("lm_eval"),
            "lm_eval_yaml_sha256": file_sha256(path) if path.is_file() else None,
            "lm_eval_dataset_sha256": dataset_sha256(reference)}


def instances(task: TaskSpec, split: str = "data", limit: int | None = None) -> list[Instance]:
    """lm-eval's requests for the first ``limit`` docs of the eval split (test, else validation)
    or, for ``split="train"``, the task's training docs with the same prompt construction."""
    require_resolved(task, "instances()")
    lm_task = lmeval_task(task.lm_eval)
    where = f"{task.source}: task {task.name!r} (lm_eval: {task.lm_eval})"
    if split == "train":
        if not lm_task.has_training_docs():
            raise CompatInputError(f"{where}: the lm-eval task has no training_split to train on")
        docs = list(lm_task.training_docs())
    else:
        docs = _eval_docs(task.lm_eval)
    docs = docs[:limit] if limit is not None else docs
    contexts = _contexts(lm_task, docs, split)
    try:
        ids = row_ids(docs, where)
    except CompatInputError:  # lm-eval's dataset is not the user's to fix: fall back to positions
        ids = [str(index) for index in range(len(docs))]
    instances = []
    for index, (doc, context) in enumerate(zip(docs, contexts, strict=True)):
        instance_where = f"{where}, doc {index}"
        if task.kind == "multiple_choice":
            choices = tuple(str(choice) for choice in lm_task.doc_to_choice(doc))
            gold = gold_index(lm_task.doc_to_target(doc), choices, instance_where)
            instances.append(Instance(ids[index], context, choices, gold, doc))
        else:
            instances.append(Instance(ids[index], context, None, _gold_text(lm_task, doc, instance_where), doc))
    return instances


def response_filter(task: TaskSpec) -> Callable[..., str]:
    """``filter(text, doc=None) -> answer``: the task's first filter pipeline (lm-eval reports
    each pipeline; the first, e.g. GSM8K's strict-match, is the one gated) on one generation."""
    lm_task = lmeval_task(task.lm_eval)
    pipeline = lm_task._filters[0]

    def apply(text: str, doc: Mapping[str, Any] | None = None) -> str:
        responses: Any = [[text]]
        for make_filter in pipeline.filters:
            responses = make_filter().apply(responses, [doc if doc is not None else {}])
        return list(responses)[0]

    return apply


def answer_normal_form(task: TaskSpec) -> Callable[[str], str]:
    """``normal(answer) -> str``: the form in which lm-eval's exact_match compares answers, with the
    task's own options (regexes_to_ignore, ignore_case, ignore_punctuation, ignore_numbers, in
    lm-eval's order). Two answers match under the task's metric iff their normal forms are equal, so
    NFR_mc ("M2 changed its answer") compares these: "1,000" and "1000" are one answer for GSM8K.
    lm-eval applies the steps inside ``exact_match`` and exposes no normaliser;
    tests/test_lmeval_tasks.py checks this equals its verdict on arbitrary strings."""
    import re
    import string

    options = next((m for m in lmeval_task(task.lm_eval).config.metric_list or []
                    if m.get("metric") == "exact_match"), {})
    patterns = list(options.get("regexes_to_ignore") or [])
    drop = (string.punctuation if options.get("ignore_punctuation") else "") + \
           (string.digits if options.get("ignore_numbers") else "")

    def normal(answer: str) -> str:
        for pattern in patterns:
            answer = re.sub(pattern, "", answer)
        if options.get("ignore_case"):
            answer = answer.lower()
        return answer.translate(str.maketrans("", "", drop)) if drop else answer

    return normal


def response_correct(task: TaskSpec) -> Callable[[str, Instance], bool]:
    """``correct(filtered_answer, instance)``: lm-eval's own exact_match (with the task's options
    such as ignore_case / regexes_to_ignore) of a filtered answer against the doc's gold."""
    lm_task = lmeval_task(task.lm_eval)

    def correct(answer: str, instance: Instance) -> bool:
        return bool(lm_task.process_results(instance.doc, [answer])["exact_match"])

    return correct


@cache
def lmeval_task(reference: str):
    """The lm-eval Task for a name or a YAML path, built once per process (offline-friendly)."""
    try:
        loaded = _task_manager(include_defaults=not Path(reference).is_file()).load(reference)
    except KeyError:
        raise CompatInputError(
            f"unknown lm-eval task {reference!r}; use a name from `lm_eval ls tasks` or a task YAML path"
        ) from None
    except Exception as exc:  # dataset download/parse failures surface as many types
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise CompatInputError(
            f"lm-eval could not build task {reference!r} ({type(exc).__name__}: {message}); "
            "check its dataset_path/data_files (offline: point data_files at local files)"
        ) from None
    if loaded["groups"] or len(loaded["tasks"]) != 1:
        raise CompatInputError(
            f"lm-eval reference {reference!r} is a group of {len(loaded['tasks'])} tasks; "
            "list its tasks as separate suite entries"
        )
    [lm_task] = loaded["tasks"].values()
    return lm_task


@cache
def _task_manager(include_defaults: bool):
    """lm-eval's task index: its bundled tasks (slow to scan, so once), or none for YAML paths."""
    import logging

    from lm_eval.tasks import TaskManager

    # lm-eval logs every defaulted metric option at WARNING; nothing for a gate user to act on
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    return TaskManager(include_defaults=include_defaults)


@cache
def dataset_sha256(reference: str) -> str:
    """sha256 over every split of the task's dataset (eval and few-shot docs alike), so editing a
    local data file changes the task's fingerprint even though the YAML stayed the same."""
    import hashlib
    import json

    dataset = lmeval_task(reference).dataset
    digest = hashlib.sha256()
    for split in sorted(dataset):
        digest.update(split.encode())
        for row in dataset[split]:
            digest.update(json.dumps(row, sort_keys=True, default=str).encode())
    return digest.hexdigest()


@cache
def _eval_docs(reference: str) -> list[dict]:
    """The eval split as lm-eval picks it: test_split if set, else validation_split."""
    return [dict(doc) for doc in lmeval_task(reference).eval_docs]


def _contexts(lm_task, docs: list[dict], split: str) -> list[str]:
    """Eval contexts exactly as lm-eval's build_all_requests makes them (same seeded few-shot
    sampler, reset per call so a limit gives the prefix of the full run)."""
    lm_task.set_fewshot_seed(FEWSHOT_SEED)
    num_fewshot = lm_task.config.num_fewshot or 0
    if split == "train":
        return [lm_task.fewshot_context(doc, num_fewshot=num_fewshot, gen_prefix=lm_task.doc_to_prefix(doc))
                for doc in docs]
    lm_task.build_all_requests(limit=len(docs))
    first_requests = {}
    for request in lm_task.instances:
        first_requests.setdefault(request.doc_id, request)
    return [first_requests[doc_id].arguments[0] for doc_id in range(len(docs))]


def _gold_text(lm_task, doc: Mapping[str, Any], where: str) -> str:
    """The generation target as lm-eval's process_results compares it."""
    gold = lm_task.doc_to_target(doc)
    if lm_task.config.doc_to_choice is not None:
        gold = lm_task.doc_to_choice(doc)[gold]
    if isinstance(gold, (list, tuple, dict)):
        raise CompatInputError(f"{where}: several gold targets per doc are not supported")
    return str(gold)
