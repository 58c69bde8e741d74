"""What the trainer optimises, per ``--objective``: training items, batching, and the batch loss.

Every objective has the same shape, so the recipe (muscle/trainer.py) reads the same for all:

    objective.items(instances, start)  → the dataset items of one split (train or validation)
    objective.collate(items)           → one batch
    objective.loss(model, batch)       → (loss, stats for logging)

- ``finetune``: cross-entropy on the gold continuation (what makes A1 and A2);
- ``token``: the paper's per-token masked KL (muscle/losses/token.py); teachers' logits come from
  resident teachers or the precomputed top-k store (muscle/teachers.py);
- ``choice``: KL between choice distributions (muscle/losses/choice.py); the student's choice
  log-likelihoods come from the scoring engine's packed trees, with gradients; the teachers' are
  the gate's cached predictions on the train split (:func:`teacher_predictions`);
- ``sequence``: cross-entropy on the better teacher's greedy output (muscle/losses/sequence.py),
  also from the gate's cached predictions.

``choice`` and ``sequence`` hold no teacher model while training and only ever see the teachers'
*predictions*, so old and new stacks may have different tokenizers and architectures.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from muscle.data import build_examples, collate
from pytest_modelcompat import CompatInputError

if TYPE_CHECKING:
    import torch

    from pytest_modelcompat import Instance, Prediction, TaskSpec

# The objective `muscle train` uses when --objective is not given, per task kind (measured:
# benchmarks/results/compat.md). Both work across tokenizers.
DEFAULT_OBJECTIVE = {"multiple_choice": "choice", "exact_match": "sequence", "generative": "sequence"}
# The mask each objective uses when --mask is not given, and the old side's target. The choice default
# (old-correct, M1's distribution) had the lowest validation NFR of the choice recipes measured on the
# shipped update (benchmarks/results/compat.md; docs/muscle.md "Defaults").
DEFAULT_MASK = {"token": "paper", "choice": "old-correct", "sequence": "paper"}
DEFAULT_OLD_TARGET = {"token": "m1", "choice": "m1", "sequence": "m1"}
# choice: an instance "has something to teach" when its target is at least this far (nats) from A2's
# choice distribution before training; e.g. a (0.99, 0.01) target vs A2's (0.999, 0.001) at T = 2.
FOCUS_KL = 0.01
OBJECTIVE_KINDS = {"token": ("multiple_choice", "exact_match", "generative"),
                   "choice": ("multiple_choice",), "sequence": ("exact_match", "generative")}


def check_objective(objective: str, mask: str, kind: str, task_name: str, targets: tuple[str, str]) -> None:
    """One line naming the fix when an objective does not fit the task kind or the mask."""
    from muscle.losses.sequence import SEQUENCE_MASKS

    if kind not in OBJECTIVE_KINDS[objective]:
        fits = [name for name, kinds in OBJECTIVE_KINDS.items() if kind in kinds]
        raise CompatInputError(f"--objective {objective} does not apply to task {task_name!r} ({kind}); "
                               f"use --objective {' or '.join(fits)}")
    if objective != "choice" and "ensemble" in targets:
        raise CompatInputError(f"--old-target/--new-target ensemble mixes choice distributions; it applies to "
                               f"--objective choice, not {objective}")
    if objective == "sequence" and mask not in SEQUENCE_MASKS:
        raise CompatInputError(f"--mask {mask} needs the teachers' log-likelihoods of the gold text, which the "
                               f"sequence objective does not have; use --mask {', '.join(SEQUENCE_MASKS)}")


def teacher_predictions(stack_ref: tuple[str, str | None], task: TaskSpec, instances: list[Instance], *,
                        options: dict[str, Any], cache, batch_size: int, progress=None,
                        label: str) -> list[Prediction]:
    """The gate's own predictions of one teacher stack on the train split (``task.train_split()``),
    through the shared result cache: computed once per (stack, train data), then read back. The
    stack is loaded only when something is missing, and freed before training starts."""
    import gc

    from pytest_modelcompat import Prediction, load_stack, predict, stack_fingerprint

    train_task = task.train_split()
    fingerprint = stack_fingerprint(*stack_ref, dtype=options["dtype"], allow_pickle=options["allow_pickle"])
    if cache is not None and fingerprint is not None:
        found = cache.get_many(fingerprint, train_task.fingerprint(), [inst.id for inst in instances])
        preds = [Prediction.from_cached(found[i.id], train_task, i) if i.id in found else None
                 for i in instances]
        if all(p is not None for p in preds):
            return preds
    stack = load_stack(*stack_ref, **options)
    try:
        return predict(stack, train_task, instances, cache=cache, batch_size=batch_size,
                                progress=progress, description=f"{label} on the train split")
    finally:
        del stack
        gc.collect()


def mean_loss(objective, model, loader) -> float:
    """The objective's loss over a loader, weighted by batch size (validation, no gradient)."""
    import torch

    total = count = 0
    with torch.no_grad():
        for batch in loader:
            n = len(batch["index"]) if "index" in batch else len(batch["weight"])
            total += objective.loss(model, batch)[0].item() * n
            count += n
    return total / count


