"""The choice and sequence objectives' losses, masks and target rules against hand computations,
epoch selection on hand-written histories, and the defaults validation decides."""

from __future__ import annotations

import math
import statistics

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from muscle.losses.choice import choice_loss, instance_mask
from muscle.losses.sequence import focal_weights, pick_targets, sequence_loss, target_texts
from muscle.losses.targets import select_targets
from muscle.losses.token import kl_to_student
from muscle.trainer import (
    DEFAULTS,
    NEW_BEATS_OLD_DEFAULTS,
    TrainConfig,
    beats_old,
    choose_epoch,
    defaults_after_validation,
    lead_standard_error,
)
from pytest_modelcompat import discriminative_metrics

LN3 = math.log(3)


def t(*rows):
    return torch.tensor(rows, dtype=torch.float64)


def kl(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True) if pi > 0)


def test_choice_loss_equals_hand_computation():
    # Two instances, two choices, gold = 0 for both, T = 1.
    # instance 0: M1 (ln 3, 0) → (3/4, 1/4), right; M2 (0, ln 3) → (1/4, 3/4); student uniform.
    # instance 1: M1 (0, ln 3) → wrong; M2 (ln 3, 0); student (ln 3, 0) → (3/4, 1/4).
    student = t([0.0, 0.0], [LN3, 0.0])
    old, new = t([LN3, 0.0], [0.0, LN3]), t([0.0, LN3], [LN3, 0.0])
    gold = torch.tensor([0, 0])
    loss, stats = choice_loss(student, old, new, gold, mask="old-correct", temperature=1.0)
    # old-correct: instance 0 → M1's (3/4, 1/4); instance 1 → M2's (3/4, 1/4).
    expected = (kl([0.75, 0.25], [0.5, 0.5]) + kl([0.75, 0.25], [0.75, 0.25])) / 2
    assert loss.item() == pytest.approx(expected)
    assert stats["mask_old"] == 0.5


def test_choice_loss_ensemble_focal_and_ce():
    student = t([0.0, 0.0], [LN3, 0.0])
    old, new = t([LN3, 0.0], [0.0, LN3]), t([0.0, LN3], [LN3, 0.0])
    gold = torch.tensor([0, 0])
    # paper mask: instance 0 student (tie → argmax 0) right → new target; instance 1 right → new target.
    # ensemble w = 0.5: instance 0: ½(3/4,1/4) + ½(1/4,3/4) = (1/2, 1/2); instance 1: ½(1/4,3/4)+½(3/4,1/4) = (½, ½).
    # focal f = 1: instance 0 (M1 right) weighs 2, instance 1 weighs 1, in the KL and the CE alike.
    loss, _ = choice_loss(student, old, new, gold, mask="paper", temperature=1.0, new_target="ensemble",
                          ensemble_weight=0.5, focal_weight=1.0, ce_weight=0.25)
    kls = [kl([0.5, 0.5], [0.5, 0.5]), kl([0.5, 0.5], [0.75, 0.25])]
    comp = (2 * kls[0] + kls[1]) / 3
    ce = (-2 * math.log(0.5) - math.log(0.75)) / 3
    assert loss.item() == pytest.approx(0.75 * comp + 0.25 * ce)


def test_choice_temperature_and_length_normalisation():
    # acc_norm: ℓ / length; lengths (2, 1): student (2, 1) → (1, 1) uniform; M1 (4 ln 3, 0) → (2 ln 3, 0), at T = 2
    # → (ln 3, 0) → (3/4, 1/4).
    student, old = t([2.0, 1.0]), t([4 * LN3, 0.0])
    loss, _ = choice_loss(student, old, old, torch.tensor([0]), lengths=t([2.0, 1.0]), mask="none", temperature=2.0)
    assert loss.item() == pytest.approx(kl([0.75, 0.25], [0.5, 0.5]))


