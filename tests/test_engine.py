"""Engine: packed-tree log-likelihoods equal one plain forward per choice; batching invariance;
greedy generation with stop strings."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_modelcompat.errors import CompatInputError
from pytest_modelcompat.scoring import engine

REQUESTS = [
    ("Question: what is two plus two? Answer:", [" four", " five", " the cat sat", " 42"]),
    # Choices sharing leading tokens share trie nodes; one is a prefix of another.
    ("Goal: open a jar. Solution:", [" twist the lid.", " twist the lid with a spoon.", " twist the",
                                     " hit it with a spoon and then the mat."]),
    ("The cat sat on the ", ["mat.", "dog", "bone ate the cat"]),  # trailing space moves to the choice
    ("", [" positive", "negative review"]),  # empty context: the prefix token stands in
    ("numbers 0 1 2", [" 3", " 3 4 5 6 7 8 9 10 11 12", " 100"]),
]


@pytest.fixture(scope="module")
def stack(tiny_adapter):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_dir = _base_dir(tiny_adapter)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), tiny_adapter).eval()
    return SimpleNamespace(
        model=model, tokenizer=AutoTokenizer.from_pretrained(base_dir), device=torch.device("cpu"),
        fingerprint="tiny-a1",
    )


def _base_dir(adapter_dir):
    import json

    return json.loads((adapter_dir / "adapter_config.json").read_text())["base_model_name_or_path"]


def _per_choice_logliks(model, tokenizer, requests):
    """One forward per (context, choice) and a full log_softmax, like lm-eval: a tensor of choice
    log-likelihoods per request (with gradients where the caller allows them)."""
    import torch

    out = []
    limit = engine.max_length(model, tokenizer)
    for context, continuations in requests:
        values = []
        for context_enc, continuation_enc in engine.encode_request(tokenizer, context, continuations):
            inp = (context_enc + continuation_enc)[-(limit + 1):][:-1]
            logits = model(input_ids=torch.tensor([inp])).logits[0]
            logprobs = torch.log_softmax(logits[-len(continuation_enc):], dim=-1)
            values.append(logprobs.gather(1, torch.tensor(continuation_enc)[:, None]).sum())
        out.append(torch.stack(values))
    return out


def _reference(stack, requests):
    import torch

    with torch.inference_mode():
        return [row.tolist() for row in _per_choice_logliks(stack.model, stack.tokenizer, requests)]


def test_packed_trees_equal_one_forward_per_choice(stack):
    ours = engine.loglikelihoods(stack, REQUESTS, batch_size=4)
    reference = _reference(stack, REQUESTS)
    assert [len(v) for v in ours] == [len(c) for _, c in REQUESTS]
    for got, want in zip(ours, reference):
        assert got == pytest.approx(want, abs=1e-4)


def test_training_form_has_the_gradients_of_one_forward_per_choice(tiny_adapter):
    """What `muscle train --objective choice` back-propagates: the packed forward's gradients equal
    autograd through one plain forward per choice. Positions shared by several choices (the context's
    last one predicts every first token) make the token log-probs' custom backward accumulate."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_dir = _base_dir(tiny_adapter)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), tiny_adapter, is_trainable=True)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    weights = torch.randn(sum(len(c) for _, c in REQUESTS), generator=torch.Generator().manual_seed(0))
    lora = [p for p in model.parameters() if p.requires_grad]

    def gradients(logliks):
        grads = torch.autograd.grad((torch.cat(list(logliks)) * weights).sum(), lora)
        return torch.cat([g.flatten() for g in grads])

    packed = gradients(engine.packed_choice_loglikelihoods(model, tokenizer, REQUESTS, device=torch.device("cpu")))
    assert packed.abs().max() > 0
    torch.testing.assert_close(packed, gradients(_per_choice_logliks(model, tokenizer, REQUESTS)), rtol=1e-4, atol=1e-6)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(1, 60), min_size=1, max_size=24))
def test_packed_rows_place_every_tree_once_without_overlap(lengths):
    rows = engine.pack_rows(lengths)
    placed = sorted(i for row in rows for i, _ in row)
    assert placed == list(range(len(lengths)))
    for row in rows:
        spans = sorted((o, o + lengths[i]) for i, o in row)
        assert all(end <= start for (_, end), (start, _) in zip(spans, spans[1:]))   # no overlap
        assert spans[-1][1] <= max(lengths)                                           # no row longer than the longest tree


def test_training_form_packs_several_trees_to_a_row_and_scores_as_the_gate(stack):
    """The training form lays trees several to a row; each must still score exactly as alone."""
    import torch

    trees, _ = engine._build_trees(stack.tokenizer, REQUESTS, limit=512)
    assert any(len(row) > 1 for row in engine.pack_rows([t.length for t in trees]))
    with torch.no_grad():
        packed = engine.packed_choice_loglikelihoods(stack.model, stack.tokenizer, REQUESTS, device=stack.device)
    for got, want in zip(packed, engine.loglikelihoods(stack, REQUESTS, batch_size=4)):
        assert got.tolist() == pytest.approx(want, abs=1e-4)


