"""scoring/predictions.py and scoring/evaluate.py: predictions per kind, the per-instance cache, non-finite scores, evaluate_task."""

from __future__ import annotations

import json
import math

import pytest

from pytest_modelcompat.cache import ResultCache
from pytest_modelcompat.scoring import engine, evaluate, predictions
from pytest_modelcompat.tasks.suite import load_instances, load_suite

MC_ROWS = [
    {"question": q, "choices": c, "label": label}
    for q, c, label in [
        ("Question: what is two plus two? Answer:", ["four", "five", "the cat sat on the mat", "42"], 0),
        ("Goal: open a jar. Solution:", ["twist the lid.", "hit it with a spoon."], 0),
        ("The cat sat on the", ["mat.", "dog", "bone"], 0),
        ("numbers 0 1 2", ["3", "100", "11 12"], 0),
        ("Dialogue: Anna: hi Bob, lunch today? Bob:", ["sure, at noon.", "no", "the dog ate the bone"], 0),
        ("movie review sentence label:", ["positive", "negative"], 1),
    ]
]
GEN_ROWS = [
    {"question": "Question: what is two plus two? Answer:", "answer": "two plus two #### 4"},
    {"question": "numbers 0 1 2", "answer": "#### 1,000"},
    {"question": "Dialogue: Anna: hi Bob, lunch today?", "answer": "Anna and Bob meet for lunch."},
]


def _suite(tmp_path, gate="{max_nfr: 1.0}"):
    (tmp_path / "mc.jsonl").write_text("\n".join(json.dumps(r) for r in MC_ROWS))
    (tmp_path / "gen.jsonl").write_text("\n".join(json.dumps(r) for r in GEN_ROWS))
    (tmp_path / "modelcompat.yaml").write_text(f"""
tasks:
  - name: mc
    kind: multiple_choice
    data: mc.jsonl
    text: "{{{{question}}}}"
    choices: "{{{{choices}}}}"
    label: "{{{{label}}}}"
    gate: {gate}
  - name: mc_norm
    kind: multiple_choice
    data: mc.jsonl
    text: "{{{{question}}}}"
    choices: "{{{{choices}}}}"
    label: "{{{{label}}}}"
    normalize: true
  - name: em
    kind: exact_match
    data: gen.jsonl
    text: "{{{{question}}}}"
    target: "{{{{answer}}}}"
    extract: "#### *(-?[0-9.,]+)"
    max_new_tokens: 6
    stop: ["\\n\\n"]
  - name: summ
    kind: generative
    data: gen.jsonl
    text: "{{{{question}}}}"
    target: "{{{{answer}}}}"
    max_new_tokens: 6
""")
    return {task.name: task for task in load_suite(tmp_path / "modelcompat.yaml")}


@pytest.fixture(scope="module")
def stacks(tiny_adapter, tiny_adapter_v2):
    from pytest_modelcompat.models.stack import load_stack

    return load_stack(tiny_adapter, device="cpu"), load_stack(tiny_adapter_v2, device="cpu")


def test_multiple_choice_argmax_and_acc_norm(tmp_path, stacks):
    old, _ = stacks
    tasks = _suite(tmp_path)
    instances = load_instances(tasks["mc"])
    preds = predictions.predict(old, tasks["mc"], instances, batch_size=4)
    requests = [(i.context, [" " + c for c in i.choices]) for i in instances]
    for inst, pred, logliks in zip(instances, preds, engine.loglikelihoods(old, requests)):
        assert pred.logliks == pytest.approx(logliks, abs=1e-5)
        assert pred.pred == max(range(len(logliks)), key=lambda k: (logliks[k], -k))
        assert pred.correct == (pred.pred == inst.gold)
        assert pred.score == pred.logliks[pred.pred]
    norm = predictions.predict(old, tasks["mc_norm"], instances, batch_size=4)
    for inst, pred in zip(instances, norm):
        per_char = [v / len(c) for v, c in zip(pred.logliks, inst.choices)]
        assert pred.pred == per_char.index(max(per_char))


def test_choose_breaks_ties_like_numpy_argmax():
    assert predictions.choose([-1.0, -1.0, -2.0], ["a", "b", "c"], normalize=False) == 0
    # acc_norm divides by characters of the choice (without the delimiter), as lm-eval does.
    assert predictions.choose([-4.0, -3.0], ["abcd", "a"], normalize=True) == 0