# ------------------------------------------------------------------------------------ finetune / token


class TokenObjective:
    """``finetune`` (cross-entropy) and ``token`` (MUSCLE's per-token KL): gold continuations."""

    def __init__(self, config, task: TaskSpec, tokenizer, pad_id: int, teachers=None, device=None):
        self.config, self.task, self.tokenizer, self.pad_id = config, task, tokenizer, pad_id
        self.teachers = teachers   # callable(model, batch) → (M1, M2) logits or top-k; None: finetune
        self.device = device

    def items(self, instances: list[Instance], start: int = 0, train: bool = False):
        # --every-choice widens training only; the validation loss stays the paper's, on gold answers
        every_choice = train and self.teachers is not None and self.config.every_choice
        return build_examples(self.tokenizer, self.task, instances, self.config.max_length, start_index=start,
                              every_choice=every_choice)

    def collate(self, items) -> dict[str, torch.Tensor]:
        return collate(items, self.pad_id)

    def validation_loss(self, model, loader, predictions) -> float:
        return mean_loss(self, model, loader)

    def loss(self, model, batch) -> tuple[torch.Tensor, dict[str, float]]:
        import torch

        from muscle.losses.targets import select_targets, target_logits
        from muscle.losses.token import muscle_loss

        batch = {key: value.to(self.device) for key, value in batch.items()}
        student, (targets, sequence) = target_logits(model, batch), select_targets(batch["labels"])
        if self.teachers is None:
            ce = torch.nn.functional.cross_entropy(student.float(), targets)
            return ce, {"loss": ce.item()}
        m1, m2 = self.teachers(model, batch)
        return muscle_loss(student.float(), targets, sequence, m1, m2, mask=self.config.mask,
                           temperature=self.config.temperature, ce_weight=self.config.ce_weight)


# ------------------------------------------------------------------------------------------- choice


@dataclass(frozen=True)
class ChoiceItem:
    instance: Instance
    old_logliks: tuple[float, ...]
    new_logliks: tuple[float, ...]


