"""Training examples: the task's `train:` split rendered with the gate's templates.

An example is prompt (``Instance.context``) + gold continuation (delimiter + gold choice for
multiple choice, delimiter + target otherwise), tokenised by the scorer's own
``pytest_modelcompat.encode_request`` (lm-eval's split), with the loss only on continuation tokens.
A generated target (exact_match, generative) ends with the tokenizer's end-of-text token: the gate
generates until EOS or a stop string, and a target that ends at its last word teaches the model
to run on to the token cap (GSM8K adapters trained without it repeated ``#### N`` for 256 tokens).
Multiple choice scores the choice's log-likelihood only, so its target gets none. An empty context
(``text: ""`` — plain causal-LM training on raw text) is conditioned on the BOS/EOS token as lm-eval
does, so every text token gets a loss.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pytest_modelcompat import CompatInputError, encode_request

if TYPE_CHECKING:
    import torch

    from pytest_modelcompat import Instance, TaskSpec

IGNORE = -100
VAL_FRACTION = 0.2


@dataclass(frozen=True)
class Example:
    index: int               # row key into precomputed teacher logits (train and val share one range)
    input_ids: list[int]
    labels: list[int]        # IGNORE on prompt tokens
    instance: Instance


def continuation(task: TaskSpec, instance: Instance) -> str:
    """The gold continuation, delimiter included, exactly as the gate scores it."""
    if task.kind == "multiple_choice":
        return task.delimiter + instance.choices[instance.gold]
    return task.delimiter + str(instance.gold)


def build_examples(tokenizer, task: TaskSpec, instances: list[Instance], max_length: int,
                   start_index: int = 0, every_choice: bool = False) -> list[Example]:
    """Tokenise instances; sequences longer than max_length lose prompt tokens from the left
    (as lm-eval truncates), then continuation tokens from the right (EOS first: a cut text did not
    end there), keeping ≥ 1 prompt token.

    ``every_choice`` (multiple choice): one example per choice, prompt + that choice, in choice
    order, instead of one per instance with the gold choice. The gate decides on the log-likelihood
    of every choice, so a teacher's token distributions on the wrong choices carry as much of its
    decision as those on the gold one."""
    end = [tokenizer.eos_token_id] if task.kind != "multiple_choice" and tokenizer.eos_token_id is not None else []
    examples = []
    for inst in instances:
        texts = [task.delimiter + c for c in inst.choices] if every_choice else [continuation(task, inst)]
        for ctx, cont in encode_request(tokenizer, inst.context, texts):
            if not cont:
                raise CompatInputError(f"task {task.name!r}: instance {inst.id!r} has an empty continuation; "
                                       "fix its choices/label/target in the train data")
            cont = (cont + end)[: max_length - 1]
            ctx = ctx[-(max_length - len(cont)):]
            examples.append(Example(start_index + len(examples), ctx + cont, [IGNORE] * len(ctx) + cont, inst))
    return examples


def split_train_val(instances: list[Instance], seed: int, val_rows: int | None = None,
                    seen: frozenset[str] = frozenset()) -> tuple[list[Instance], list[Instance]]:
    """A seeded train/validation split of the train file: ``val_rows`` rows for validation, by
    default 20 % (the paper's protocol). Validation only scores, so it can be made larger than the
    default at the cost of forward passes: a selection among epochs that differ by a few negative
    flips needs a validation set where those are more than one or two instances.

    Validation takes rows whose id is not in ``seen`` (rows the adapters were trained on) first, in
    the same seeded order: an adapter is right more often on its own training rows, so validating
    there favours it over every candidate that moves away from it. With ``seen`` empty the split is
    the plain seeded one."""
    n_val = max(1, round(VAL_FRACTION * len(instances))) if val_rows is None else val_rows
    if len(instances) < 2 or not 1 <= n_val < len(instances):
        raise CompatInputError(f"the train split has {len(instances)} instance(s); need more than the "
                               f"{n_val} validation row(s) and at least 1 to train on (--limit, --val-rows)")
    order = list(range(len(instances)))
    random.Random(seed).shuffle(order)
    if seen:
        order.sort(key=lambda i: instances[i].id in seen)   # stable: unseen rows first, each in seeded order
    return [instances[i] for i in sorted(order[n_val:])], [instances[i] for i in sorted(order[:n_val])]


def collate(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch; padding gets IGNORE labels and attention 0."""
    import torch

    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    attention = torch.zeros((len(examples), width), dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e.input_ids)
        ids[row, :n] = torch.tensor(e.input_ids)
        labels[row, :n] = torch.tensor(e.labels)
        attention[row, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": attention,
            "index": torch.tensor([e.index for e in examples])}