def test_choice_masks_at_instance_level():
    log = torch.log
    student = log(t([0.4, 0.6], [0.7, 0.3]))       # argmax 1 (wrong), 0 (right); gold 0 for both
    old = log(t([0.6, 0.4], [0.2, 0.8]))           # M1: right, wrong; p(gold) 0.6 > 0.4, 0.2 < 0.7
    gold = torch.tensor([0, 0])
    assert instance_mask("paper", student, old, gold).tolist() == [1.0, 0.0]
    assert instance_mask("ll-token", student, old, gold).tolist() == [1.0, 0.0]
    assert instance_mask("ll-seq", student, old, gold).tolist() == [1.0, 0.0]
    assert instance_mask("old-correct", student, old, gold).tolist() == [1.0, 0.0]
    assert instance_mask("none", student, old, gold).tolist() == [1.0, 1.0]
    old_wrong_first = log(t([0.2, 0.8], [0.6, 0.4]))
    assert instance_mask("old-correct", student, old_wrong_first, gold).tolist() == [0.0, 1.0]


def test_padded_choices_and_zero_probability_teachers_give_no_nan():
    inf = float("inf")
    student = t([0.0, 0.0, -inf], [0.0, 1.0, 2.0]).requires_grad_()
    old = t([-inf, 0.0, -inf], [0.0, -inf, 0.0])      # a teacher certain of one choice; a padded third choice
    loss, _ = choice_loss(student, old, old, torch.tensor([1, 0]), mask="none", temperature=1.0)
    loss.backward()
    assert math.isfinite(loss.item()) and torch.isfinite(student.grad).all()
    z = 1 + math.e + math.e ** 2
    expected = (math.log(2) + kl([0.5, 0.5], [1 / z, math.e ** 2 / z])) / 2
    assert loss.item() == pytest.approx(expected)
    # token objective: a −inf teacher logit is a zero probability, not NaN
    assert math.isfinite(kl_to_student(t([0.0, -inf]), t([0.0, 0.0]), 1.0).item())


def test_sequence_targets_follow_the_rule_and_its_tie_break():
    old, new = [1.0, 0.0, 0.5, 0.5], [0.0, 1.0, 0.5, 0.2]
    assert pick_targets("paper", old, new) == [True, False, False, True]        # ties keep M2's output
    assert pick_targets("old-correct", old, new) == [True, False, True, True]   # ties go to M1
    assert pick_targets("none", old, new) == [True] * 4
    with pytest.raises(ValueError, match="not defined for the sequence objective"):
        pick_targets("ll-seq", old, new)
    texts = target_texts([True, False, True], [" a", " b", "  "], [" x", " ", " z"], ["g1", "g2", "g3"])
    assert texts == [" a", " b", " z"]     # chosen; empty → the other teacher's; (both empty → gold)
    assert target_texts([True], [""], [""], ["gold"]) == ["gold"]
    assert focal_weights([1.0, 0.0, 0.4], [0.0, 1.0, 0.4], 2.0) == [3.0, 1.0, 3.0]


def test_sequence_loss_weights_rows():
    # Two rows, one target token each (position 0 predicts label at 1): row 0's logits uniform over 2
    # tokens → CE ln 2; row 1's (ln 3, 0) with label 0 → CE = ln(4/3). Weights 1 and 3.
    labels = torch.tensor([[-100, 1], [-100, 0]])
    targets, sequence = select_targets(labels)
    assert targets.tolist() == [1, 0] and sequence.tolist() == [0, 1]
    loss = sequence_loss(t([0.0, 0.0], [LN3, 0.0]), targets, sequence, t(1.0, 3.0))
    assert loss.item() == pytest.approx((math.log(2) + 3 * math.log(4 / 3)) / 4)


