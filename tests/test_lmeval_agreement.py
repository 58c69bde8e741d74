"""Our engine agrees with lm-eval's HFLM (peft=) on a local multiple-choice task: log-likelihoods
within 1e-4 in fp32, identical predictions, identical acc and acc_norm."""

from __future__ import annotations

import json
import random

import pytest

from pytest_modelcompat.scoring import predictions
from pytest_modelcompat.tasks.suite import load_instances, load_suite

WORDS = "cat dog mat bone lunch noon jar lid spoon four five two 42 100 positive negative".split()


def _docs(n=20):
    rng = random.Random(0)
    docs = []
    for i in range(n):
        question = f"Question: {' '.join(rng.choices(WORDS, k=4))}? Answer:"
        # Half the contexts end in a space: lm-eval moves it into the continuation.
        if i % 2:
            question += " "
        choices = [" ".join(rng.choices(WORDS, k=rng.randint(1, 4))) for _ in range(4)]
        docs.append({"id": f"q{i}", "question": question, "choices": choices, "label": rng.randrange(4)})
    return docs


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("lmeval_task")
    (root / "docs.jsonl").write_text("\n".join(json.dumps(d) for d in _docs()))
    (root / "tinymc.yaml").write_text(f"""task: tinymc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {root / 'docs.jsonl'}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
target_delimiter: " "
metric_list:
  - metric: acc
  - metric: acc_norm
""")
    (root / "modelcompat.yaml").write_text("""
tasks:
  - {name: tinymc, kind: multiple_choice, data: docs.jsonl, text: "{{question}}",
     choices: "{{choices}}", label: "{{label}}", delimiter: " "}
  - {name: tinymc_norm, kind: multiple_choice, data: docs.jsonl, text: "{{question}}",
     choices: "{{choices}}", label: "{{label}}", delimiter: " ", normalize: true}
""")
    return root


def _lm_eval(task_dir, adapter):
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    base = json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
    lm = HFLM(pretrained=str(base), peft=str(adapter), batch_size=4, dtype="float32", device="cpu")
    # cache_requests=False: lm-eval's request cache is not keyed by model (lm-eval #2715).
    out = simple_evaluate(
        model=lm, tasks=["tinymc"], task_manager=TaskManager(include_path=str(task_dir)),
        log_samples=True, cache_requests=False,
    )
    samples = sorted(out["samples"]["tinymc"], key=lambda s: s["doc_id"])
    return out["results"]["tinymc"], samples


def test_predictions_and_logliks_match_lm_eval(task_dir, tiny_adapter):
    from pytest_modelcompat.models.stack import load_stack

    results, samples = _lm_eval(task_dir, tiny_adapter)
    stack = load_stack(tiny_adapter, device="cpu")
    tasks = {t.name: t for t in load_suite(task_dir / "modelcompat.yaml")}
    instances = load_instances(tasks["tinymc"])
    assert len(instances) == len(samples) == 20
    ours = predictions.predict(stack, tasks["tinymc"], instances, batch_size=3)
    ours_norm = predictions.predict(stack, tasks["tinymc_norm"], instances, batch_size=3)

    for inst, sample, pred, pred_norm in zip(instances, samples, ours, ours_norm):
        # Same requests as lm-eval built: (context, delimiter + choice).
        assert [tuple(a) for a in sample["arguments"]] == [(inst.context, " " + c) for c in inst.choices]
        theirs = [resp[0][0] for resp in sample["resps"]]
        assert pred.logliks == pytest.approx(theirs, abs=1e-4)
        assert pred.correct == bool(sample["acc"])
        assert pred_norm.correct == bool(sample["acc_norm"])
        assert pred.pred == theirs.index(max(theirs))
    assert sum(p.correct for p in ours) / 20 == pytest.approx(results["acc,none"])
    assert sum(p.correct for p in ours_norm) / 20 == pytest.approx(results["acc_norm,none"])