def test_shared_leading_tokens_are_computed_once(stack):
    trees, _ = engine._build_trees(stack.tokenizer, REQUESTS[1:2], limit=512)
    (tree,) = trees
    continuations = [c for _, c, _ in tree.targets]
    assert len(tree.tokens) < sum(len(c) - 1 for c in continuations)


def test_batch_size_does_not_change_loglikelihoods(stack):
    requests = REQUESTS * 4
    by_batch = {b: engine.loglikelihoods(stack, requests, batch_size=b) for b in (1, 3, 16)}
    for b in (3, 16):
        for got, want in zip(by_batch[b], by_batch[1]):
            assert got == pytest.approx(want, abs=1e-4)


def test_encode_request_matches_lm_eval_rules(stack):
    tok = stack.tokenizer
    # Trailing whitespace of the context is moved into the continuation before encoding.
    (context_enc, continuation_enc), = engine.encode_request(tok, "The cat sat on the ", ["mat."])
    assert context_enc == tok.encode("The cat sat on the")
    assert tok.decode(continuation_enc) == " mat."
    # Empty context: BOS (here <|endoftext|>) is the context.
    (context_enc, continuation_enc), = engine.encode_request(tok, "", ["dog"])
    assert context_enc == [tok.bos_token_id] and continuation_enc == tok.encode("dog")


def test_truncation_keeps_the_rightmost_tokens(stack, monkeypatch):
    # With a tiny maximum length every (context, choice) is cut from the left like lm-eval does,
    # so choices no longer share one prefix; the result must still match the reference.
    monkeypatch.setattr(engine, "max_length", lambda model, tokenizer: 6)
    requests = [REQUESTS[0], REQUESTS[2]]
    ours = engine.loglikelihoods(stack, requests, batch_size=2)
    for got, want in zip(ours, _reference(stack, requests)):
        assert got == pytest.approx(want, abs=1e-4)


def test_empty_choice_is_an_input_error(stack):
    with pytest.raises(CompatInputError, match="empty"):
        engine.loglikelihoods(stack, [("Question:", ["", " yes"])])


def test_progress_accepts_callbacks_and_rich(stack):
    from rich.progress import Progress

    seen = []
    engine.loglikelihoods(stack, REQUESTS, batch_size=2, progress=seen.append)
    assert sum(seen) == len(REQUESTS)
    with Progress(disable=True) as progress:
        engine.loglikelihoods(stack, REQUESTS, batch_size=2, progress=progress, description="scoring")
        (task,) = progress.tasks
        assert task.completed == task.total == len(REQUESTS)


def _reference_greedy(stack, prompt, max_new_tokens):
    import torch

    ids = stack.tokenizer.encode(prompt)
    new = []
    with torch.inference_mode():
        for _ in range(max_new_tokens):
            token = int(stack.model(input_ids=torch.tensor([ids + new])).logits[0, -1].argmax())
            if token == stack.tokenizer.eos_token_id:
                break
            new.append(token)
    return stack.tokenizer.decode(new, skip_special_tokens=True)


def test_generate_is_greedy_and_batch_invariant(stack):
    prompts = ["Question: what is two plus two? Answer:", "The cat", "Dialogue: Anna: hi Bob, lunch today?"]
    expected = [_reference_greedy(stack, p, 8) for p in prompts]
    for batch_size in (1, 3):
        assert engine.generate(stack, prompts, max_new_tokens=8, stop=[], batch_size=batch_size) == expected


def test_generate_cuts_at_stop_strings(stack):
    prompt = "Question: what is two plus two? Answer:"
    free = _reference_greedy(stack, prompt, 12)
    assert len(free) > 2, "the tiny model should produce some text"
    stop = free[len(free) // 2: len(free) // 2 + 2]
    (text,) = engine.generate(stack, [prompt], max_new_tokens=12, stop=[stop])
    assert text == free[: free.index(stop)]


def test_truncate_at_stop_takes_the_earliest():
    assert engine.truncate_at_stop("a\n\nQuestion: b", ["Question:", "\n\n"]) == "a"
    assert engine.truncate_at_stop("no stop here", ["Question:"]) == "no stop here"


@pytest.mark.parametrize("architecture", ["mistral", "gemma3_text"])
def test_sliding_window_models_match_their_own_masks(tiny_tokenizer, architecture):
    # A custom 4D mask bypasses the model's mask building; the engine must apply the window itself
    # (Mistral: one windowed mask; Gemma 3: sliding and full layers mixed).
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_tokenizer)
    extra = {"layer_types": ["sliding_attention", "full_attention"]} if architecture == "gemma3_text" else {}
    config = AutoConfig.for_model(
        architecture, vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, sliding_window=4,
        max_position_embeddings=512, pad_token_id=tok.pad_token_id, **extra,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    stack = SimpleNamespace(model=model, tokenizer=tok, device=torch.device("cpu"))
    ours = engine.loglikelihoods(stack, REQUESTS, batch_size=4)
    for got, want in zip(ours, _reference(stack, REQUESTS)):
        assert got == pytest.approx(want, abs=1e-4)