def test_sequence_objective_runs_the_lm_head_on_target_positions_only(tiny_base, tiny_tokenizer):
    # The head's input is [N, hidden] with N the target tokens, not every position of the batch,
    # and the loss is the same as cross-entropy over the full head's shifted logits.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from muscle.objectives import SequenceObjective
    from muscle.trainer import TrainConfig
    from pytest_modelcompat.scoring.predictions import Prediction
    from pytest_modelcompat.tasks.spec import Instance, TaskSpec

    model, tokenizer = AutoModelForCausalLM.from_pretrained(tiny_base), AutoTokenizer.from_pretrained(tiny_tokenizer)
    task = TaskSpec(name="t", kind="generative", source=None, data=None, train=None, text=None, choices=None,
                    label=None, target=None, delimiter=" ")
    insts = [Instance(id=str(i), context=c, choices=None, gold="the mat", doc={}) for i, c in enumerate(["The cat sat on", "A"])]
    teachers = {side: {i.id: Prediction(pred=" the mat", correct=None, score=0.5, text=" the mat") for i in insts}
                for side in ("old", "new")}
    config = TrainConfig(mode="train", suite="s", task="t", output="o", objective="sequence", mask="paper",
                         ce_weight=0.0, focal_weight=0.0)   # as preflight resolves them
    objective = SequenceObjective(config, task, tokenizer, 0, teachers, "cpu")
    batch = objective.collate(objective.items(insts))
    head_rows = []
    model.lm_head.register_forward_hook(lambda module, args, out: head_rows.append(args[0].shape[:-1].numel()))
    with torch.no_grad():
        loss, _ = objective.loss(model, batch)
        part = batch["target"]
        targets = (part["labels"] != -100).sum().item()
        assert head_rows == [targets] and targets < part["input_ids"].numel()
        full = model(input_ids=part["input_ids"], attention_mask=part["attention_mask"]).logits
    expected = torch.nn.functional.cross_entropy(full[:, :-1].flatten(0, 1).float(), part["labels"][:, 1:].flatten())
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def _history(*rows):
    """Epochs of (epoch, acc, negative flips among the first rows of 100, loss): each flips a prefix."""
    return [{"epoch": e, "val": {"acc": acc, "nfr": flips / 100, "n": 100, "flipped": list(range(flips)), "loss": loss}}
            for e, acc, flips, loss in rows]


def test_selection_keeps_epoch_zero_unless_a_trained_epoch_is_better_within_tolerance():
    # epoch 1 cuts NFR but loses 2 pt of accuracy (tolerance 0.5 pt): not eligible; epoch 2 is.
    history = _history((0, 0.70, 20, 1.0), (1, 0.68, 2, 0.9), (2, 0.697, 8, 0.8))
    assert choose_epoch(history, "nfr", "multiple_choice", acc_tolerance=0.005) == 2
    assert choose_epoch(history, "nfr", "multiple_choice", acc_tolerance=0.05) == 1
    worse = _history((0, 0.70, 2, 1.0), (1, 0.71, 3, 0.9))
    assert choose_epoch(worse, "nfr", "multiple_choice") == 0          # never worse than A2 on validation
    assert choose_epoch(worse, "loss", "multiple_choice") == 1         # finetune: trained epochs by loss
    generative = [{"epoch": e, "val": {"score": s, "nfr_smooth": len(f) / 10, "n": 10, "flipped": f}}
                  for e, s, f in ((0, 0.30, [0, 1, 2, 3, 4, 5]), (1, 0.31, [0]))]
    assert choose_epoch(generative, "nfr", "generative") == 1


def test_choice_ensemble_target_everywhere():
    # mask none + old_target ensemble, w = 0.7, T = 1 (the ensemble on every instance): target = 0.7·(3/4, 1/4) + 0.3·(1/4, 3/4) = (0.6, 0.4)
    student, old, new = t([0.0, 0.0]), t([LN3, 0.0]), t([0.0, LN3])
    loss, stats = choice_loss(student, old, new, torch.tensor([1]), mask="none", old_target="ensemble",
                              ensemble_weight=0.7, temperature=1.0)
    assert loss.item() == pytest.approx(kl([0.6, 0.4], [0.5, 0.5]))
    assert stats["mask_old"] == 1.0


def _left_open(**given):
    """A `muscle train` config as preflight leaves it for the choice objective with no loss option given."""
    return TrainConfig(mode="train", suite="s.yaml", task="t", output="out", objective="choice", mask="old-correct",
                       old_target="m1", **given)


