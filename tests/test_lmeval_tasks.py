"""`lm_eval:` suite tasks: our Instances, filters and answer checks equal what lm-eval itself does.

The reference is `lm_eval.simple_evaluate` run with a recording LM: it sees exactly the requests
lm-eval builds (contexts, continuations, generation kwargs) and lm-eval's per-sample log holds its
gold, filtered answers and metrics for canned model outputs.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_modelcompat.errors import CompatInputError
from pytest_modelcompat.tasks.suite import load_instances, load_suite, resolve_task

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_PIQA = REPO / "example_suite" / "data" / "piqa_valid.jsonl"
EXAMPLE_SST2 = REPO / "example_suite" / "data" / "sst2_dev.jsonl"

DOCS = [
    {"id": f"q{n}", "question": f"What is {n} plus {n}?", "options": ["zero", "one", str(2 * n)], "answer": 2,
     "solution": f"Add them.\n#### {2 * n}"}
    for n in range(8)
]

MC_YAML = {
    "task": "tiny_mc",
    "dataset_path": "json",
    "test_split": "test",
    "training_split": "train",
    "output_type": "multiple_choice",
    "doc_to_text": "Q: {{question}}\nA:",
    "doc_to_choice": "{{options}}",
    "doc_to_target": "answer",
    "num_fewshot": 2,
    "metric_list": [{"metric": "acc"}, {"metric": "acc_norm"}],
}
GEN_YAML = {
    "task": "tiny_gen",
    "dataset_path": "json",
    "test_split": "test",
    "output_type": "generate_until",
    "doc_to_text": "Question: {{question}}\nAnswer:",
    "doc_to_target": "{{solution}}",
    "generation_kwargs": {"until": ["\n\n", "Question:"], "do_sample": False, "max_gen_toks": 32},
    "filter_list": [
        {"name": "strict-match",
         "filter": [{"function": "regex", "regex_pattern": "#### (\\-?[0-9\\.\\,]+)"}, {"function": "take_first"}]},
        {"name": "flexible-extract",
         "filter": [{"function": "regex", "group_select": -1, "regex_pattern": "(-?[$0-9.,]{2,})|(-?[0-9]+)"},
                    {"function": "take_first"}]},
    ],
    "metric_list": [{"metric": "exact_match", "ignore_case": True,
                     "regexes_to_ignore": [",", "\\$", "(?s).*#### ", "\\.$"]}],
}
CANNED = ["I think\n#### {gold}", "#### {gold}.", "The answer is {gold}", "#### 99", "#### ${gold}"]


@pytest.fixture(scope="module")
def lm_suite(tmp_path_factory):
    directory = tmp_path_factory.mktemp("lm_tasks")
    docs = directory / "docs.jsonl"
    docs.write_text("".join(json.dumps(doc) + "\n" for doc in DOCS), encoding="utf-8")
    files = {"test": str(docs), "train": str(docs)}
    (directory / "mc.yaml").write_text(yaml.safe_dump({**MC_YAML, "dataset_kwargs": {"data_files": files}}))
    (directory / "gen.yaml").write_text(yaml.safe_dump({**GEN_YAML, "dataset_kwargs": {"data_files": files}}))
    suite = directory / "modelcompat.yaml"
    suite.write_text(yaml.safe_dump({"tasks": [
        {"name": "mc", "lm_eval": "mc.yaml", "normalize": True, "gate": {"max_nfr": 0.1}},
        {"name": "gen", "lm_eval": "gen.yaml", "limit": 5},
    ]}))
    return suite


def run_lm_eval(yaml_path: Path, limit: int, lm):
    """lm-eval's own evaluation of a task YAML with a fake LM; returns its per-sample log."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    results = simple_evaluate(model=lm, tasks=[str(yaml_path)], limit=limit, log_samples=True,
                              task_manager=TaskManager(include_defaults=False))
    [samples] = results["samples"].values()
    # one sample per doc and filter pipeline; the first pipeline is the one we gate on
    first_filter = samples[0]["filter"]
    return sorted((s for s in samples if s["filter"] == first_filter), key=lambda sample: sample["doc_id"])


def recording_lm(loglikelihood=None, generate=None):
    from lm_eval.api.model import LM

    class RecordingLM(LM):
        def __init__(self):
            super().__init__()
            self.requests = []

        def loglikelihood(self, requests):
            self.requests += requests
            return [loglikelihood(request) for request in requests]

        def loglikelihood_rolling(self, requests):
            raise NotImplementedError

        def generate_until(self, requests):
            self.requests += requests
            return [generate(request) for request in requests]

    return RecordingLM()


