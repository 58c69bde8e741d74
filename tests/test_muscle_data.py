"""Training examples: gate templates, the scorer's tokenisation, loss mask, truncation, split."""

from __future__ import annotations

import pytest

from muscle.data import IGNORE, build_examples, collate, split_train_val
from pytest_modelcompat.errors import CompatInputError
from pytest_modelcompat.scoring.engine import encode_request
from pytest_modelcompat.tasks.spec import Instance, TaskSpec


@pytest.fixture(scope="module")
def tokenizer(tiny_tokenizer):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_tokenizer)


def _task(kind, delimiter=" "):
    return TaskSpec(name="t", kind=kind, source=None, data=None, train=None, text=None, choices=None, label=None,
                    target=None, delimiter=delimiter)


def test_multiple_choice_example_is_context_plus_gold_choice_with_loss_on_choice_only(tokenizer):
    inst = Instance(id="0", context="The cat sat on the", choices=("dog", "mat"), gold=1, doc={})
    [ex] = build_examples(tokenizer, _task("multiple_choice"), [inst], max_length=64)
    [(ctx, cont)] = encode_request(tokenizer, inst.context, [" mat"])
    assert ex.input_ids == ctx + cont
    assert ex.labels == [IGNORE] * len(ctx) + cont


def test_every_choice_gives_one_example_per_choice_in_choice_order_with_running_indices(tokenizer):
    insts = [Instance(id="0", context="The cat sat on the", choices=("dog", "mat", "hat"), gold=1, doc={}),
             Instance(id="1", context="Birds can", choices=("fly", "swim"), gold=0, doc={})]
    examples = build_examples(tokenizer, _task("multiple_choice"), insts, max_length=64, start_index=10,
                              every_choice=True)
    assert [e.index for e in examples] == [10, 11, 12, 13, 14]
    assert [e.instance.id for e in examples] == ["0", "0", "0", "1", "1"]
    pairs = encode_request(tokenizer, insts[0].context, [" dog", " mat", " hat"])
    for ex, (ctx, cont) in zip(examples[:3], pairs, strict=True):
        assert ex.input_ids == ctx + cont
        assert ex.labels == [IGNORE] * len(ctx) + cont


def test_empty_context_trains_on_every_text_token(tokenizer):
    inst = Instance(id="0", context="", choices=None, gold="The cat sat on the mat.", doc={})
    [ex] = build_examples(tokenizer, _task("generative", delimiter=""), [inst], max_length=64)
    text = tokenizer.encode("The cat sat on the mat.", add_special_tokens=False) + [tokenizer.eos_token_id]
    assert ex.input_ids == [tokenizer.bos_token_id] + text
    assert ex.labels == [IGNORE] + text


@pytest.mark.parametrize("kind", ["generative", "exact_match"])
def test_a_generated_target_ends_with_eos_so_the_adapter_learns_to_stop(tokenizer, kind):
    inst = Instance(id="0", context="Question: 2+2?\nAnswer:", choices=None, gold="4\n#### 4", doc={})
    [ex] = build_examples(tokenizer, _task(kind), [inst], max_length=64)
    [(ctx, cont)] = encode_request(tokenizer, inst.context, [" 4\n#### 4"])
    assert ex.input_ids == ctx + cont + [tokenizer.eos_token_id]
    assert ex.labels == [IGNORE] * len(ctx) + cont + [tokenizer.eos_token_id]


def test_a_choice_gets_no_eos_since_the_gate_scores_the_choice_alone(tokenizer):
    inst = Instance(id="0", context="The cat sat on the", choices=("dog", "mat"), gold=1, doc={})
    [ex] = build_examples(tokenizer, _task("multiple_choice"), [inst], max_length=64)
    assert ex.input_ids[-1] != tokenizer.eos_token_id


def test_a_target_cut_by_max_length_loses_its_eos_first(tokenizer):
    inst = Instance(id="0", context="Q", choices=None, gold="one two three four five six seven", doc={})
    [full] = build_examples(tokenizer, _task("generative"), [inst], max_length=1000)
    [cut] = build_examples(tokenizer, _task("generative"), [inst], max_length=len(full.input_ids) - 1)
    assert full.labels[-1] == tokenizer.eos_token_id
    assert cut.input_ids == full.input_ids[:-1]


def test_long_examples_lose_prompt_tokens_from_the_left(tokenizer):
    inst = Instance(id="0", context="The cat sat on the mat. " * 10 + "The dog ate the", choices=None,
                    gold="bone", doc={})
    [full] = build_examples(tokenizer, _task("generative"), [inst], max_length=1000)
    [cut] = build_examples(tokenizer, _task("generative"), [inst], max_length=8)
    assert len(cut.input_ids) == 8 and cut.input_ids == full.input_ids[-8:]
    assert cut.labels[-1] != IGNORE and cut.labels[0] == IGNORE


def test_split_is_seeded_disjoint_and_80_20():
    instances = [Instance(id=str(i), context="c", choices=None, gold="g", doc={}) for i in range(50)]
    train, val = split_train_val(instances, seed=7)
    assert (len(train), len(val)) == (40, 10)
    assert {i.id for i in train}.isdisjoint({i.id for i in val})
    assert split_train_val(instances, seed=7) == (train, val)
    assert split_train_val(instances, seed=8)[1] != val
    with pytest.raises(CompatInputError, match="at least 1 to train on"):
        split_train_val(instances[:1], seed=0)


def test_val_rows_sets_the_validation_size():
    instances = [Instance(id=str(i), context="c", choices=None, gold="g", doc={}) for i in range(50)]
    train, val = split_train_val(instances, seed=7, val_rows=30)
    assert (len(train), len(val)) == (20, 30)
    assert {i.id for i in train} | {i.id for i in val} == {i.id for i in instances}
    with pytest.raises(CompatInputError, match="--val-rows"):
        split_train_val(instances, seed=7, val_rows=50)


def test_validation_takes_rows_the_adapters_did_not_train_on_first():
    instances = [Instance(id=str(i), context="c", choices=None, gold="g", doc={}) for i in range(50)]
    plain_train, plain_val = split_train_val(instances, seed=7)
    assert split_train_val(instances, seed=7, seen=frozenset()) == (plain_train, plain_val)
    seen = frozenset(str(i) for i in range(0, 50, 2))          # 25 rows an adapter trained on
    train, val = split_train_val(instances, seed=7, seen=seen)
    assert len(val) == 10 and not {i.id for i in val} & seen
    assert {i.id for i in train} | {i.id for i in val} == {i.id for i in instances}
    # the unseen rows of the plain split stay in validation (same seeded order, seen ones moved back)
    assert {i.id for i in plain_val} - seen <= {i.id for i in val}
    # fewer unseen rows than validation needs: all of them, then seen ones
    _, val = split_train_val(instances, seed=7, val_rows=30, seen=seen)
    assert {i.id for i in val} - seen == {i.id for i in instances} - seen and len(val) == 30


def test_collate_pads_right_with_ignored_labels(tokenizer):
    insts = [Instance(id=str(i), context=c, choices=None, gold="mat", doc={}) for i, c in enumerate(["The cat", "The"])]
    examples = build_examples(tokenizer, _task("generative"), insts, max_length=64)
    batch = collate(examples, pad_id=0)
    short = len(examples[1].input_ids)
    assert batch["input_ids"].shape[1] == len(examples[0].input_ids)
    assert batch["attention_mask"][1, short:].sum() == 0
    assert (batch["labels"][1, short:] == IGNORE).all()
    assert batch["index"].tolist() == [0, 1]