def _val(acc_old, nfr, pfr):
    """A2 against A1 on validation: their accuracies and flip rates (A2's accuracy = A1's − NFR + PFR)."""
    return {"acc": acc_old - nfr + pfr, "acc_old": acc_old, "nfr": nfr, "pfr": pfr}


def test_defaults_after_validation_follow_a2_against_a1():
    # A2 20 pt above A1 on 200 validation rows: start at A2, focal cross-entropy on the gold labels.
    config, beats = defaults_after_validation(_left_open(), _val(0.60, 0.05, 0.25), 200)
    assert beats
    assert {k: getattr(config, k) for k in NEW_BEATS_OLD_DEFAULTS} == NEW_BEATS_OLD_DEFAULTS
    # One instance of 200 above A1 is within the 0.5 pt tolerance: distillation, untrained start grid.
    config, beats = defaults_after_validation(_left_open(), _val(0.630, 0.0, 0.005), 200)
    assert not beats
    assert {k: getattr(config, k) for k in DEFAULTS} == DEFAULTS
    assert config.epochs == 0 and config.interpolate is None
    # A1 better: the same.
    assert not defaults_after_validation(_left_open(), _val(0.80, 0.25, 0.05), 200)[1]


def test_a_lead_inside_validation_noise_is_not_beating():
    # retrained's seed-1 sample: 1,000 rows, NFR 0.026, PFR 0.032 → lead 0.6 pt; the per-row difference's
    # variance 0.058 − 0.006² = 0.057964, standard error √(0.057964 / 1000) = 0.761 pt: two of them
    # are 1.52 pt, so the lead is noise.
    level = _val(0.676, 0.026, 0.032)
    assert lead_standard_error(level, 1000) == pytest.approx(math.sqrt(0.057964 / 1000))
    assert not defaults_after_validation(_left_open(), level, 1000)[1]
    # The same flip rates on 10,000 rows: standard error 0.241 pt, two of them 0.48 pt < 0.6 pt, and
    # 0.6 pt is above the 0.5 pt tolerance.
    assert defaults_after_validation(_left_open(), level, 10_000)[1]
    # sst2-better's validation (A2 18 pt above A1 on 1,000 rows) beats by far.
    assert beats_old(_val(0.70, 0.05, 0.23), 1000, 0.005)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=60))
def test_lead_standard_error_is_the_per_row_differences(rows):
    # The closed form against the definition: the population standard deviation of the per-row
    # differences (new correct − old correct), over √n — computed from the gate's own flip rates.
    old, new = [o for o, _ in rows], [n for _, n in rows]
    m = discriminative_metrics(old, new, [0] * len(rows), [0] * len(rows))
    val = {"acc": m["acc_new"], "acc_old": m["acc_old"], "nfr": m["nfr"], "pfr": m["pfr"]}
    diffs = [int(n) - int(o) for o, n in rows]
    assert lead_standard_error(val, len(rows)) == pytest.approx(statistics.pstdev(diffs) / math.sqrt(len(rows)),
                                                                abs=1e-12)


def test_defaults_after_validation_keep_what_the_user_gave():
    better = _val(0.60, 0.05, 0.25)
    config, beats = defaults_after_validation(_left_open(epochs=4, interpolate=0.5), better, 200)
    assert beats and (config.epochs, config.interpolate, config.ce_weight) == (4, 0.5, 1.0)
    # --epochs 0 asks for an untrained start: nothing learns from the labels.
    config, beats = defaults_after_validation(_left_open(epochs=0), better, 200)
    assert not beats and config.ce_weight == 0.0 and config.interpolate is None
    # A loss option given: preflight resolved the loss, validation does not change it.
    config, beats = defaults_after_validation(_left_open(ce_weight=0.5, focal_weight=0.0, train_on="disagreement"),
                                              better, 200)
    assert not beats and (config.ce_weight, config.train_on, config.epochs) == (0.5, "disagreement", 0)