def test_decision_values_are_what_choose_and_the_margin_read():
    # docs/metrics.md's worked example: acc picks "yes", acc_norm picks "no way"
    assert predictions.decision_values([-2.1, -3.0], ["yes", "no way"], normalize=False) == [-2.1, -3.0]
    assert predictions.decision_values([-2.1, -3.0], ["yes", "no way"], normalize=True) == pytest.approx([-0.7, -0.5])
    assert predictions.choose([-2.1, -3.0], ["yes", "no way"], normalize=True) == 1
    assert predictions.decision_values([-2.0], [""], normalize=True) == [-2.0]   # an empty choice counts as 1


def test_cache_reuses_hits_and_computes_only_misses(tmp_path, stacks, monkeypatch):
    old, _ = stacks
    task = _suite(tmp_path)["mc"]
    instances = load_instances(task)
    cache = ResultCache(tmp_path / "cache")
    first = predictions.predict(old, task, instances[:4], cache=cache)

    seen = []
    real = engine.loglikelihoods

    def counting(stack, requests, **kwargs):
        seen.extend(context for context, _ in requests)
        return real(stack, requests, **kwargs)

    monkeypatch.setattr(engine, "loglikelihoods", counting)
    again = predictions.predict(old, task, instances, cache=cache)
    assert again[:4] == first
    assert seen == [inst.context for inst in instances[4:]]
    seen.clear()
    assert predictions.predict(old, task, instances, cache=cache) == again
    assert seen == []


def test_cached_entry_that_does_not_fit_is_recomputed(tmp_path, stacks):
    old, _ = stacks
    task = _suite(tmp_path)["mc"]
    instances = load_instances(task)[:2]
    cache = ResultCache(tmp_path / "cache")
    fresh = predictions.predict(old, task, instances, cache=cache)
    bogus = {"pred": 7, "correct": True, "score": 0.0, "text": None, "logliks": [0.0]}
    cache.put_many(old.fingerprint, task.fingerprint(), {instances[0].id: bogus, instances[1].id: {"x": 1}})
    assert predictions.predict(old, task, instances, cache=cache) == fresh


def test_nonfinite_loglik_is_wrong_warned_and_not_cached(tmp_path, stacks, monkeypatch):
    old, new = stacks
    task = _suite(tmp_path)["mc"]
    real = engine.loglikelihoods

    def poisoned(stack, requests, **kwargs):
        values = real(stack, requests, **kwargs)
        if stack is new:
            values[0] = [math.nan] * len(values[0])  # gold is 0: NaN must never count as correct
        return values

    monkeypatch.setattr(engine, "loglikelihoods", poisoned)
    cache = ResultCache(tmp_path / "cache")
    with pytest.warns(RuntimeWarning, match="non-finite"):
        result = evaluate.evaluate_task(old, new, task, cache=cache)
    assert result.new[0].pred is None and result.new[0].correct is False
    assert len(result.warnings) == 1 and "new stack: 1 of 6" in result.warnings[0]
    assert result.metrics["acc_new"] == sum(p.correct for p in result.new) / 6
    assert not result.gate.passed and result.gate.failed[-1].metric == evaluate.NONFINITE_CHECK
    cached = cache.get_many(new.fingerprint, task.fingerprint(), [i.id for i in result.instances])
    assert result.instances[0].id not in cached and len(cached) == 5


def test_exact_match_extracts_and_normalises(tmp_path, stacks, monkeypatch):
    old, _ = stacks
    task = _suite(tmp_path)["em"]
    instances = load_instances(task)
    outputs = ["It is 2 plus 2 so #### 4.", "I think $1,000.", "no numbers here"]
    monkeypatch.setattr(engine, "generate", lambda stack, prompts, **kw: outputs[: len(prompts)])
    preds = predictions.predict(old, task, instances)
    assert [p.pred for p in preds] == ["4", "1000", "no numbers here"]
    assert [p.correct for p in preds] == [True, True, False]
    assert [p.text for p in preds] == outputs


def test_normalize_answer():
    assert predictions.normalize_answer(" $1,234.\n") == "1234"
    assert predictions.normalize_answer("Positive") == "positive"