class ChoiceObjective:
    """Multiple choice: the student's choice distribution towards M1's / M2's / their ensemble's."""

    def __init__(self, config, task: TaskSpec, tokenizer, teachers: dict[str, dict[str, Prediction]], device,
                 model_config):
        self.config, self.task, self.tokenizer, self.device = config, task, tokenizer, device
        self.old, self.new = teachers["old"], teachers["new"]
        self.model_config = model_config

    def items(self, instances: list[Instance], start: int = 0, train: bool = False) -> list[ChoiceItem]:
        items = [ChoiceItem(inst, tuple(self.old[inst.id].logliks), tuple(self.new[inst.id].logliks))
                 for inst in instances]
        if train and self.config.train_on == "disagreement":
            return self._informative_with_anchors(items)
        return items

    def _informative_with_anchors(self, items: list[ChoiceItem]) -> list[ChoiceItem]:
        """The instances with something to teach — KL(target ‖ A2's distribution) ≥ FOCUS_KL before
        training — plus as many of the others, drawn at random (seeded), as anchors that hold the
        student where it already agrees. An instance whose target equals A2's distribution has a
        zero gradient at the start, so this spends the student passes where the loss is."""
        import random

        from muscle.losses.choice import starting_divergence

        c = self.config
        old, new, gold, lengths = self._teacher_tensors(items)
        divergence = starting_divergence(old, new, gold, lengths=lengths, mask=c.mask, temperature=c.temperature,
                                         old_target=c.old_target, new_target=c.new_target,
                                         ensemble_weight=c.ensemble_weight).tolist()
        informative = [i for i, d in enumerate(divergence) if d >= FOCUS_KL]
        others = [i for i, d in enumerate(divergence) if d < FOCUS_KL]
        anchors = random.Random(c.seed).sample(others, min(len(others), len(informative)))
        return [items[i] for i in sorted(informative + anchors)]

    def collate(self, items: list[ChoiceItem]) -> list[ChoiceItem]:
        return items

    def _padded(self, rows):
        import torch

        width = max(len(row) for row in rows)
        out = torch.full((len(rows), width), float("-inf"), device=self.device)
        for r, row in enumerate(rows):
            out[r, :len(row)] = row if isinstance(row, torch.Tensor) else torch.tensor(row, dtype=out.dtype)
        return out

    def _teacher_tensors(self, items: list[ChoiceItem]):
        """(M1's ℓ, M2's ℓ, gold, choice lengths or None) for a batch, choices padded with −inf."""
        import torch

        lengths = None
        if self.task.normalize:  # acc_norm: log-likelihood per character of the choice, as the gate decides
            lengths = self._padded([[float(len(c)) for c in it.instance.choices] for it in items]).clamp_min(1.0)
        gold = torch.tensor([it.instance.gold for it in items], device=self.device)
        return (self._padded([it.old_logliks for it in items]), self._padded([it.new_logliks for it in items]),
                gold, lengths)

    def loss(self, model, items: list[ChoiceItem]) -> tuple[torch.Tensor, dict[str, float]]:
        from pytest_modelcompat import packed_choice_loglikelihoods

        delimiter = self.task.delimiter
        requests = [(it.instance.context, [delimiter + c for c in it.instance.choices]) for it in items]
        per_request = packed_choice_loglikelihoods(model, self.tokenizer, requests, device=self.device,
                                                   config=self.model_config)
        return self.loss_from_logliks(items, self._padded([row.float() for row in per_request]))

    def loss_from_logliks(self, items: list[ChoiceItem], student) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss given the student's choice log-likelihoods (validation reuses the gate's scores)."""
        from muscle.losses.choice import choice_loss

        c = self.config
        old, new, gold, lengths = self._teacher_tensors(items)
        return choice_loss(student, old, new, gold, lengths=lengths, mask=c.mask, temperature=c.temperature,
                           old_target=c.old_target, new_target=c.new_target, ensemble_weight=c.ensemble_weight,
                           focal_weight=c.focal_weight,
                           ce_weight=c.ce_weight)

    def validation_loss(self, model, loader, predictions) -> float:
        """From the student's validation predictions (the gate's scores): no second forward."""
        items = [item for batch in loader for item in batch]
        return self.loss_from_logliks(items, self._padded([p.logliks for p in predictions]))[0].item()


# ----------------------------------------------------------------------------------------- sequence


class SequenceObjective:
    """Generation: cross-entropy on M1's output where M1 did better, else M2's (+ CE on the gold)."""

    def __init__(self, config, task: TaskSpec, tokenizer, pad_id: int, teachers: dict[str, dict[str, Prediction]],
                 device):
        self.config, self.task, self.tokenizer, self.pad_id, self.device = config, task, tokenizer, pad_id, device
        self.old, self.new = teachers["old"], teachers["new"]

    def _score(self, prediction: Prediction) -> float:
        if self.task.kind == "exact_match":
            return float(bool(prediction.correct))
        return float(prediction.score)

    def items(self, instances: list[Instance], start: int = 0, train: bool = False):
        from dataclasses import replace

        from muscle.losses.sequence import focal_weights, pick_targets, target_texts

        old_scores = [self._score(self.old[i.id]) for i in instances]
        new_scores = [self._score(self.new[i.id]) for i in instances]
        use_old = pick_targets(self.config.mask, old_scores, new_scores)
        texts = target_texts(use_old, [self.old[i.id].text for i in instances],
                             [self.new[i.id].text for i in instances], [str(i.gold) for i in instances])
        weights = focal_weights(old_scores, new_scores, self.config.focal_weight)
        # The teacher text follows the context directly, as the gate generated it (no delimiter).
        as_target = [replace(inst, gold=text) for inst, text in zip(instances, texts, strict=True)]
        target_task = replace(self.task, delimiter="")
        targets = build_examples(self.tokenizer, target_task, as_target, self.config.max_length, start_index=start)
        golds = build_examples(self.tokenizer, self.task, instances, self.config.max_length, start_index=start)
        return [(t, g, w, m) for t, g, w, m in zip(targets, golds, weights, use_old, strict=True)]

    def collate(self, items):
        import torch

        return {"target": collate([t for t, _, _, _ in items], self.pad_id),
                "gold": collate([g for _, g, _, _ in items], self.pad_id),
                "weight": torch.tensor([w for _, _, w, _ in items]),
                "use_old": torch.tensor([float(m) for _, _, _, m in items])}

    def validation_loss(self, model, loader, predictions) -> float:
        return mean_loss(self, model, loader)

    def loss(self, model, batch) -> tuple[torch.Tensor, dict[str, float]]:
        from muscle.losses.sequence import sequence_loss
        from muscle.losses.targets import select_targets, target_logits

        def ce(part, weights):
            part = {key: value.to(self.device) for key, value in part.items()}
            return sequence_loss(target_logits(model, part), *select_targets(part["labels"]), weights.to(self.device))

        comp = ce(batch["target"], batch["weight"])
        stats = {"kl": comp.item(), "mask_old": batch["use_old"].mean().item()}
        w = self.config.ce_weight
        if not w:
            return comp, stats | {"loss": comp.item()}
        gold = ce(batch["gold"], batch["weight"].new_ones(batch["weight"].shape))
        loss = (1 - w) * comp + w * gold
        return loss, stats | {"loss": loss.item(), "ce": gold.item()}