def test_multiple_choice_instances_equal_lm_eval_requests(lm_suite):
    mc, _ = load_suite(lm_suite)
    assert mc.kind is None  # load_suite does not touch lm-eval
    resolved = resolve_task(mc)
    assert (resolved.kind, resolved.delimiter, resolved.normalize) == ("multiple_choice", " ", True)
    assert resolved.gate == {"max_nfr": 0.1}
    instances = load_instances(resolved, limit=6)
    assert [instance.id for instance in instances] == [f"q{n}" for n in range(6)]

    # the fake model prefers choice (doc_id % 3): lm-eval's acc then tells us where its gold is
    lm = recording_lm(loglikelihood=lambda request: (0.0 if request.idx == request.doc_id % 3 else -5.0, False))
    samples = run_lm_eval(Path(resolved.lm_eval), 6, lm)
    by_doc = {}
    for request in lm.requests:
        by_doc.setdefault(request.doc_id, []).append(request.arguments)
    for doc_id, instance in enumerate(instances):
        assert by_doc[doc_id] == [(instance.context, resolved.delimiter + choice) for choice in instance.choices]
        assert samples[doc_id]["acc"] == float(instance.gold == doc_id % 3)
    assert "Q: What is" in instances[0].context.split("\n\n")[0]  # two few-shot examples came first
    assert instances[0].context.count("\n\n") == 2


def test_generation_instances_filter_and_match_equal_lm_eval(lm_suite):
    from pytest_modelcompat.tasks.lmeval_source import response_correct, response_filter

    _, gen = load_suite(lm_suite)
    resolved = resolve_task(gen)
    assert (resolved.kind, resolved.stop, resolved.max_new_tokens) == ("exact_match", ("\n\n", "Question:"), 32)
    instances = load_instances(resolved)
    assert len(instances) == 5  # the suite's limit
    outputs = {n: CANNED[n % len(CANNED)].format(gold=2 * n) for n in range(5)}
    lm = recording_lm(generate=lambda request: outputs[request.doc_id])
    samples = run_lm_eval(Path(resolved.lm_eval), 5, lm)
    extract, correct = response_filter(resolved), response_correct(resolved)
    for request in lm.requests:
        context, kwargs = request.arguments
        assert context == instances[request.doc_id].context
        assert tuple(kwargs["until"]) == resolved.stop and kwargs["max_gen_toks"] == resolved.max_new_tokens
    for doc_id, instance in enumerate(instances):
        sample = samples[doc_id]
        assert sample["target"] == instance.gold
        answer = extract(outputs[doc_id], instance.doc)
        assert sample["filter"] == "strict-match" and sample["filtered_resps"] == [answer]
        assert correct(answer, instance) == bool(sample["exact_match"])
    # the canned outputs exercise both verdicts
    assert {bool(sample["exact_match"]) for sample in samples} == {True, False}


@settings(max_examples=300, deadline=None)
@given(a=st.text(alphabet="0123456789,.$#Ab -", max_size=10), b=st.text(alphabet="0123456789,.$#Ab -", max_size=10))
def test_answer_normal_forms_are_equal_exactly_when_lm_eval_exact_match_says_so(lm_suite, a, b):
    from lm_eval.api.metrics import exact_match_hf_evaluate

    from pytest_modelcompat.tasks.lmeval_source import answer_normal_form

    _, gen = load_suite(lm_suite)
    normal = answer_normal_form(resolve_task(gen))
    options = {k: v for k, v in GEN_YAML["metric_list"][0].items() if k != "metric"}
    same = exact_match_hf_evaluate(predictions=[a], references=[b], **options)["exact_match"] == 1.0
    assert (normal(a) == normal(b)) == same
    assert normal("#### 1,000.") == normal("1000") == "1000"


def test_train_split_uses_the_tasks_training_docs(lm_suite):
    mc, gen = load_suite(lm_suite)
    train = load_instances(resolve_task(mc), split="train", limit=3)
    assert [instance.id for instance in train] == ["q0", "q1", "q2"]
    assert all(instance.context.endswith(f"Q: {DOCS[n]['question']}\nA:") for n, instance in enumerate(train))
    with pytest.raises(CompatInputError, match="no training_split"):
        load_instances(resolve_task(gen), split="train")