def test_generative_scores_with_rouge(tmp_path, stacks, monkeypatch):
    from pytest_modelcompat.metrics.similarity import similarity

    old, _ = stacks
    task = _suite(tmp_path)["summ"]
    instances = load_instances(task)
    seen = {}

    def fake_generate(stack, prompts, **kwargs):
        seen.update(kwargs)
        return ["Anna and Bob meet."] * len(prompts)

    monkeypatch.setattr(engine, "generate", fake_generate)
    preds = predictions.predict(old, task, instances)
    assert seen["no_repeat_ngram_size"] == 2
    assert [p.score for p in preds] == [similarity("rouge1")("Anna and Bob meet.", i.gold) for i in instances]
    assert all(p.correct is None for p in preds)


def test_generation_kinds_run_end_to_end_on_tiny_stacks(tmp_path, stacks):
    old, new = stacks
    tasks = _suite(tmp_path)
    em = evaluate.evaluate_task(old, new, tasks["em"], batch_size=2)
    assert em.metrics["acc_old"] is not None and em.metrics["score_old"] is None
    summ = evaluate.evaluate_task(old, new, tasks["summ"], batch_size=2)
    assert summ.metrics["nfr"] is None and 0.0 <= summ.metrics["score_new"] <= 1.0
    assert set(summ.quadrants) <= {"positive_flip", "negative_flip", "unchanged"}


def test_evaluate_task_metrics_gate_and_quadrants(tmp_path, stacks):
    from pytest_modelcompat.metrics import flips

    old, new = stacks
    task = _suite(tmp_path, gate="{max_nfr: 1.0, min_btc: 0.0}")["mc"]
    result = evaluate.evaluate_task(old, new, task, limit=5, gate_override={"max_nfr": 0.0})
    assert len(result.instances) == len(result.old) == len(result.new) == len(result.quadrants) == 5
    assert set(flips.METRIC_KEYS) <= set(result.metrics)
    expected = flips.discriminative_quadrants(
        [p.correct for p in result.old], [p.correct for p in result.new],
        [p.pred for p in result.old], [p.pred for p in result.new],
    )
    assert result.quadrants == expected
    checks = {check.metric: check for check in result.gate.checks}
    assert checks["nfr"].threshold == 0.0 and checks["btc"].threshold == 0.0
    assert result.gate.passed == (result.metrics["nfr"] == 0.0)
    assert result.warnings == []


def test_lm_eval_generate_task_uses_lm_evals_filter_and_exact_match(tmp_path, stacks, monkeypatch):
    import yaml

    old, _ = stacks
    docs = [{"question": f"What is {n} plus {n}?", "solution": f"Add.\n#### {2 * n}"} for n in range(4)]
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (tmp_path / "gen.yaml").write_text(yaml.safe_dump({
        "task": "tiny_gen_eval", "dataset_path": "json", "test_split": "test",
        "dataset_kwargs": {"data_files": {"test": str(tmp_path / "docs.jsonl")}},
        "output_type": "generate_until", "doc_to_text": "Question: {{question}}\nAnswer:",
        "doc_to_target": "{{solution}}", "generation_kwargs": {"until": ["\n\n"], "max_gen_toks": 8},
        "filter_list": [{"name": "strict-match", "filter": [
            {"function": "regex", "regex_pattern": "#### (\\-?[0-9\\.\\,]+)"}, {"function": "take_first"}]}],
        "metric_list": [{"metric": "exact_match", "ignore_case": True,
                         "regexes_to_ignore": [",", "\\$", "(?s).*#### ", "\\.$"]}],
    }))
    (tmp_path / "suite.yaml").write_text("tasks:\n  - {name: gen, lm_eval: gen.yaml}\n")
    from pytest_modelcompat.tasks.suite import resolve_task

    (task,) = load_suite(tmp_path / "suite.yaml")
    task = resolve_task(task)
    instances = load_instances(task)
    outputs = ["so #### 0", "#### 2.", "The answer is 4", "#### 7"]
    monkeypatch.setattr(engine, "generate", lambda stack, prompts, **kw: outputs[: len(prompts)])
    preds = predictions.predict(old, task, instances)
    # strict-match finds no "####" in the third text: lm-eval's "[invalid]", counted wrong. pred is the
    # answer in exact_match's normal form (the trailing "." is one of the task's regexes_to_ignore).
    assert [p.pred for p in preds] == ["0", "2", "[invalid]", "7"]
    assert preds[1].text == "#### 2."
    assert [p.correct for p in preds] == [True, True, False, False]
