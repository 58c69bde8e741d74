"""The MUSCLE loss against numbers worked by hand (tiny vocabularies, explicit formulas)."""

from __future__ import annotations

import math

import pytest
import torch

from muscle.losses.targets import scored_positions, select_targets, target_logits
from muscle.losses.token import TopKLogits, compatibility_mask, kl_to_student, muscle_loss

LN3 = math.log(3)


def t(*rows):
    return torch.tensor(rows, dtype=torch.float64)


def test_kl_at_temperature_matches_hand_computation():
    # teacher logits (2 ln 3, 0) at T = 2 → softmax of (ln 3, 0) = (3/4, 1/4); student uniform.
    kl = kl_to_student(t([2 * LN3, 0.0]), t([0.0, 0.0]), temperature=2.0)
    assert kl.item() == pytest.approx(0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5))


def test_paper_mask_picks_old_teacher_where_student_is_wrong():
    student = t([0.0, 1.0], [2.0, 0.0])        # argmax 1, 0
    targets = torch.tensor([0, 0])               # token 0: student wrong → m = 1; token 1: right → m = 0
    old = t([LN3, 0.0], [0.0, 0.0])
    new = t([0.0, 0.0], [0.0, LN3])
    loss, stats = muscle_loss(student, targets, torch.tensor([0, 0]), old, new, temperature=1.0)

    def kl(p, logits):
        z = sum(math.exp(v) for v in logits)
        return sum(pi * math.log(pi / (math.exp(v) / z)) for pi, v in zip(p, logits, strict=True))

    a_old_0 = kl([0.75, 0.25], [0.0, 1.0])      # M1 on token 0
    a_new_1 = kl([0.25, 0.75], [2.0, 0.0])      # M2 on token 1
    assert loss.item() == pytest.approx((a_old_0 + a_new_1) / 2)
    assert stats["mask_old"] == 0.5


def test_ce_weight_mixes_in_cross_entropy():
    student, targets = t([0.0, 0.0]), torch.tensor([1])
    teacher = t([LN3, 0.0])
    kl = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    loss, _ = muscle_loss(student, targets, torch.tensor([0]), teacher, teacher, temperature=1.0, ce_weight=0.25)
    assert loss.item() == pytest.approx(0.75 * kl + 0.25 * math.log(2))


def test_ll_token_mask():
    # p_S(y) = 1/2 on both; p_M1(y) = 3/4 on token 0 (> student → 1), 1/4 on token 1 (→ 0).
    student, targets = t([0.0, 0.0], [0.0, 0.0]), torch.tensor([0, 0])
    old = t([LN3, 0.0], [0.0, LN3])
    m = compatibility_mask("ll-token", student, old, targets, torch.tensor([0, 1]))
    assert m.tolist() == [1.0, 0.0]


def test_ll_seq_mask_is_one_decision_per_sequence():
    # seq 0: tokens 0, 1; Σ log p_S = 2 ln ½ ≈ −1.386; Σ log p_M1 = ln ¾ + ln ¼ ≈ −1.674 → student ahead → 0.
    # seq 1: token 2; log p_S = ln ½ < log p_M1 = ln ¾ → 1.
    student, targets = t([0.0, 0.0], [0.0, 0.0], [0.0, 0.0]), torch.tensor([0, 0, 0])
    old = t([LN3, 0.0], [0.0, LN3], [LN3, 0.0])
    m = compatibility_mask("ll-seq", student, old, targets, torch.tensor([0, 0, 1]))
    assert m.tolist() == [0.0, 0.0, 1.0]


def test_old_correct_and_none_masks():
    student, targets = t([0.0, 0.0], [0.0, 0.0]), torch.tensor([0, 0])
    old = t([1.0, 0.0], [0.0, 1.0])             # M1 right on token 0 only
    seq = torch.tensor([0, 1])
    assert compatibility_mask("old-correct", student, old, targets, seq).tolist() == [1.0, 0.0]
    assert compatibility_mask("none", student, old, targets, seq).tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match="unknown mask"):
        compatibility_mask("nope", student, old, targets, seq)


def test_targets_skip_prompt_and_padding_positions():
    labels = torch.tensor([[-100, -100, 3, 1], [-100, 2, -100, -100]])   # row 1 is right-padded
    assert scored_positions(labels).tolist() == [[False, True, True, False], [True, False, False, False]]
    targets, seq = select_targets(labels)
    assert targets.tolist() == [3, 1, 2] and seq.tolist() == [0, 0, 1]


def test_target_logits_are_the_full_logits_at_the_positions_that_predict_targets(tiny_base):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_base).eval()
    torch.manual_seed(0)
    ids = torch.randint(3, model.config.vocab_size, (2, 6))
    labels = torch.full_like(ids, -100)
    labels[0, 3:] = ids[0, 3:]          # row 0: three prompt tokens, three targets
    labels[1, 1:3] = ids[1, 1:3]        # row 1: two targets, then right padding
    attention = (torch.arange(6)[None] < torch.tensor([[6], [3]])).long()
    batch = {"input_ids": ids, "attention_mask": attention, "labels": labels}
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=attention).logits
        kept = target_logits(model, batch)
    expected = torch.stack([full[0, 2], full[0, 3], full[0, 4], full[1, 0], full[1, 1]])
    torch.testing.assert_close(kept, expected, rtol=1e-5, atol=1e-5)


def test_topk_equals_full_when_k_is_vocab_and_renormalises_when_smaller():
    student = t([0.0, 0.0, 0.0])
    teacher = t([LN3, 0.0, -50.0])
    targets = torch.tensor([2])
    full = TopKLogits.from_logits(teacher, targets, k=3)
    assert kl_to_student(full, student, 1.0).item() == pytest.approx(kl_to_student(teacher, student, 1.0).item())
    # k = 2: teacher renormalised over {0, 1} = (3/4, 1/4); student q = 1/3 each.
    top2 = TopKLogits.from_logits(teacher, targets, k=2)
    expected = 0.75 * math.log(0.75 * 3) + 0.25 * math.log(0.25 * 3)
    assert kl_to_student(top2, student, 1.0).item() == pytest.approx(expected)
    # masks stay exact: log p_M1(y = 2) uses the gold logit and the full log-normaliser.
    m = compatibility_mask("ll-token", t([0.0, 0.0, 10.0]), top2, targets, torch.tensor([0]))
    assert m.tolist() == [0.0]
    assert compatibility_mask("old-correct", student, top2, torch.tensor([0]), torch.tensor([0])).tolist() == [1.0]


def test_gradient_reaches_the_student():
    student = t([0.0, 1.0]).requires_grad_()
    teacher = t([LN3, 0.0])
    loss, _ = muscle_loss(student, torch.tensor([0]), torch.tensor([0]), teacher, teacher)
    loss.backward()
    assert student.grad is not None and student.grad.abs().sum() > 0


def test_mask_none_never_reads_the_new_teacher():
    torch.manual_seed(0)
    student, old, new = (torch.randn(5, 7, dtype=torch.float64) for _ in range(3))
    targets, seq = torch.tensor([1, 2, 3, 4, 5]), torch.tensor([0, 0, 1, 1, 1])
    with_new, _ = muscle_loss(student, targets, seq, old, new, mask="none")
    without, _ = muscle_loss(student, targets, seq, old, None, mask="none")
    assert without.item() == pytest.approx(with_new.item())
    assert without.item() == pytest.approx(kl_to_student(old, student, 2.0).mean().item())