@pytest.mark.skipif(not EXAMPLE_PIQA.is_file(), reason="example_suite PIQA data not present")
def test_lm_eval_piqa_yaml_and_our_suite_template_agree_on_real_data(tmp_path):
    """lm-eval's piqa.yaml prompt over local PIQA rows equals the same prompt as a native suite task."""
    import lm_eval

    bundled = yaml.safe_load((Path(lm_eval.__file__).parent / "tasks" / "piqa" / "piqa.yaml").read_text())
    local = {key: bundled[key] for key in ("doc_to_text", "doc_to_target", "doc_to_choice", "output_type")}
    local.update(task="local_piqa", dataset_path="json", test_split="validation",
                 dataset_kwargs={"data_files": {"validation": str(EXAMPLE_PIQA)}},
                 metric_list=[{"metric": "acc"}, {"metric": "acc_norm"}])
    (tmp_path / "piqa.yaml").write_text(yaml.safe_dump(local))
    (tmp_path / "modelcompat.yaml").write_text(yaml.safe_dump({"tasks": [
        {"name": "via_lm_eval", "lm_eval": "piqa.yaml"},
        {"name": "native", "kind": "multiple_choice", "data": str(EXAMPLE_PIQA), "text": local["doc_to_text"],
         "choices": local["doc_to_choice"], "label": local["doc_to_target"]},
    ]}))
    via_lm_eval, native = load_suite(tmp_path / "modelcompat.yaml")
    ours = load_instances(native, limit=200)
    theirs = load_instances(resolve_task(via_lm_eval), limit=200)
    assert [(i.id, i.context, i.choices, i.gold) for i in ours] == [(i.id, i.context, i.choices, i.gold) for i in theirs]


@pytest.mark.skipif(not EXAMPLE_SST2.is_file(), reason="example_suite SST-2 data not present")
def test_example_sst2_suite_is_lm_evals_glue_sst2_prompt(tmp_path):
    """example_suite/sst2's task renders the instances lm-eval's glue/sst2 task renders, on the same rows."""
    import lm_eval

    bundled = yaml.safe_load((Path(lm_eval.__file__).parent / "tasks" / "glue" / "sst2" / "default.yaml").read_text())
    local = {key: bundled[key] for key in ("doc_to_text", "doc_to_target", "doc_to_choice", "output_type")}
    local.update(task="local_sst2", dataset_path="json", test_split="validation",
                 dataset_kwargs={"data_files": {"validation": str(EXAMPLE_SST2)}}, metric_list=[{"metric": "acc"}])
    (tmp_path / "sst2.yaml").write_text(yaml.safe_dump(local))
    (tmp_path / "modelcompat.yaml").write_text(yaml.safe_dump({"tasks": [{"name": "via_lm_eval", "lm_eval": "sst2.yaml"}]}))
    [via_lm_eval] = load_suite(tmp_path / "modelcompat.yaml")
    [ours] = load_suite(REPO / "example_suite" / "sst2" / "compat_sst2.yaml")
    theirs = load_instances(resolve_task(via_lm_eval))
    mine = load_instances(ours)
    assert len(mine) == 872
    assert [(i.context, i.choices, i.gold) for i in mine] == [(i.context, i.choices, i.gold) for i in theirs]


def test_example_gsm8k_suite_is_lm_evals_gsm8k_prompt(tmp_path, monkeypatch):
    """example_suite/gsm8k renders the zero-shot contexts and gold answers lm-eval's gsm8k task
    renders, on rows in GSM8K's format (the suite reads $MODELCOMPAT_GSM8K; no GSM8K copy here)."""
    import lm_eval

    rows = [{"question": f"Tom has {n} apples and buys {n + 2} more. How many apples does he have?",
             "answer": f"He has {n} + {n + 2} = <<{n}+{n + 2}={2 * n + 2}>>{2 * n + 2} apples.\n#### {2 * n + 2}"}
            for n in range(5)]
    for split in ("test", "train"):
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    monkeypatch.setenv("MODELCOMPAT_GSM8K", str(tmp_path))
    bundled = yaml.safe_load((Path(lm_eval.__file__).parent / "tasks" / "gsm8k" / "gsm8k.yaml").read_text())
    local = {key: bundled[key] for key in ("doc_to_text", "doc_to_target", "output_type", "generation_kwargs",
                                          "metric_list", "filter_list")}
    local.update(task="local_gsm8k", dataset_path="json", test_split="test", num_fewshot=0,
                 dataset_kwargs={"data_files": {"test": str(tmp_path / "test.jsonl")}})
    (tmp_path / "gsm8k.yaml").write_text(yaml.safe_dump(local))
    (tmp_path / "modelcompat.yaml").write_text(yaml.safe_dump({"tasks": [{"name": "via_lm_eval", "lm_eval": "gsm8k.yaml"}]}))
    [via_lm_eval] = load_suite(tmp_path / "modelcompat.yaml")
    [ours] = load_suite(REPO / "example_suite" / "gsm8k" / "compat_gsm8k.yaml")
    theirs, mine = load_instances(resolve_task(via_lm_eval)), load_instances(ours)
    assert len(mine) == 5
    assert [(i.context, i.gold) for i in mine] == [(i.context, i.gold) for i in theirs]
    strict = bundled["filter_list"][0]["filter"][0]["regex_pattern"]   # lm-eval's strict-match answer
    for answer in [i.gold for i in mine] + ["so #### 1,234.5 dollars", "#### -3", "no final answer"]:
        found, expected = re.search(ours.extract, answer), re.search(strict, answer)
        assert (found and found.group(1)) == (expected and expected.group(1))


BAD_TASKS = {
    "normalize without acc_norm": ({"lm_eval": "gen.yaml", "normalize": True}, "`normalize` applies to multiple-choice"),
    "gate for the other kind": ({"lm_eval": "mc.yaml", "gate": {"max_m_r": 0.1}}, "does not apply to a multiple_choice"),
}


@pytest.mark.parametrize("entry, message", BAD_TASKS.values(), ids=BAD_TASKS.keys())
def test_bad_lm_eval_tasks_are_input_errors(lm_suite, entry, message):
    suite = lm_suite.with_name(f"compat_{abs(hash(message))}.yaml")
    suite.write_text(yaml.safe_dump({"tasks": [{"name": "bad", **entry}]}))
    [spec] = load_suite(suite)
    with pytest.raises(CompatInputError, match=message):
        resolve_task(spec)


def test_unreadable_dataset_is_an_input_error(tmp_path):
    broken = {**MC_YAML, "task": "broken_mc", "dataset_kwargs": {"data_files": {"test": str(tmp_path / "none.jsonl")}}}
    (tmp_path / "broken.yaml").write_text(yaml.safe_dump(broken))
    (tmp_path / "modelcompat.yaml").write_text(yaml.safe_dump({"tasks": [{"name": "b", "lm_eval": "broken.yaml"}]}))
    [spec] = load_suite(tmp_path / "modelcompat.yaml")
    with pytest.raises(CompatInputError, match="lm-eval could not build task"):
        resolve_task(spec)


def test_unknown_task_name_is_an_input_error(tmp_path, monkeypatch):
    from lm_eval.tasks import TaskManager

    from pytest_modelcompat.tasks import lmeval_source

    # lm-eval's index of its ~15k bundled tasks takes tens of seconds to build; an empty index
    # exercises the same failed lookup
    monkeypatch.setattr(lmeval_source, "_task_manager", lambda include_defaults: TaskManager(include_defaults=False))
    (tmp_path / "modelcompat.yaml").write_text(yaml.safe_dump({"tasks": [{"name": "h", "lm_eval": "no_such_task_xyz"}]}))
    [spec] = load_suite(tmp_path / "modelcompat.yaml")
    with pytest.raises(CompatInputError, match="unknown lm-eval task 'no_such_task_xyz'"):
        resolve_task(spec)


def test_fingerprint_follows_the_lm_eval_dataset_content(tmp_path):
    from pytest_modelcompat.tasks import lmeval_source

    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps(doc) + "\n" for doc in DOCS), encoding="utf-8")
    task_yaml = {**MC_YAML, "task": "edited_mc", "dataset_kwargs": {"data_files": {"test": str(docs), "train": str(docs)}}}
    (tmp_path / "mc.yaml").write_text(yaml.safe_dump(task_yaml))
    (tmp_path / "modelcompat.yaml").write_text(yaml.safe_dump({"tasks": [{"name": "mc", "lm_eval": "mc.yaml"}]}))
    [spec] = load_suite(tmp_path / "modelcompat.yaml")
    before = resolve_task(spec).fingerprint()
    assert resolve_task(spec).fingerprint() == before
    with pytest.raises(ValueError, match="resolve_task"):
        spec.fingerprint()
    docs.write_text("".join(json.dumps({**doc, "question": doc["question"] + "!"}) + "\n" for doc in DOCS))
    for cached in (lmeval_source.lmeval_task, lmeval_source.dataset_sha256, lmeval_source._eval_docs):
        cached.cache_clear()  # a new process in real use
    assert resolve_task(spec).fingerprint() != before
